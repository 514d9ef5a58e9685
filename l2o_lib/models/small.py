"""Small models for the CPU profiles: :class:`MLP`, :class:`ConvNet` (MNIST-1D's "ConvBase") and :class:`LeNet5`."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .checks import check_input_shape, check_int_tuple, check_num_classes, conv_out

__all__ = ["MLP", "ConvNet", "LeNet5"]


class MLP(nn.Module):
    """Multi-layer perceptron: flatten the input, ReLU hidden layers, linear head.

    Args:
        input_shape: shape of one example, any rank (it is flattened).
        num_classes: number of output logits (>= 2).
        hidden: widths of the hidden layers; ``()`` gives multinomial logistic regression.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100, 100)) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (1, 2, 3), "MLP")
        self.num_classes = check_num_classes(num_classes)
        hidden = check_int_tuple("hidden", hidden, allow_empty=True)
        widths = (math.prod(self.input_shape), *hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, *input_shape)``."""
        return self.net(x.reshape(x.shape[0], -1))


class ConvNet(nn.Module):
    """Small strided CNN: the MNIST-1D "ConvBase" (Greydanus, 2020), generalised to images.

    Each layer is a convolution with stride 2 and padding 1 followed by ReLU; the last feature
    map is flattened into a linear head. With the defaults on MNIST-1D (``input_shape=(40,)``)
    this is exactly ConvBase: 5,210 parameters, ~90% test accuracy.

    Args:
        input_shape: ``(L,)`` or ``(C, L)`` for signals (``Conv1d``), ``(C, H, W)`` for images
            (``Conv2d``).
        num_classes: number of output logits (>= 2).
        channels: output channels of each convolution.
        kernel_sizes: kernel size of each convolution (same length as ``channels``).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (25, 25, 25),
        kernel_sizes: Sequence[int] = (5, 3, 3),
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (1, 2, 3), "ConvNet")
        self.num_classes = check_num_classes(num_classes)
        channels = check_int_tuple("channels", channels)
        kernel_sizes = check_int_tuple("kernel_sizes", kernel_sizes)
        if len(channels) != len(kernel_sizes):
            raise ValueError(f"channels and kernel_sizes must have the same length, got {channels} and {kernel_sizes}")
        # A bare signal (L,) is one channel; reshaping in forward keeps the branch out of it.
        self._conv_shape = (1, *self.input_shape) if len(self.input_shape) == 1 else self.input_shape
        conv = nn.Conv1d if len(self._conv_shape) == 2 else nn.Conv2d
        spatial = list(self._conv_shape[1:])
        layers: list[nn.Module] = []
        c_in = self._conv_shape[0]
        for c_out, k in zip(channels, kernel_sizes):
            layers += [conv(c_in, c_out, k, stride=2, padding=1), nn.ReLU()]
            spatial = [conv_out(s, k, 2, 1) for s in spatial]
            if min(spatial) < 1:
                raise ValueError(f"input_shape {self.input_shape} is too small for {len(channels)} stride-2 convolutions")
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * math.prod(spatial), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, *input_shape)``."""
        h = self.features(x.reshape(x.shape[0], *self._conv_shape))
        return self.head(h.flatten(1))


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling.

    conv 6@5x5 → pool → conv 16@5x5 → pool → fc 120 → fc 84 → fc ``num_classes``. Inputs
    smaller than 32x32 (MNIST's 28x28) get ``padding=2`` on the first convolution, as is
    customary, so that 28x28 and 32x32 grey images both give 61,706 parameters for 10 classes.
    Other sizes and channel counts work; the first fully connected layer is sized to fit.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of output logits (>= 2).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (3,), "LeNet5")
        self.num_classes = check_num_classes(num_classes)
        c, h, w = self.input_shape
        padding = 2 if min(h, w) < 32 else 0
        spatial = [conv_out(conv_out(s, 5, 1, padding) // 2, 5, 1, 0) // 2 for s in (h, w)]
        if min(spatial) < 1:
            raise ValueError(f"LeNet5 needs H, W >= 12, got input_shape {self.input_shape}")
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * spatial[0] * spatial[1], 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, C, H, W)``."""
        return self.classifier(self.features(x).flatten(1))
