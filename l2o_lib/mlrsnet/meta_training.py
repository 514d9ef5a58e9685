"""Meta-training MLR-SNet online (paper Algorithm 1): the one-step look-ahead objective
(:func:`lookahead_meta_loss`) and :func:`meta_train`, which trains a model with the network's LR
while Adam trains ``φ`` every ``t_val`` steps (checkpoints and resume through
:func:`~l2o_lib.meta.resume_meta` / :func:`~l2o_lib.meta.save_meta`, rollback through
:class:`~l2o_lib.meta.DivergenceGuard`); the validation split it scores on comes from
:func:`l2o_lib.tasks.split_validation`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from ..config import check_int, check_nonnegative, check_positive, check_probability, check_seed
from ..data import ArrayData, BatchSampler
from ..finite import NonFiniteError, all_finite, check_finite_data
from ..functional import FlatModel
from ..meta import DivergenceGuard, GuardEvent, resume_meta, save_meta
from ..optim.kernels import coupled_decay, heavy_ball
from ..results import Run
from ..training import History, _finish, progress
from .network import LRCarry, MLRSNet, gamma_bound, initial_loss, mlrsnet_lr
from .schedule import TrainedSchedule, snapshot_steps

__all__ = ["lookahead_meta_loss", "MetaTrainResult", "meta_train"]


def lookahead_meta_loss(model: FlatModel, params: Mapping[str, Tensor], loss: Tensor, carry: LRCarry,
                        gamma: float | Tensor, theta: Tensor, direction: Tensor, val_batch: tuple[Tensor, Tensor],
                        buffers: dict[str, Tensor] | None = None) -> Tensor:
    """The meta-objective of paper Eq. 10-11: ``L_val(θ − α(φ)·d)`` on one validation batch.

    ``loss`` (the training loss fed to the network), ``carry``, ``theta`` and ``direction`` are
    treated as constants; the result is differentiable in ``params``. ``buffers`` (BatchNorm
    statistics) are copied first, so the look-ahead never writes into the real ones.
    """
    lr, _ = mlrsnet_lr(params, loss.detach(), LRCarry(carry.h.detach(), carry.c.detach()), gamma)
    scratch = None if buffers is None else {k: v.clone() for k, v in buffers.items()}
    return model.loss(theta.detach() - lr * direction.detach(), val_batch, scratch, train=True)


@dataclass
class MetaTrainResult:
    """What :func:`meta_train` returns.

    Attributes:
        net: the schedule network at the end (``φ_T``).
        schedule: the snapshots ``φ_{T/3}, φ_{2T/3}, φ_T`` as a :class:`TrainedSchedule`.
        history: the model's training run (``train_loss``, evaluations, ``theta``); ``extra``
            holds ``lr`` (every step), ``meta_steps`` and ``meta_loss``, ``gamma``, ``f0``,
            ``guard_events`` and ``resumed_at``.
    """

    net: MLRSNet
    schedule: "TrainedSchedule"
    history: History

    @property
    def lrs(self) -> np.ndarray:
        """The learning rate of every training step."""
        return self.history.extra["lr"]


def _check_batch(name: str, batch_size: int, data: ArrayData) -> None:
    check_int(name, batch_size)
    if batch_size > len(data):
        raise ValueError(f"{name}={batch_size} exceeds the {len(data)} examples it samples from")


def _check_meta_train_args(model: FlatModel, train: ArrayData, val: ArrayData,
                           eval_data: tuple[Tensor, Tensor] | None, *,
                           steps: int, num_classes: int, t_val: int, batch_size: int, val_batch_size: int,
                           momentum: float, weight_decay: float, meta_lr: float, meta_weight_decay: float, hidden: int,
                           snapshots: int, seed: int, eval_every: int, min_log: float, checkpoint_every: int | None,
                           run: Run | None, net: MLRSNet | None) -> None:
    """:func:`meta_train`'s argument checks, all before any work (no host sync beyond the data checks)."""
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    for name, split in (("train", train), ("val", val)):
        if not isinstance(split, ArrayData):
            raise ValueError(f"{name} must be an ArrayData, got {type(split).__name__}")
        model.check_data(split.x, split.y, name=name)
    if eval_data is not None:
        model.check_batch(eval_data, name="eval_data")
    check_int("steps", steps)
    check_int("num_classes", num_classes, minimum=2)
    check_int("t_val", t_val)
    _check_batch("batch_size", batch_size, train)
    _check_batch("val_batch_size", val_batch_size, val)
    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)
    check_positive("meta_lr", meta_lr)
    check_nonnegative("meta_weight_decay", meta_weight_decay)
    check_int("hidden", hidden)
    check_int("snapshots", snapshots)
    if snapshots > steps:
        raise ValueError(f"snapshots={snapshots} must not exceed steps={steps}")
    check_seed("seed", seed)
    check_int("eval_every", eval_every)
    check_positive("min_log", min_log)
    if checkpoint_every is not None:
        check_int("checkpoint_every", checkpoint_every)
    if run is not None and not isinstance(run, Run):
        raise ValueError(f"run must be a Run or None, got {type(run).__name__}")
    if net is not None and not isinstance(net, MLRSNet):
        raise ValueError(f"net must be an MLRSNet or None, got {type(net).__name__}")
    check_finite_data("train.x (the training inputs)", train.x)
    check_finite_data("val.x (the validation inputs)", val.x)
    if eval_data is not None:
        check_finite_data("eval_data[0] (the test inputs)", eval_data[0])


def _fresh_state(model: FlatModel, theta0: Tensor, train: ArrayData, net: MLRSNet, steps: int) -> dict:
    """The trainer's entries :func:`meta_train` starts from without a checkpoint (the layout its
    checkpoints save next to the network and its optimizer)."""
    device = train.x.device
    buffers = model.init_buffers()
    f0 = initial_loss(model, theta0, train)
    return {"theta": theta0, "buf": torch.zeros_like(theta0), "carry": tuple(net.init_carry()),
            "buffers": buffers, "f0": f0, "losses": torch.full((steps,), float("nan"), device=device),
            "lrs": torch.full((steps,), float("nan"), device=device), "meta_steps": [], "meta_losses": [],
            "evals": [], "snapshots": [], "events": []}


def _momentum_direction(grad: Tensor, theta: Tensor, buf: Tensor, momentum: float, weight_decay: float) -> Tensor:
    """``d_t = μ·d_{t-1} + g_t + wd·θ_t``, torch.optim.SGD's buffer (``d_{-1} = 0`` gives its ``d_0 = g_0``)."""
    g = coupled_decay(grad, theta, weight_decay)
    return heavy_ball(buf, g, momentum) if momentum else g


def _copy_state(theta: Tensor, buf: Tensor, carry: LRCarry, buffers: dict[str, Tensor]) -> tuple:
    """A copy of the model's state to roll back to (θ, the momentum buffer, the LSTM state, BatchNorm buffers)."""
    return (theta.clone(), buf.clone(), carry, {k: v.clone() for k, v in buffers.items()})


@dataclass
class _Context:
    """What one step of :func:`meta_train` reads besides the :class:`_Online` state."""

    model: FlatModel
    net: MLRSNet
    sampler: BatchSampler
    val_sampler: BatchSampler
    params: dict  # the network's parameters: Adam and the guard's rollback write these tensors in place
    meta_opt: torch.optim.Optimizer
    guard: DivergenceGuard
    gamma: Tensor
    momentum: float
    weight_decay: float
    t_val: int
    steps: int
    patience: int
    fault: Callable[[int, Tensor], Tensor] | None


class _Online:
    """The state of one online run of :func:`meta_train`: the model being trained (θ, the momentum
    buffer, the LSTM carry, BatchNorm buffers), what it recorded, and the last good copy of the model
    to roll back to. Built from :func:`_fresh_state` or a checkpoint's entries; :meth:`entries`
    gives them back."""

    def __init__(self, state: dict, device: torch.device, start: int):
        self.theta, self.buf, self.buffers = state["theta"].to(device), state["buf"].to(device), state["buffers"]
        self.carry = LRCarry(*(t.to(device) for t in state["carry"]))
        self.f0 = state["f0"].to(device)
        self.losses, self.lrs = state["losses"].to(device), state["lrs"].to(device)
        self.meta_steps, self.meta_losses = list(state["meta_steps"]), list(state["meta_losses"])
        self.evals: list[tuple[int, dict]] = [(int(s), {"loss": l, "accuracy": a}) for s, l, a in state["evals"]]
        self.kept: list[dict] = list(state["snapshots"])
        self.events_before = [tuple(e) for e in state["events"]]
        self.refused: set[int] = set()  # steps skipped after a refused meta-step: their loss stays NaN on purpose
        self.failures = 0  # failed finiteness checks in a row
        self.mark(start)

    def mark(self, step: int) -> None:
        """Remember the model's state at ``step`` as the one to roll back to."""
        self.good = _copy_state(self.theta, self.buf, self.carry, self.buffers)
        self.good_step = step

    def restore(self) -> None:
        """Roll the model back to the state of the last :meth:`mark`."""
        self.theta, self.buf, self.carry = self.good[0].clone(), self.good[1].clone(), self.good[2]
        for k, v in self.good[3].items():
            self.buffers[k].copy_(v)

    def check_finite(self, step: int, steps: int, guard: DivergenceGuard, patience: int) -> bool:
        """At a sync point (a meta-step, a checkpoint, the end): is the model finite? If not, record
        where its loss first went non-finite, roll it back to the last good state and return
        ``False``; ``patience`` failed checks in a row raise :class:`NonFiniteError`."""
        if all_finite([self.theta, self.buf]):
            self.failures = 0
            return True
        good_step = self.good_step
        since = self.losses[good_step:step].cpu().numpy()
        bad = [good_step + int(i) for i in np.flatnonzero(~np.isfinite(since)) if good_step + int(i) not in self.refused]
        bad_at = bad[0] if bad else step - 1
        value = float(since[bad_at - good_step]) if bad else float("nan")
        guard.events.append(GuardEvent(bad_at, f"non-finite training loss: the model was rolled back to its state "
                                               f"at step {good_step}", value))
        self.failures += 1
        self.restore()
        if self.failures >= patience:
            raise NonFiniteError(
                f"MLR-SNet meta-training: the model's training loss went non-finite at step {bad_at} (0-based, of "
                f"{steps}), {self.failures} times in a row after rolling back to step {good_step}; check the data and "
                "the model for NaN / inf, and lower momentum or meta_lr (the learned LR may be too large for this model)",
                bad_at)
        return False

    def evaluate(self, model: FlatModel, eval_data: tuple[Tensor, Tensor] | None, step: int) -> None:
        """Record the test scores at ``step`` (nothing without ``eval_data``)."""
        if eval_data is not None:
            self.evals.append((step, model.evaluate(self.theta, *eval_data, self.buffers)))

    def events(self, guard: DivergenceGuard) -> list[tuple]:
        """Every guard event of the run, those before a resume first, as ``(step, reason, value)``."""
        return self.events_before + [(e.step, e.reason, e.value) for e in guard.events]

    def history(self, clock: float, gamma: Tensor, guard: DivergenceGuard, start: int) -> History:
        """The run's :class:`~l2o_lib.training.History` (the clock started at ``clock``), with the
        ``extra`` entries :class:`MetaTrainResult` describes."""
        return _finish(self.losses, self.evals, clock, self.theta, extra={
            "lr": self.lrs.cpu().numpy(), "meta_steps": np.array(self.meta_steps, dtype=np.int64),
            "meta_loss": torch.stack(self.meta_losses).cpu().numpy() if self.meta_losses else np.zeros(0),
            "gamma": float(gamma), "f0": float(self.f0), "guard_events": self.events(guard), "resumed_at": start})

    def entries(self, guard: DivergenceGuard, sampler: BatchSampler, val_sampler: BatchSampler) -> dict:
        """The trainer's checkpoint entries (the layout of :func:`_fresh_state`, plus the samplers' RNG states)."""
        return {"theta": self.theta, "buf": self.buf, "carry": tuple(self.carry), "buffers": self.buffers,
                "f0": self.f0, "losses": self.losses, "lrs": self.lrs, "meta_steps": self.meta_steps,
                "meta_losses": self.meta_losses, "evals": [(s, e["loss"], e["accuracy"]) for s, e in self.evals],
                "snapshots": self.kept, "events": self.events(guard), "rng": sampler.generator.get_state(),
                "val_rng": val_sampler.generator.get_state()}


def meta_train(model: FlatModel, train: ArrayData, val: ArrayData, *, steps: int, num_classes: int,
               t_val: int = 100, batch_size: int = 128, val_batch_size: int = 128, momentum: float = 0.9,
               weight_decay: float = 5e-4, meta_lr: float = 1e-3, meta_weight_decay: float = 1e-4,
               hidden: int = 50, snapshots: int = 3, theta: Tensor | None = None, net: MLRSNet | None = None,
               seed: int = 0, eval_data: tuple[Tensor, Tensor] | None = None, eval_every: int = 100,
               run: Run | None = None, checkpoint_every: int | None = None, min_log: float = 1.0,
               explode: float = 1e3, patience: int = 10, desc: str | None = "MLR-SNet meta-train",
               fault: Callable[[int, Tensor], Tensor] | None = None) -> MetaTrainResult:
    """Train a model with MLR-SNet's LR while meta-training the network online (paper Algorithm 1).

    Each step ``t``: draw a training batch, ``(f_t, g_t)`` = loss and gradient, the momentum-SGD
    direction ``d_t = μ·d_{t-1} + g_t + wd·θ_t``; if ``t % t_val == 0`` draw a validation batch
    and take one Adam step on ``φ`` against :func:`lookahead_meta_loss`; then
    ``α_t = γ·MLRSNet(f_t, carry; φ)`` with the updated ``φ`` (Eq. 12) and ``θ ← θ − α_t·d_t``.

    Args:
        model: the flat view of the network being trained.
        train, val: training split and the held-out validation split (:func:`split_validation`).
        steps: training steps ``T``.
        num_classes: ``C`` in :func:`gamma_bound`.
        t_val: steps between meta-updates (the paper 100, the public code 300).
        batch_size, val_batch_size: training and validation mini-batch sizes.
        momentum, weight_decay: the inner SGD's (``momentum=0`` is the paper's vanilla SGD).
        meta_lr, meta_weight_decay: Adam on ``φ`` (paper: 1e-3 and 1e-4).
        hidden: the LSTM width of a new network.
        snapshots: how many ``φ`` to keep for meta-testing (at ``⌈T·l/k⌉``).
        theta: starting parameters (the module's by default); net: a network to continue from.
        seed: seeds the batches and a new network's initialisation.
        eval_data, eval_every: test split evaluated at step 0, every ``eval_every`` and at the end.
        run, checkpoint_every: with a :class:`~l2o_lib.results.Run`, save the whole state every
            ``checkpoint_every`` steps and resume from its newest checkpoint.
        min_log: :func:`gamma_bound`'s guard.
        explode, patience: :class:`~l2o_lib.meta.DivergenceGuard` settings. A refused
            meta-step also rolls the model back to its state at the last good meta-step. The
            model itself is checked where the loop synchronises anyway (before each meta-step,
            at checkpoints and at the end): a non-finite ``θ`` is rolled back to the last good
            state (a guard event names the step where its loss first went non-finite), and
            ``patience`` such rollbacks in a row raise :class:`~l2o_lib.finite.NonFiniteError`,
            so the result never holds non-finite weights. Non-finite data is refused up front.
        desc: progress-bar label.
        fault: testing hook ``fault(step, meta_loss) -> meta_loss`` (e.g. inject a NaN).

    Returns:
        a :class:`MetaTrainResult`.
    """
    _check_meta_train_args(model, train, val, eval_data, steps=steps, num_classes=num_classes, t_val=t_val,
                           batch_size=batch_size, val_batch_size=val_batch_size, momentum=momentum,
                           weight_decay=weight_decay, meta_lr=meta_lr, meta_weight_decay=meta_weight_decay,
                           hidden=hidden, snapshots=snapshots, seed=seed, eval_every=eval_every, min_log=min_log,
                           checkpoint_every=checkpoint_every, run=run, net=net)
    start, st, ctx = _start(model, train, val, theta=theta, net=net, hidden=hidden, seed=seed, meta_lr=meta_lr,
                            meta_weight_decay=meta_weight_decay, batch_size=batch_size,
                            val_batch_size=val_batch_size, explode=explode, patience=patience, run=run, steps=steps,
                            num_classes=num_classes, min_log=min_log, momentum=momentum, weight_decay=weight_decay,
                            t_val=t_val, fault=fault)
    net, guard, keep_at = ctx.net, ctx.guard, snapshot_steps(steps, snapshots)
    clock = time.perf_counter()
    if start == 0:
        st.evaluate(model, eval_data, 0)
    for step in progress(range(start, steps), total=steps - start, desc=desc):
        _train_step(st, ctx, step, start)
        done = step + 1
        at_checkpoint = run is not None and checkpoint_every is not None and (done % checkpoint_every == 0 or
                                                                              done == steps)
        # Nothing non-finite may be saved or returned: check at the checkpoints and the end (both
        # synchronise anyway); a state that passes becomes the one to roll back to, as after a resume.
        if (at_checkpoint or done == steps) and st.check_finite(done, steps, guard, patience):
            st.mark(done)
        if done in keep_at and len(st.kept) < keep_at.index(done) + 1:
            st.kept.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        if done % eval_every == 0 or done == steps:
            st.evaluate(model, eval_data, done)
        if at_checkpoint:
            save_meta(run, done, kind="mlrsnet", module=net, optimizer=ctx.meta_opt, guard=guard,
                      **st.entries(guard, ctx.sampler, ctx.val_sampler))
    return MetaTrainResult(net, TrainedSchedule(st.kept, hidden=net.hidden, info={
        "num_classes": num_classes, "steps": steps, "t_val": t_val, "momentum": momentum,
        "weight_decay": weight_decay, "batch_size": batch_size, "snapshot_steps": keep_at[:len(st.kept)],
        "min_log": min_log}), st.history(clock, ctx.gamma, guard, start))


def _start(model: FlatModel, train: ArrayData, val: ArrayData, *, theta: Tensor | None, net: MLRSNet | None,
           hidden: int, seed: int, meta_lr: float, meta_weight_decay: float, batch_size: int, val_batch_size: int,
           explode: float, patience: int, run: Run | None, steps: int, num_classes: int, min_log: float,
           momentum: float, weight_decay: float, t_val: int,
           fault: Callable[[int, Tensor], Tensor] | None) -> tuple[int, _Online, _Context]:
    """``(start, state, context)`` of :func:`meta_train`: a new run, or the one resumed from ``run``'s
    newest checkpoint (the network, Adam, the guard's reference, the model and the samplers' RNGs)."""
    device = train.x.device
    theta0 = model.flatten() if theta is None else theta.detach().clone()
    model.check_theta(theta0)
    check_finite_data("theta", theta0)
    net = (MLRSNet(hidden, seed=seed) if net is None else net).to(device=device, dtype=theta0.dtype)
    meta_opt = torch.optim.Adam(net.parameters(), lr=meta_lr, weight_decay=meta_weight_decay)
    sampler = BatchSampler(train, batch_size, seed=seed)
    val_sampler = BatchSampler(val, val_batch_size, seed=seed + 1)
    guard = DivergenceGuard(net, meta_opt, explode=explode, patience=patience)
    start, state = resume_meta(run, kind="mlrsnet", module=net, optimizer=meta_opt, guard=guard, total_name="steps",
                               total=steps, map_location=device)
    if state is None:
        state = _fresh_state(model, theta0, train, net, steps)
    else:
        sampler.generator.set_state(state["rng"])
        val_sampler.generator.set_state(state["val_rng"])
    st = _Online(state, device, start)
    gamma = gamma_bound(st.f0, num_classes, min_log=min_log)
    return start, st, _Context(model, net, sampler, val_sampler, net.params(), meta_opt, guard, gamma, momentum,
                               weight_decay, t_val, steps, patience, fault)


def _loss_and_direction(st: _Online, ctx: _Context, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The training loss at θ and the momentum-SGD direction ``d_t`` (:func:`_momentum_direction`)."""
    loss, grad = ctx.model.loss_and_grad(st.theta, batch, st.buffers)
    return loss, _momentum_direction(grad, st.theta, st.buf, ctx.momentum, ctx.weight_decay)


def _meta_step(st: _Online, ctx: _Context, step: int, loss: Tensor, direction: Tensor) -> bool:
    """One Adam step on φ against :func:`lookahead_meta_loss` through the guard; ``False`` when it was
    refused, and then the model is rolled back too (its state may itself be what went wrong)."""
    ctx.meta_opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        meta_loss = lookahead_meta_loss(ctx.model, ctx.params, loss, st.carry, ctx.gamma, st.theta, direction,
                                        ctx.val_sampler.sample(), st.buffers)
        if ctx.fault is not None:
            meta_loss = ctx.fault(step, meta_loss)
        meta_loss.backward()
    if ctx.guard.step(step, meta_loss.detach()):
        st.mark(step)
        st.meta_steps.append(step)
        st.meta_losses.append(meta_loss.detach())
        return True
    st.restore()
    st.refused.add(step)
    return False


def _train_step(st: _Online, ctx: _Context, step: int, start: int) -> None:
    """Training step ``step`` of :func:`meta_train`: a meta-step first every ``t_val`` steps, then
    ``θ ← θ − α_t·d_t`` with the LR of the updated network (skipped after a refused meta-step)."""
    batch = ctx.sampler.sample()
    loss, direction = _loss_and_direction(st, ctx, batch)
    if step % ctx.t_val == 0:
        if step > start and not st.check_finite(step, ctx.steps, ctx.guard, ctx.patience):
            # θ went non-finite since the last check: recompute this step from the restored state.
            loss, direction = _loss_and_direction(st, ctx, batch)
        if not _meta_step(st, ctx, step, loss, direction):
            return
    with torch.no_grad():
        lr, st.carry = mlrsnet_lr(ctx.params, loss, st.carry, ctx.gamma)
    st.theta = torch.addcmul(st.theta, lr, direction, value=-1)
    st.buf = direction
    st.losses[step], st.lrs[step] = loss, lr
