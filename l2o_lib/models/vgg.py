"""VGG-16 with BatchNorm for CIFAR, kuangliu style (:class:`VGG`, :func:`vgg16`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_int
from .checks import check_input_shape, check_num_classes

__all__ = ["VGG", "VGG16_CFG", "vgg16"]


#: VGG-16 layer configuration: conv widths, ``"M"`` for 2x2 max pooling.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)


class VGG(nn.Module):
    """VGG with BatchNorm for CIFAR (kuangliu/pytorch-cifar).

    Each width in ``cfg`` is a 3x3 conv (with bias, as in the reference) + BN + ReLU; ``"M"``
    is 2x2 max pooling. A global average pool (the identity on 32x32 inputs, where the feature
    map is already 1x1) feeds ``Linear(last_width, num_classes)``.

    Args:
        input_shape: ``(C, H, W)``; H and W must survive every pooling (>= 32 for VGG-16).
        num_classes: number of output logits (>= 2).
        cfg: layer configuration, e.g. :data:`VGG16_CFG`.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, cfg: Sequence[int | str] = VGG16_CFG) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (3,), "VGG")
        self.num_classes = check_num_classes(num_classes)
        n_pool = sum(1 for v in cfg if v == "M")
        if min(self.input_shape[1:]) < 2**n_pool:
            raise ValueError(f"VGG with {n_pool} poolings needs H, W >= {2**n_pool}, got input_shape {self.input_shape}")
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for i, v in enumerate(cfg):
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                check_int(f"cfg[{i}]", v)
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, C, H, W)``."""
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def vgg16(input_shape: Sequence[int], num_classes: int) -> VGG:
    """VGG-16 with BatchNorm for CIFAR (14,728,266 parameters for 3x32x32 inputs and 10 classes)."""
    return VGG(input_shape, num_classes, VGG16_CFG)
