"""The divergence guard: refuse and roll back a meta-step whose loss or gradient is not finite or explodes.

Meta-training a learned optimizer can blow up: one unlucky unroll produces a NaN or a loss
thousands of times larger than where it started, and one Adam step on that meta-gradient ruins
the optimizer's weights. :class:`DivergenceGuard` keeps the last good copy of the meta-parameters
and the meta-optimizer, refuses a bad meta-step, rolls back, records the event and gives up with
a clear error when it keeps happening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import check_int, check_positive
from ..finite import NonFiniteError, all_finite

__all__ = ["GuardEvent", "DivergenceGuard"]


@dataclass
class GuardEvent:
    """One refused meta-step: when, why, and the offending meta-loss."""

    step: int
    reason: str
    value: float


class DivergenceGuard:
    """Refuse and roll back meta-steps whose loss or gradient is not finite or explodes.

    Call :meth:`step` after ``backward()`` (or :meth:`check`, then :meth:`advance`, to change the
    optimizer between them). It costs two host synchronisations per meta-step (a meta-step is a
    whole unroll, so this is cheap). A meta-step is bad when the meta-loss or any meta-gradient is
    NaN/inf, when the meta-loss exceeds ``explode`` times the first accepted one, or when the
    optimizer's step itself leaves non-finite parameters (an overflow). A bad step restores the
    parameters and optimizer state saved at the last :meth:`commit`, clears the gradients, records
    a :class:`GuardEvent` and returns ``False``; the caller should then restart its inner task,
    whose state came from the bad trajectory.

    Args:
        module: the learned optimizer (its parameters are checked and restored).
        optimizer: the meta-optimizer (its state is restored too).
        explode: ratio to the first accepted meta-loss that counts as an explosion.
        patience: consecutive bad meta-steps tolerated before giving up with
            :class:`~l2o_lib.finite.NonFiniteError` (the last one non-finite) or ``RuntimeError``.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, *,
                 explode: float = 1e3, patience: int = 10):
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.module = module
        self.optimizer = optimizer
        self.explode = check_positive("explode", explode)
        self.patience = check_int("patience", patience)
        self.events: list[GuardEvent] = []
        self.reference: float | None = None
        self._last_loss = math.nan
        self.commit()

    def commit(self) -> None:
        """Remember the current parameters and optimizer state as the last good ones (which also
        ends a streak of bad steps)."""
        self._good = (_clone(self.module.state_dict()), _clone(self.optimizer.state_dict()))
        self._bad_in_a_row = 0

    def _reason(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite meta-loss"
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.abs().sum() for g in grads]).sum())):
            return "non-finite meta-gradient"
        if self.reference is not None and abs(loss) > self.explode * max(abs(self.reference), 1e-12):
            return f"meta-loss exploded (> {self.explode:g} x the first, {self.reference:.4g})"
        return None

    def _refuse(self, step: int, reason: str, value: float) -> None:
        """Record a bad step, restore the last committed state; give up after ``patience`` in a row."""
        self.events.append(GuardEvent(int(step), reason, value))
        self._bad_in_a_row += 1
        params, opt = self._good
        self.module.load_state_dict(params)
        self.optimizer.load_state_dict(_clone(opt))
        self.optimizer.zero_grad(set_to_none=True)
        if self._bad_in_a_row >= self.patience:
            error = NonFiniteError if reason.startswith("non-finite") else RuntimeError
            raise error(
                f"meta-training diverged: {self._bad_in_a_row} bad meta-steps in a row (last at step {step}: "
                f"{reason}); lower the meta learning rate or the learned optimizer's output scale")

    def check(self, step: int, meta_loss: Tensor | float) -> bool:
        """``True`` when the meta-step may go ahead; otherwise roll back and return ``False``."""
        loss = float(meta_loss)
        reason = self._reason(loss)
        if reason is None:
            if self.reference is None:
                self.reference = loss
            self._last_loss = loss
            return True
        self._refuse(step, reason, loss)
        return False

    def advance(self, step: int) -> bool:
        """``optimizer.step()`` after a passed :meth:`check`; ``commit`` when the parameters it
        leaves are finite, otherwise (an overflowing update) roll back and return ``False``."""
        self.optimizer.step()
        if all_finite(self.module.parameters()):
            self.commit()
            return True
        self._refuse(step, "non-finite meta-parameters after the update (it overflowed)", self._last_loss)
        return False

    def step(self, step: int, meta_loss: Tensor | float) -> bool:
        """:meth:`check`, then :meth:`advance` when the step is good."""
        return self.check(step, meta_loss) and self.advance(step)


def _clone(obj: Any) -> Any:
    # Tensors cloned, containers rebuilt, the rest shared: a fraction of deepcopy's cost, which
    # matters because a snapshot is taken after every meta-step.
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _clone(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_clone(v) for v in obj)
    return obj
