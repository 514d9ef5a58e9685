"""CIFAR ResNets: He et al.'s option-A :class:`CifarResNet` (:func:`resnet20`, :func:`resnet32`) and
kuangliu's ImageNet-style :class:`ResNet` adapted to 32x32 inputs (:func:`resnet18`, :func:`resnet34`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_input_shape, check_int_tuple, check_num_classes

__all__ = ["CifarResNet", "ResNet", "resnet20", "resnet32", "resnet18", "resnet34"]


class _ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters).

    A module rather than a lambda so that models pickle and deep-copy.
    """

    def __init__(self, in_planes: int, planes: int) -> None:
        super().__init__()
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsampled, channel-padded ``x``."""
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, *self.pad))


class _BasicBlockA(nn.Module):
    """Two 3x3 conv + BN layers with a residual connection; option-A shortcut (parameter-free)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        # Built last, so a shortcut with parameters draws its initialisation after the convolutions.
        self.shortcut = self._shortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes \
            else nn.Identity()

    def _shortcut(self, in_planes: int, planes: int, stride: int) -> nn.Module:
        return _ShortcutA(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(block: type[nn.Module], in_planes: int, num_blocks: Sequence[int], widths: Sequence[int]) -> nn.Sequential:
    """ResNet stages: ``num_blocks[i]`` blocks of width ``widths[i]``; every stage after the first
    halves the resolution in its first block."""
    stages = []
    for i, (n, planes) in enumerate(zip(num_blocks, widths)):
        blocks = []
        for j in range(n):
            blocks.append(block(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
            in_planes = planes
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages)


class _BasicBlockB(_BasicBlockA):
    """The block with option-B shortcut: a 1x1 conv + BN where the shape changes (kuangliu)."""

    def _shortcut(self, in_planes: int, planes: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


class ResNet(nn.Module):
    """ImageNet-style ResNet adapted to CIFAR (kuangliu/pytorch-cifar).

    A 3x3 stride-1 stem with 64 channels and no max pool, four stages of basic blocks (the
    last three start with stride 2) with 1x1 conv + BN projection shortcuts, global average
    pooling and ``Linear(512, num_classes)``. Default PyTorch initialisation, as in the reference.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of output logits (>= 2).
        num_blocks: basic blocks per stage (``(2, 2, 2, 2)`` is ResNet-18).
        widths: channels per stage.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        *,
        block: type[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape, (3,), type(self).__name__)
        self.num_classes = check_num_classes(num_classes)
        num_blocks = check_int_tuple("num_blocks", num_blocks)
        widths = check_int_tuple("widths", widths)
        if len(num_blocks) != len(widths):
            raise ValueError(f"num_blocks and widths must have the same length, got {num_blocks} and {widths}")
        self.conv1 = nn.Conv2d(self.input_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layers = _stages(block or _BasicBlockB, widths[0], num_blocks, widths)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, C, H, W)``."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class CifarResNet(ResNet):
    """CIFAR ResNet of He et al. (2016), section 4.2, with option-A shortcuts.

    A 3x3 conv stem, three stages of basic blocks at 16/32/64 channels (the last two start with
    stride 2), global average pooling and a linear head. Depth is ``6 * n + 2`` for
    ``num_blocks=(n, n, n)``. Convolutions and the head use Kaiming-normal initialisation as in
    the akamaster reference.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: number of output logits (>= 2).
        num_blocks: basic blocks per stage.
        widths: channels per stage.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        num_blocks: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__(input_shape, num_classes, num_blocks, widths, block=_BasicBlockA)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)


def resnet20(input_shape: Sequence[int], num_classes: int) -> CifarResNet:
    """ResNet-20 for CIFAR (269,722 parameters for 3x32x32 inputs and 10 classes)."""
    return CifarResNet(input_shape, num_classes, num_blocks=(3, 3, 3))


def resnet32(input_shape: Sequence[int], num_classes: int) -> CifarResNet:
    """ResNet-32 for CIFAR (464,154 parameters for 3x32x32 inputs and 10 classes)."""
    return CifarResNet(input_shape, num_classes, num_blocks=(5, 5, 5))




def resnet18(input_shape: Sequence[int], num_classes: int) -> ResNet:
    """ResNet-18 for CIFAR (11,173,962 parameters for 3x32x32 inputs and 10 classes)."""
    return ResNet(input_shape, num_classes, num_blocks=(2, 2, 2, 2))


def resnet34(input_shape: Sequence[int], num_classes: int) -> ResNet:
    """ResNet-34 for CIFAR (21,282,122 parameters for 3x32x32 inputs and 10 classes)."""
    return ResNet(input_shape, num_classes, num_blocks=(3, 4, 6, 3))
