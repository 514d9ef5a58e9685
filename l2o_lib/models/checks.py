"""Argument checks and shape arithmetic shared by the architectures of :mod:`l2o_lib.models`."""

from __future__ import annotations

from typing import Any, Sequence

from ..config import check_int

__all__ = ["check_input_shape", "check_num_classes", "check_int_tuple", "conv_out"]


def check_input_shape(input_shape: Any, ranks: Sequence[int], model: str) -> tuple[int, ...]:
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


def check_num_classes(num_classes: Any) -> int:
    """``num_classes`` as an int >= 2, else ``ValueError``."""
    return check_int("num_classes", num_classes, minimum=2)


def check_int_tuple(name: str, values: Any, *, allow_empty: bool = False) -> tuple[int, ...]:
    """``values`` as a tuple of ints >= 1 (non-empty unless ``allow_empty``), else ``ValueError`` naming ``name``."""
    if not isinstance(values, (tuple, list)) or (not values and not allow_empty):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}tuple of ints >= 1, got {values!r}")
    for i, v in enumerate(values):
        check_int(f"{name}[{i}]", v)
    return tuple(values)


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """The output length of a convolution over ``size`` inputs."""
    return (size + 2 * padding - kernel) // stride + 1
