"""NaN and inf in training: the error every trainer raises, and the checks behind it.

A run ends with finite weights or fails with a :class:`NonFiniteError` naming the step where its
loss (or weights) first stopped being finite and what to try. The loops record every step's loss
on the device and look at it only where they synchronise with the host anyway (the end of a run,
a meta-step), so the check costs no per-step synchronisation. ``on_nonfinite="record"`` makes a
loop store that step in its record instead of raising: for grid searches, where a diverging
setting is a legitimate outcome (scored ``inf``), never a silent one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .config import check_choice

__all__ = ["NonFiniteError", "ON_NONFINITE", "check_on_nonfinite", "check_finite_data", "all_finite",
           "first_nonfinite", "divergence_step", "LR_HINT"]

ON_NONFINITE = ("raise", "record")

LR_HINT = ("lower the learning rate (or check that its schedule returns finite values), and check the data "
           "and the loss function for NaN / inf")


class NonFiniteError(RuntimeError):
    """A run's loss or weights became NaN / inf and could not be recovered.

    Attributes:
        step: the 0-based step at which the loss (or, failing that, the weights) was first seen
            non-finite; ``None`` when unknown.
    """

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


def check_on_nonfinite(value: Any) -> str:
    """Validate a loop's ``on_nonfinite`` argument (``"raise"`` or ``"record"``)."""
    return check_choice("on_nonfinite", value, ON_NONFINITE)


def check_finite_data(name: str, x: Any) -> None:
    """``ValueError`` naming ``name`` when the floating tensor ``x`` holds NaN or inf.

    One host synchronisation: call it before a loop, never inside one. Integer tensors (labels)
    and non-tensors pass.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        return
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), the first at index "
                         f"{where}; remove or repair those examples before training")


def all_finite(tensors) -> bool:
    """Whether every tensor of ``tensors`` is finite: one host synchronisation for all of them
    (call it where a loop synchronises anyway, never per step)."""
    tensors = list(tensors)
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def first_nonfinite(values: np.ndarray) -> int | None:
    """Index of the first non-finite entry of a 1-d array, ``None`` when all are finite."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64)))
    return int(bad[0]) if bad.size else None


def divergence_step(losses: np.ndarray, weights_finite: bool) -> int | None:
    """Where a run went non-finite: its first non-finite loss; when every loss is finite but the
    weights are not, the last step (its update produced them); ``None`` when all is finite."""
    step = first_nonfinite(losses)
    if step is None and not weights_finite:
        step = max(len(losses) - 1, 0)
    return step
