"""The architectures by name (:data:`MODELS`), the validated :func:`build_model` and :func:`count_parameters`."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..config import check_choice, check_seed
from .checks import check_input_shape, check_num_classes
from .resnet import resnet18, resnet20, resnet32, resnet34
from .small import MLP, ConvNet, LeNet5
from .vgg import vgg16
from .vit import vit_tiny

__all__ = ["MODELS", "build_model", "count_parameters"]


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
    check_num_classes(num_classes)
    check_input_shape(input_shape, (1, 2, 3), name)
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
