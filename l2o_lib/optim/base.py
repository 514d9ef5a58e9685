"""The optimizer contract: a pure ``(init, update)`` pair over flat vectors.

``init(theta) -> state`` builds the state (a ``NamedTuple`` of tensors) for parameters
``theta``; ``update(grad, state, theta, step) -> (delta, state)`` returns the change to add to
``theta`` and the new state. ``step`` is the 0-based index of the update, a Python ``int`` so that
schedules and bias corrections cost no host synchronisation. Nothing is modified in place, so the
same transform serves plain training, batched (vmapped) populations and meta-gradients.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence, Union

import torch
from torch import Tensor

from ..config import check_nonnegative, check_positive

__all__ = ["Transform", "Schedule", "LR", "lr_at", "check_lr", "segment_ids", "segment_norms", "EmptyState"]

Schedule = Callable[[int], float]
LR = Union[float, Schedule]


class Transform(NamedTuple):
    """An optimizer: ``init(theta) -> state`` and ``update(grad, state, theta, step) -> (delta, state)``."""

    init: Callable[[Tensor], Any]
    update: Callable[[Tensor, Any, Tensor, int], tuple[Tensor, Any]]


class EmptyState(NamedTuple):
    """State of stateless rules (plain SGD)."""


def check_lr(lr: LR, name: str = "lr") -> LR:
    """Accept a positive finite float or a schedule (a callable of the step)."""
    if callable(lr):
        return lr
    return check_positive(name, lr)


def lr_at(lr: LR, step: int) -> float:
    """The learning rate at ``step``: ``lr`` itself or ``lr(step)`` for a schedule.

    A schedule's Python number is checked here (free: no device involved): NaN or inf raises a
    ``ValueError`` naming the step. A tensor value (a device table) is left to the training
    loop's end-of-run check, which costs no per-step synchronisation.
    """
    if not callable(lr):
        return lr
    try:
        value = lr(step)
    except OverflowError:  # e.g. exponential decay with gamma > 1 over a long run
        value = math.inf
    if isinstance(value, (int, float)) and not math.isfinite(value):
        raise ValueError(f"lr: the learning-rate schedule returned {value!r} at step {step}; "
                         "a schedule must return finite numbers")
    return value


def segment_ids(segments: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Segment index of every entry of a flat vector split into ``segments`` sizes."""
    sizes = torch.as_tensor(list(segments), device=device)
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes)


def segment_norms(x: Tensor, ids: Tensor, n: int) -> Tensor:
    """Euclidean norm of each segment of ``x`` (one ``index_add``; no Python loop over layers)."""
    sq = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, ids, x * x)
    return sq.sqrt()


def check_betas(betas: Sequence[float]) -> tuple[float, float]:
    """Validate a pair of decay rates in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_nonnegative(f"betas[{i}]", b)
        if b >= 1 or math.isnan(b):
            raise ValueError(f"betas[{i}] must lie in [0, 1), got {b!r}")
    return float(betas[0]), float(betas[1])
