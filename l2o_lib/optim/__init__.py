"""Optimizers as pure ``(init, update)`` transforms over flat vectors, schedules, a registry and
the ``torch.optim`` adapter. See :mod:`l2o_lib.optim.base` for the contract."""

from __future__ import annotations

from typing import Callable

from ..config import check_choice
from .adapter import FlatOptimizer
from .base import LR, EmptyState, Schedule, Transform, lr_at, segment_ids, segment_norms
from .baselines import adam, adamax, adamw, lamb, lion, momentum, nesterov, rmsprop, sgd
from .schedules import SCHEDULES, constant, cosine, exponential, get_schedule, multistep, sgdr

OPTIMIZERS: dict[str, Callable[..., Transform]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adam": adam, "adamw": adamw,
    "rmsprop": rmsprop, "adamax": adamax, "lion": lion, "lamb": lamb,
}


def get_factory(name: str) -> Callable[..., Transform]:
    """The transform factory registered under ``name``."""
    check_choice("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name]


def get_optimizer(name: str, **hparams) -> Transform:
    """Build a registered optimizer, e.g. ``get_optimizer("adam", lr=1e-3)``.

    Unknown names or hyper-parameters raise ``ValueError`` listing what is allowed.
    """
    import inspect

    factory = get_factory(name)
    allowed = inspect.signature(factory).parameters
    unknown = set(hparams) - set(allowed)
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {sorted(unknown)} for {name!r}; allowed: {sorted(allowed)}")
    return factory(**hparams)


__all__ = [
    "Transform", "Schedule", "LR", "EmptyState", "lr_at", "segment_ids", "segment_norms",
    "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adamax", "lion", "lamb",
    "constant", "multistep", "exponential", "cosine", "sgdr", "SCHEDULES", "get_schedule",
    "OPTIMIZERS", "get_factory", "get_optimizer", "FlatOptimizer",
]
