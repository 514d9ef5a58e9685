"""Masked updates: a transform restricted to some entries of the flat vector (the rest stay frozen),
e.g. a head-only fine-tuning baseline (:func:`l2o_lib.l3rs.baseline_factories`)."""

from __future__ import annotations

from torch import Tensor

from .base import Transform

__all__ = ["head_only"]


def head_only(transform: Transform, mask: Tensor) -> Transform:
    """``transform`` restricted to the entries where ``mask`` is 1 (the rest stay frozen)."""
    def update(grad, state, theta, step):
        delta, state = transform.update(grad * mask, state, theta, step)
        return delta * mask, state

    return Transform(transform.init, update)
