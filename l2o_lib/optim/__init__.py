"""Optimizers as pure ``(init, update)`` transforms over flat vectors, schedules, a registry and
the ``torch.optim`` adapter; hypergradient SGD (:mod:`.hypergradient`) and masked (head-only)
updates (:mod:`.masked`); the arithmetic several of them share, written once (:mod:`.kernels`).
See :mod:`l2o_lib.optim.base` for the contract."""

from __future__ import annotations

from .adapter import FlatOptimizer
from .base import LR, EmptyState, Schedule, Transform, lr_at, segment_ids, segment_norms
from .baselines import adam, adamax, adamw, lamb, lion, momentum, nesterov, rmsprop, sgd
from .hypergradient import HDState, hypergradient_sgd
from .masked import head_only
from .registry import OPTIMIZERS, get_factory, get_optimizer
from .schedules import SCHEDULES, constant, cosine, exponential, get_schedule, multistep, sgdr

__all__ = [
    "Transform", "Schedule", "LR", "EmptyState", "lr_at", "segment_ids", "segment_norms",
    "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adamax", "lion", "lamb",
    "constant", "multistep", "exponential", "cosine", "sgdr", "SCHEDULES", "get_schedule",
    "OPTIMIZERS", "get_factory", "get_optimizer", "FlatOptimizer", "HDState", "hypergradient_sgd", "head_only",
]
