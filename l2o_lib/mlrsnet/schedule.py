"""Meta-testing MLR-SNet (paper Algorithm 2): the snapshots ``φ_{T/3}, φ_{2T/3}, φ_T`` kept by
meta-training (:func:`snapshot_steps`, :func:`snapshot_index`, :class:`TrainedSchedule`), driving a
``torch.optim`` optimizer (:class:`MLRSNetScheduler`) or many runs of a population at once
(:func:`mlrsnet_rule`)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import check_int, check_positive
from ..optim import momentum as momentum_transform
from ..population import Rule
from .network import LRCarry, MLRSNet, gamma_bound, mlrsnet_lr

__all__ = ["snapshot_steps", "snapshot_index", "TrainedSchedule", "MLRSNetScheduler", "mlrsnet_rule"]


# ------------------------------------------------------------------------------ snapshots


def snapshot_steps(total: int, k: int = 3) -> list[int]:
    """Completed-step counts ``⌈T·l/k⌉`` (``l = 1..k``) at which meta-training keeps ``φ`` (paper Sec. 4.2.1)."""
    check_int("total", total)
    check_int("k", k)
    return [max(1, math.ceil(total * l / k)) for l in range(1, k + 1)]


def snapshot_index(step: int, total: int, k: int) -> int:
    """Which of ``k`` snapshots drives step ``step`` of a ``total``-step run (switch at the k-ths)."""
    return min(k - 1, step * k // total)


# ----------------------------------------------------------------- trained schedules, scheduler


class TrainedSchedule:
    """Snapshots ``φ_{T/3}, φ_{2T/3}, φ_T`` of a meta-trained MLR-SNet, used in turn (Algorithm 2).

    Args:
        snapshots: state dicts of :class:`MLRSNet` (at least one).
        hidden: their LSTM width.
        info: free-form description (meta-training settings, where it came from).
    """

    def __init__(self, snapshots: Sequence[Mapping[str, Tensor]], *, hidden: int = 50, info: dict | None = None):
        check_int("hidden", hidden)
        if not snapshots:
            raise ValueError("snapshots must hold at least one MLRSNet state dict")
        self.hidden = hidden
        self.info = dict(info or {})
        self.snapshots = [{k: v.detach().clone() for k, v in s.items()} for s in snapshots]
        for i, s in enumerate(self.snapshots):
            try:
                MLRSNet(hidden).load_state_dict(s)
            except RuntimeError as e:
                raise ValueError(f"snapshots[{i}] is not an MLRSNet(hidden={hidden}) state dict: {e}") from None

    def inner_sgd(self, momentum: float = 0.9, weight_decay: float = 5e-4) -> tuple[float, float]:
        """``(momentum, weight_decay)`` of the SGD this schedule was meta-trained to drive (its
        ``info``), the arguments where ``info`` does not say."""
        return float(self.info.get("momentum", momentum)), float(self.info.get("weight_decay", weight_decay))

    def __len__(self) -> int:
        return len(self.snapshots)

    def params(self, index: int, *, device=None, dtype=None) -> dict[str, Tensor]:
        """Snapshot ``index`` as the ``params`` of :func:`mlrsnet_lr`."""
        return {k: v.to(device=device, dtype=dtype) for k, v in self.snapshots[index].items()}

    def stacked_params(self, *, device=None, dtype=None) -> list[dict[str, Tensor]]:
        """All snapshots as ``params`` dicts on ``device`` (moved once, before a run)."""
        return [self.params(i, device=device, dtype=dtype) for i in range(len(self))]

    def net(self, index: int = -1) -> MLRSNet:
        """A fresh :class:`MLRSNet` holding snapshot ``index``."""
        net = MLRSNet(self.hidden)
        net.load_state_dict(self.snapshots[index])
        return net

    @torch.no_grad()
    def lr_curve(self, losses: Tensor | Sequence[float], gamma: float, *, total: int | None = None) -> np.ndarray:
        """The LRs the schedule gives for a given sequence of training losses (e.g. to plot)."""
        losses = torch.as_tensor(losses, dtype=torch.float32)
        total = len(losses) if total is None else total
        params = self.stacked_params(dtype=losses.dtype)
        carry = self.net(0).init_carry()
        out = torch.empty(len(losses))
        for t, f in enumerate(losses):
            out[t], carry = mlrsnet_lr(params[snapshot_index(t, total, len(self))], f, carry, gamma)
        return out.numpy()

    def state(self) -> dict:
        """A ``torch.save``-able dict (see :meth:`from_state`)."""
        return {"format": "mlrsnet-schedule/1", "hidden": self.hidden, "info": dict(self.info),
                "snapshots": self.snapshots}

    @classmethod
    def from_state(cls, state: Mapping) -> "TrainedSchedule":
        """Rebuild from :meth:`state` output."""
        if not isinstance(state, Mapping) or state.get("format") != "mlrsnet-schedule/1":
            raise ValueError("state is not a saved MLR-SNet schedule (format 'mlrsnet-schedule/1')")
        return cls(state["snapshots"], hidden=int(state["hidden"]), info=state.get("info"))


class MLRSNetScheduler:
    """Drive any ``torch.optim`` optimizer with a trained schedule: call :meth:`step` with each
    step's training loss before ``optimizer.step()``; it writes the LR into every param group.

    The LR is kept as a 0-d tensor on the loss's device and written into ``group["lr"]`` (in
    place once the group holds a tensor), so nothing here waits on the device; a ``fused=True``
    or capturable optimizer then runs without host synchronisation (torch's foreach kernels
    read the value themselves). ``as_float=True`` writes Python floats instead (one sync a step).

    Args:
        optimizer: the optimizer whose groups receive the LR (SGD with momentum in the paper).
        schedule: a :class:`TrainedSchedule` (or one :class:`MLRSNet`, used throughout).
        total_steps: the run length ``T``: snapshot ``l`` drives steps ``[T(l-1)/k, Tl/k)``.
        num_classes: ``C`` of :func:`gamma_bound`; ``gamma`` overrides the bound directly.
        f0: the initial loss for ``γ`` (the first loss passed to :meth:`step` when ``None``).
        as_float: write floats instead of tensors.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: TrainedSchedule | MLRSNet, *, total_steps: int,
                 num_classes: int | None = None, gamma: float | None = None, f0: float | Tensor | None = None,
                 min_log: float = 1.0, as_float: bool = False):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(schedule, MLRSNet):
            schedule = TrainedSchedule([schedule.state_dict()], hidden=schedule.hidden)
        if not isinstance(schedule, TrainedSchedule):
            raise ValueError(f"schedule must be a TrainedSchedule or an MLRSNet, got {type(schedule).__name__}")
        check_int("total_steps", total_steps)
        if gamma is None:
            if num_classes is None:
                raise ValueError("num_classes is required unless gamma is given")
            check_int("num_classes", num_classes, minimum=2)
        else:
            check_positive("gamma", gamma)
        check_positive("min_log", min_log)
        self.optimizer, self.schedule, self.total_steps = optimizer, schedule, total_steps
        self.num_classes, self.gamma, self.f0, self.min_log = num_classes, gamma, f0, min_log
        self.as_float = bool(as_float)
        self.step_count = 0
        self.carry: LRCarry | None = None
        self._params: list[dict[str, Tensor]] | None = None
        self.last_lr: Tensor | None = None

    @torch.no_grad()
    def step(self, loss: Tensor) -> Tensor:
        """Set the LR for the coming optimizer step from this step's training ``loss``; returns it."""
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"loss must be a one-element tensor, got {loss!r}")
        loss = loss.detach().reshape(())
        if self._params is None:
            self._params = self.schedule.stacked_params(device=loss.device, dtype=loss.dtype)
            self.carry = MLRSNet(self.schedule.hidden).init_carry(device=loss.device, dtype=loss.dtype)
            if self.gamma is None:
                f0 = loss if self.f0 is None else torch.as_tensor(self.f0, device=loss.device, dtype=loss.dtype)
                self.gamma = gamma_bound(f0, self.num_classes, min_log=self.min_log)
        index = snapshot_index(self.step_count, self.total_steps, len(self.schedule))
        lr, self.carry = mlrsnet_lr(self._params[index], loss, self.carry, self.gamma)
        for group in self.optimizer.param_groups:
            if self.as_float:
                group["lr"] = float(lr)
            elif isinstance(group["lr"], Tensor) and group["lr"].shape == lr.shape:
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr.clone()
        self.step_count += 1
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict:
        """The scheduler's progress (step, LSTM state, γ) for checkpoints."""
        return {"step_count": self.step_count, "carry": None if self.carry is None else tuple(self.carry),
                "gamma": self.gamma}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output."""
        self.step_count = int(state["step_count"])
        self.carry = None if state["carry"] is None else LRCarry(*state["carry"])
        self.gamma = state["gamma"]
        if self.carry is not None:
            self._params = self.schedule.stacked_params(device=self.carry.h.device, dtype=self.carry.h.dtype)


# ------------------------------------------------------------------------- meta-test rule


def mlrsnet_rule(schedule: TrainedSchedule, *, total_steps: int, num_classes: int, f0: Tensor,
                 momentum: float = 0.9, weight_decay: float = 5e-4, min_log: float = 1.0) -> Rule:
    """MLR-SNet meta-test (Algorithm 2) for ``K`` runs: each run feeds its own loss to its own
    LSTM state; the snapshots switch at the thirds of ``total_steps``; ``f0`` ``(K,)`` sets each
    run's ``γ`` (:func:`initial_loss`)."""
    if not isinstance(schedule, TrainedSchedule):
        raise ValueError(f"schedule must be a TrainedSchedule, got {type(schedule).__name__}")
    check_int("total_steps", total_steps)
    check_int("num_classes", num_classes, minimum=2)
    direction = momentum_transform(lr=1.0, momentum=momentum, weight_decay=weight_decay)
    gamma = gamma_bound(f0.reshape(-1), num_classes, min_log=min_log)
    cache: dict = {}

    def init(thetas):
        cache["params"] = schedule.stacked_params(device=thetas.device, dtype=thetas.dtype)
        carry = MLRSNet(schedule.hidden).init_carry((thetas.shape[0],), device=thetas.device, dtype=thetas.dtype)
        return (direction.init(thetas), carry)

    def update(grads, losses, state, thetas, step):
        dstate, carry = state
        neg_dir, dstate = direction.update(grads, dstate, thetas, step)
        params = cache["params"][snapshot_index(step, total_steps, len(schedule))]
        with torch.no_grad():
            lrs, carry = mlrsnet_lr(params, losses, carry, gamma.to(losses))
        return neg_dir * lrs.unsqueeze(-1), (dstate, carry), lrs

    return Rule(init, update)
