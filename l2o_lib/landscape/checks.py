"""Argument checks shared by :mod:`l2o_lib.landscape`'s planes and grids."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from ..config import check_int
from ..functional import FlatModel

__all__ = ["check_model", "check_vector", "check_span", "check_resolution", "split_xy", "check_xy"]


def check_model(model: Any) -> FlatModel:
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    return model


def check_vector(name: str, v: Any, dim: int | None = None) -> Tensor:
    """A floating 1-D tensor (of size ``dim`` when given), else ``ValueError`` naming it."""
    if not isinstance(v, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 1 or (dim is not None and v.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "a 1-D tensor"
        raise ValueError(f"{name} has shape {tuple(v.shape)}; expected {want}")
    if not v.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {v.dtype}")
    return v


def check_span(span: Any) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(s) for s in span)
    except (TypeError, ValueError):
        raise ValueError(f"span must be four numbers (alpha_min, alpha_max, beta_min, beta_max), got {span!r}")
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"span must be four finite numbers (alpha_min, alpha_max, beta_min, beta_max), got {span!r}")
    a0, a1, b0, b1 = values
    if not (a0 < a1 and b0 < b1):
        raise ValueError(f"span must have alpha_min < alpha_max and beta_min < beta_max, got {span!r}")
    return values


def check_resolution(resolution: Any) -> tuple[int, int]:
    if isinstance(resolution, (tuple, list)):
        if len(resolution) != 2:
            raise ValueError(f"resolution must be an integer >= 2 or a pair of them, got {resolution!r}")
        return (check_int("resolution", resolution[0], minimum=2), check_int("resolution", resolution[1], minimum=2))
    check_int("resolution", resolution, minimum=2)
    return resolution, resolution


def split_xy(batch_or_data: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a tuple / list or from anything with ``.x`` and ``.y`` (``ArrayData``)."""
    if hasattr(batch_or_data, "x") and hasattr(batch_or_data, "y"):
        x, y = batch_or_data.x, batch_or_data.y
    elif isinstance(batch_or_data, (tuple, list)) and len(batch_or_data) == 2:
        x, y = batch_or_data
    else:
        raise ValueError(f"batch_or_data must be a pair (x, y) or have .x and .y, got {type(batch_or_data).__name__}")
    return check_xy(x, y)


def check_xy(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() == 0 or len(x) == 0 or y.shape[:1] != x.shape[:1]:
        raise ValueError(f"x and y must hold the same number (>= 1) of examples, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y
