"""Network architectures trained (and meta-trained on) throughout l2o-lab.

Small models for the CPU profiles and the standard CIFAR models of the papers:

* :class:`MLP` — flatten + ReLU hidden layers (MNIST-1D, sklearn digits, anything).
* :class:`ConvNet` — the MNIST-1D "ConvBase": three strided convolutions and a linear head;
  ``Conv1d`` for signals ``(L,)`` / ``(C, L)``, ``Conv2d`` for images ``(C, H, W)``.
* :class:`LeNet5` — LeNet-5 with ReLU and max pooling (61,706 parameters on MNIST / 32x32 grey).
* :class:`CifarResNet` via :func:`resnet20` / :func:`resnet32` — He et al. (2016) CIFAR ResNets
  with option-A (parameter-free) shortcuts, as in the widely used "akamaster" code.
* :class:`ResNet` via :func:`resnet18` / :func:`resnet34` — the "kuangliu/pytorch-cifar"
  ImageNet-style ResNets adapted to 32x32 inputs (3x3 stem, no max pool).
* :class:`VGG` via :func:`vgg16` — VGG-16 with BatchNorm, kuangliu style.
* :class:`ViTTiny` via :func:`vit_tiny` — a tiny Vision Transformer whose attention is written
  by hand, with separate ``q`` / ``k`` / ``v`` linear layers (LoRA subspaces target them).

Every model takes ``input_shape`` (without the batch dimension) and ``num_classes`` and returns
logits of shape ``(batch, num_classes)``. Forward passes avoid in-place ops on parameters and
data-dependent Python branches, so each model works with :func:`torch.func.functional_call`
and :func:`torch.func.vmap` over a stacked set of parameters (in eval mode, where BatchNorm uses
its running statistics).

:func:`build_model` is the validated entry point used by notebooks and the CLI: it looks the
architecture up in :data:`MODELS`, checks the input shape, and seeds the initialisation without
touching the global RNG. :func:`count_parameters` counts parameters.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_choice, check_int, check_positive, check_seed

__all__ = [
    "MLP",
    "ConvNet",
    "LeNet5",
    "CifarResNet",
    "ResNet",
    "VGG",
    "VGG16_CFG",
    "ViTTiny",
    "resnet20",
    "resnet32",
    "resnet18",
    "resnet34",
    "vgg16",
    "vit_tiny",
    "MODELS",
    "build_model",
    "count_parameters",
]


# --------------------------------------------------------------------------- validation


def _check_input_shape(input_shape: Any, ranks: Sequence[int], model: str) -> tuple[int, ...]:
    """Return ``input_shape`` as a tuple of positive ints of an allowed rank, else raise."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) == 0:
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}")
    for i, d in enumerate(input_shape):
        check_int(f"input_shape[{i}]", d)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) not in ranks:
        layouts = {1: "(L,)", 2: "(C, L)", 3: "(C, H, W)"}
        allowed = " or ".join(layouts.get(r, f"rank {r}") for r in ranks)
        raise ValueError(f"{model} expects input_shape {allowed} (no batch dim), got {shape}")
    return shape


def _check_num_classes(num_classes: Any) -> int:
    return check_int("num_classes", num_classes, minimum=2)


def _check_int_tuple(name: str, values: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}tuple of ints >= 1, got {values!r}")
    for i, v in enumerate(values):
        check_int(f"{name}[{i}]", v)
    return tuple(values)


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# --------------------------------------------------------------------------- small models


class MLP(nn.Module):
    """Multi-layer perceptron: flatten the input, ReLU hidden layers, linear head.

    Args:
        input_shape: shape of one example, any rank (it is flattened).
        num_classes: number of output logits (>= 2).
        hidden: widths of the hidden layers; ``()`` gives multinomial logistic regression.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (100, 100)) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape, (1, 2, 3), "MLP")
        self.num_classes = _check_num_classes(num_classes)
        hidden = _check_int_tuple("hidden", hidden, allow_empty=True)
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
        self.input_shape = _check_input_shape(input_shape, (1, 2, 3), "ConvNet")
        self.num_classes = _check_num_classes(num_classes)
        channels = _check_int_tuple("channels", channels)
        kernel_sizes = _check_int_tuple("kernel_sizes", kernel_sizes)
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
            spatial = [_conv_out(s, k, 2, 1) for s in spatial]
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
        self.input_shape = _check_input_shape(input_shape, (3,), "LeNet5")
        self.num_classes = _check_num_classes(num_classes)
        c, h, w = self.input_shape
        padding = 2 if min(h, w) < 32 else 0
        spatial = [_conv_out(_conv_out(s, 5, 1, padding) // 2, 5, 1, 0) // 2 for s in (h, w)]
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


# --------------------------------------------------------------------------- CIFAR ResNets (option A)


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
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(in_planes, planes) if stride != 1 or in_planes != planes else nn.Identity()

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


class _BasicBlockB(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


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
        self.input_shape = _check_input_shape(input_shape, (3,), type(self).__name__)
        self.num_classes = _check_num_classes(num_classes)
        num_blocks = _check_int_tuple("num_blocks", num_blocks)
        widths = _check_int_tuple("widths", widths)
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


# --------------------------------------------------------------------------- CIFAR ResNets (kuangliu)


def resnet18(input_shape: Sequence[int], num_classes: int) -> ResNet:
    """ResNet-18 for CIFAR (11,173,962 parameters for 3x32x32 inputs and 10 classes)."""
    return ResNet(input_shape, num_classes, num_blocks=(2, 2, 2, 2))


def resnet34(input_shape: Sequence[int], num_classes: int) -> ResNet:
    """ResNet-34 for CIFAR (21,282,122 parameters for 3x32x32 inputs and 10 classes)."""
    return ResNet(input_shape, num_classes, num_blocks=(3, 4, 6, 3))


# --------------------------------------------------------------------------- VGG

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
        self.input_shape = _check_input_shape(input_shape, (3,), "VGG")
        self.num_classes = _check_num_classes(num_classes)
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


# --------------------------------------------------------------------------- ViT


class _Attention(nn.Module):
    """Multi-head self-attention by hand: ``nn.MultiheadAttention`` fuses q/k/v into one
    parameter and takes fast paths that ``torch.func.vmap`` and LoRA on q/v cannot use."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTTiny(nn.Module):
    """A tiny Vision Transformer (Dosovitskiy et al., 2021) for small images.

    Patch embedding (``Conv2d`` with ``stride=patch``), a learned class token and position
    embedding, ``depth`` pre-norm blocks of multi-head self-attention and a GELU MLP, a final
    LayerNorm and a linear head on the class token. The attention projections of block ``i``
    are the separate linear layers ``blocks.i.attn.q``, ``.k``, ``.v`` and ``.proj``. No
    dropout, so forward passes are deterministic. Linear layers and embeddings are initialised
    with a truncated normal (std 0.02), biases with zeros.

    Args:
        input_shape: ``(C, H, W)`` with H and W divisible by ``patch``.
        num_classes: number of output logits (>= 2).
        patch: patch side length.
        dim: embedding width (divisible by ``heads``).
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2,
    ) -> None:
        super().__init__()
        self.input_shape = _check_input_shape(input_shape, (3,), "ViTTiny")
        self.num_classes = _check_num_classes(num_classes)
        check_int("patch", patch)
        check_int("dim", dim)
        check_int("depth", depth)
        check_int("heads", heads)
        check_positive("mlp_ratio", mlp_ratio)
        c, h, w = self.input_shape
        if h % patch or w % patch:
            raise ValueError(f"patch={patch} must divide the image size, got input_shape {self.input_shape}")
        if dim % heads:
            raise ValueError(f"heads={heads} must divide dim={dim}")
        hidden = max(1, int(round(dim * mlp_ratio)))
        num_patches = (h // patch) * (w // patch)
        self.patch_embed = nn.Conv2d(c, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_classes)`` for a batch ``(batch, C, H, W)``."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


#: :class:`ViTTiny` (142,026 parameters for 3x32x32 inputs, 10 classes and the defaults).
vit_tiny = ViTTiny


# --------------------------------------------------------------------------- registry

#: Architecture name → constructor ``(input_shape, num_classes, **options) -> nn.Module``.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "lenet5": LeNet5,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "vgg16": vgg16,
    "vit_tiny": vit_tiny,
}


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    seed: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the architecture ``name`` from :data:`MODELS`, validated and optionally seeded.

    Args:
        name: one of :data:`MODELS`.
        input_shape: shape of one example without the batch dim, e.g. ``(40,)`` for MNIST-1D,
            ``(1, 8, 8)`` for sklearn digits, ``(3, 32, 32)`` for CIFAR. Convolutional models
            other than ``convnet`` need ``(C, H, W)``.
        num_classes: number of output logits (>= 2).
        seed: seed of the initialisation; the global RNG state is left as it was. ``None``
            draws from (and advances) the global RNG.
        **kwargs: options of the constructor (e.g. ``hidden`` for ``mlp``, ``depth`` for
            ``vit_tiny``).

    Raises:
        ValueError: unknown name or option, bad ``num_classes``, ``input_shape`` or ``seed``.
    """
    check_choice("model", name, MODELS)
    _check_num_classes(num_classes)
    _check_input_shape(input_shape, (1, 2, 3), name)
    if seed is not None:
        check_seed("seed", seed)
    ctor = MODELS[name]
    options = list(inspect.signature(ctor).parameters)[2:]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for model {name!r}; allowed: {options}")
    if seed is None:
        return ctor(tuple(input_shape), num_classes, **kwargs)
    # fork_rng restores the CPU generator afterwards, so seeding here does not perturb the
    # data order or anything else drawn from the global RNG by the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ctor(tuple(input_shape), num_classes, **kwargs)


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (shared tensors counted once; buffers excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
