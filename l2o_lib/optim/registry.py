"""The registered optimizers by name (what ``FlatOptimizer(params, "adam")`` and the notebooks look up)."""

from __future__ import annotations

import inspect
from typing import Callable

from ..config import check_choice
from .base import Transform
from .baselines import adam, adamax, adamw, lamb, lion, momentum, nesterov, rmsprop, sgd

__all__ = ["OPTIMIZERS", "get_factory", "get_optimizer"]

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
    factory = get_factory(name)
    allowed = inspect.signature(factory).parameters
    unknown = set(hparams) - set(allowed)
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {sorted(unknown)} for {name!r}; allowed: {sorted(allowed)}")
    return factory(**hparams)
