"""Meta-training SL2O by truncated back-propagation through time (Algorithm 1).

:func:`run_task` is the inner loop (tasks of ``steps`` inner steps, truncated every ``unroll``),
:func:`meta_train` steps Adam on the rule's weights at every unroll with a divergence guard and
per-task checkpoints, and keeps the weights of the best epoch on a validation split
(:func:`selection_curve`; the paper selects by test loss, selecting on the reported split would
inflate it); :func:`meta_gradient` returns one unroll's meta-gradient, for tests and studies.

First-order meta-gradients treat the optimizee's gradient as a constant input (the reference
does the same by reading ``p.grad.data``). Then ``∂L(z_t)/∂φ = g_tᵀ ∂z_t/∂φ`` exactly, so the
meta-loss is replaced by the surrogate ``Σ_t g_t·z_t`` whose backward pass runs through the tiny
LSTM chain only: a meta-training step costs one forward and backward of the model, like an SGD
step. The loss of the last coordinates of an unroll is scored with the gradient computed at the
first step of the next one, so no extra forward pass is spent on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..config import check_choice, check_int, check_positive, check_seed
from ..finite import check_finite_data
from ..meta import DivergenceGuard, GuardEvent, resume_meta, save_meta
from ..optim.base import Transform
from ..rnnprop import LSTMRule, RNNpropState, rnnprop
from ..training import progress
from .problem import Problem


@dataclass
class MetaHistory:
    """What :func:`meta_train` did: meta-loss per meta-step, validation loss per epoch, guard events.

    ``epoch_val_loss`` / ``epoch_val_accuracy`` are scored at the end of each epoch's scoring run,
    ``epoch_val_mean`` (``select="mean_val"`` only) is the mean validation loss along it, the
    number that picks ``best_epoch`` then."""

    meta_loss: list[float] = field(default_factory=list)
    epoch_val_loss: list[float] = field(default_factory=list)
    epoch_val_accuracy: list[float] = field(default_factory=list)
    epoch_val_mean: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    events: list[GuardEvent] = field(default_factory=list)
    seconds: float = 0.0
    inner_steps: int = 0

    def as_dict(self) -> dict:
        """Plain types, for ``Run.save_result`` and checkpoints."""
        return {"meta_loss": self.meta_loss, "epoch_val_loss": self.epoch_val_loss,
                "epoch_val_accuracy": self.epoch_val_accuracy, "epoch_val_mean": self.epoch_val_mean,
                "best_epoch": self.best_epoch,
                "events": [vars(e) for e in self.events], "seconds": self.seconds, "inner_steps": self.inner_steps}

    @classmethod
    def from_dict(cls, d: dict) -> "MetaHistory":
        """Inverse of :meth:`as_dict`."""
        events = [GuardEvent(**e) for e in d.get("events", [])]
        # checkpoints written before the split was renamed say "test"
        loss, acc = (d["epoch_val_loss"], d["epoch_val_accuracy"]) if "epoch_val_loss" in d else \
            (d["epoch_test_loss"], d["epoch_test_accuracy"])
        return cls(list(d["meta_loss"]), list(loss), list(acc), list(d.get("epoch_val_mean", [])),
                   d["best_epoch"], events, d["seconds"], d["inner_steps"])


def run_task(problem: Problem, transform: Transform, generator: torch.Generator, *, steps: int, unroll: int,
             tasks: int, first_order: bool, on_unroll: Callable[[Tensor, Tensor | None], bool]) -> Tensor:
    """Run one task of ``steps`` inner steps with truncation every ``unroll`` steps: the inner loop of
    :func:`meta_train` and :func:`meta_gradient`, public so benchmarks and tests time and probe it.

    Args:
        problem: the task family; ``tasks`` tasks start at ``problem.start(tasks)``.
        transform: an :func:`~l2o_lib.rnnprop.rnnprop` transform (its state is an ``RNNpropState``),
            ``differentiable=True`` for a meta-gradient.
        generator: the batch order.
        first_order: the meta-objective treats the optimizee's gradients as constants (module docstring).
        on_unroll: called at the end of every unroll as ``on_unroll(meta_loss, objective)`` with the
            unroll's summed training losses (per task) and the differentiable objective whose
            gradient is the meta-gradient (``None`` when nothing depends on the weights); it returns
            ``False`` to restart the task from scratch (after a rolled-back meta-step), e.g.
            :func:`step_on_unroll`.

    Returns the final coordinates ``(tasks, dim)``, detached.
    """
    z = problem.start(tasks)
    state = transform.init(z)
    terms, values = [], []
    for k in range(steps + 1):
        batch = problem.batches(generator, tasks)
        loss, g = problem.loss_and_grad(z, batch, create_graph=not first_order)
        if k > 0:  # z_0 of an unroll does not depend on this unroll's weights
            terms.append((g.detach() * z).sum() if first_order else loss)
            values.append(loss.detach())
        if k > 0 and (k % unroll == 0 or k == steps):
            objective = torch.stack(terms).sum() / tasks if any(t.requires_grad for t in terms) else None
            ok = on_unroll(torch.stack(values).sum() / tasks, objective)
            terms, values = [], []
            if not ok:  # the trajectory came from rolled-back weights: start the task again
                z = problem.start(tasks)
                state = transform.init(z)
                continue
            z, state, g = z.detach(), RNNpropState(*(t.detach() for t in state)), g.detach()
        if k == steps:
            break
        with torch.enable_grad():
            delta, state = transform.update(g, state, z, k)
        z = z + delta
    return z.detach()


def _rank(val_loss: float) -> float:
    """A validation loss for choosing the best epoch: NaN / inf (a diverged task) ranks last."""
    return val_loss if math.isfinite(val_loss) else math.inf


def step_on_unroll(optimizer: torch.optim.Optimizer) -> Callable[[Tensor, Tensor | None], bool]:
    """An ``on_unroll`` for :func:`run_task`: one ``optimizer`` step on every unroll's meta-gradient,
    with no guard and no bookkeeping (what the benchmarks time; :func:`meta_train` adds both).
    It always returns ``True``: the task never restarts."""
    def on_unroll(value: Tensor, objective: Tensor | None) -> bool:
        optimizer.zero_grad(set_to_none=True)
        if objective is not None:
            objective.backward()
        optimizer.step()
        return True
    return on_unroll


def meta_gradient(rule: LSTMRule, problem: Problem, *, steps: int = 2, first_order: bool = True, seed: int = 0,
                  tasks: int = 1, betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8) -> tuple[float, dict]:
    """Meta-loss and meta-gradient of one unroll of ``steps`` steps (no truncation inside).

    Returns ``(meta_loss, {name: gradient})`` for the rule's parameters, exactly what
    :func:`meta_train` would feed its meta-optimizer; useful to study meta-gradient variance and
    to check it against finite differences (tests).
    """
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    check_int("steps", steps)
    check_int("tasks", tasks)
    check_seed("seed", seed)
    out = {}

    def on_unroll(value: Tensor, objective: Tensor | None) -> bool:
        params = dict(rule.named_parameters())
        grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True) \
            if objective is not None else [None] * len(params)
        out["loss"] = float(value)
        out["grads"] = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}
        return True

    generator = torch.Generator(device=problem.theta0.device).manual_seed(seed)
    run_task(problem, rnnprop(rule, betas=betas, eps=eps, differentiable=True), generator, steps=steps,
             unroll=steps, tasks=tasks, first_order=first_order, on_unroll=on_unroll)
    return out["loss"], out["grads"]


def meta_train(rule: LSTMRule, problem: Problem, *, epochs: int = 20, steps_per_task: int = 1000,
               unroll: int = 10, meta_lr: float = 0.01, tasks_per_step: int = 1, first_order: bool = True,
               betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8, seed: int = 0, run=None,
               explode: float = 1e3, patience: int = 10, fused: bool = False, select: str = "mean_val",
               desc: str = "meta-train SL2O") -> MetaHistory:
    """Meta-train ``rule`` in place by truncated back-propagation through time (Algorithm 1).

    Every epoch is one task: ``steps_per_task`` inner steps from ``problem.start()`` with a fresh
    batch order; every ``unroll`` steps, Adam (``meta_lr``) takes a step on the summed training
    losses of the unroll, and the unroll is truncated. After each epoch the rule is scored on
    ``problem.val`` (``select``) and the weights of the best epoch are kept (the paper selects the
    optimizer by its test performance; we select on data held out of the training split); at the
    end they are loaded into ``rule``.

    Args:
        rule: the network to train (modified in place).
        problem: the task family.
        epochs: tasks (paper: 20).
        steps_per_task: ``N`` (paper: 1000).
        unroll: ``T`` (paper: 10).
        meta_lr: Adam learning rate of the meta-optimizer (paper: 0.01).
        tasks_per_step: ``K`` tasks trained side by side, their meta-losses averaged (one batched
            model call per step; more than one needs a model without BatchNorm).
        first_order: treat the optimizee's gradients as constants (see the module docstring);
            ``False`` back-propagates through them too (second order, several times the cost).
        seed: batch order of the tasks (task ``e`` uses ``seed + e``).
        run: a :class:`~l2o_lib.results.Run`; a checkpoint is written after every epoch and an
            existing one is resumed (with the guard's reference loss, so a resumed run refuses
            exactly what the uninterrupted one would). ``epochs`` smaller than the run already
            holds raises ``ValueError``.
        explode, patience: the :class:`~l2o_lib.meta.DivergenceGuard` settings. An epoch whose
            last unroll was refused is scored by running the rolled-back rule on its task.
        fused: step the rule through :func:`~l2o_lib.rnnprop.fused_rnnprop` (compiled on CUDA).
        select: ``"mean_val"``: the rule as the epoch left it runs one fixed selection task
            (:func:`selection_curve`) and scores its mean validation loss, rewarding speed too.
            ``"final_val"``: the validation loss at the end of the epoch's own (changing) task.
    """
    _check_meta_train_args(rule, problem, epochs=epochs, steps_per_task=steps_per_task, unroll=unroll,
                           meta_lr=meta_lr, tasks_per_step=tasks_per_step, seed=seed, select=select)
    device = problem.theta0.device
    rule.to(device)
    optimizer = torch.optim.Adam(rule.parameters(), lr=meta_lr)
    guard = DivergenceGuard(rule, optimizer, explode=explode, patience=patience)
    start, extra = resume_meta(run, kind="sl2o", module=rule, optimizer=optimizer, guard=guard, total_name="epochs",
                               total=epochs, map_location=device)
    history, best = (MetaHistory(), None) if extra is None else (MetaHistory.from_dict(extra["history"]), extra["best"])
    _check_resumed_selection(history, select)
    bar = progress(range(start, epochs), total=epochs, initial=start, desc=desc)
    clock = time.perf_counter() - history.seconds
    prior_events = list(history.events)
    last_ok = True  # whether the latest unroll's meta-step was accepted

    def on_unroll(value: Tensor, objective: Tensor | None) -> bool:
        nonlocal last_ok
        optimizer.zero_grad(set_to_none=True)
        if objective is not None:
            objective.backward()
        last_ok = guard.step(len(history.meta_loss), value)
        history.meta_loss.append(float(value))
        bar.set_postfix(meta_loss=f"{history.meta_loss[-1]:.4g}", refresh=False)
        return last_ok

    transform = rnnprop(rule, betas=betas, eps=eps, differentiable=True, fused=fused)
    for epoch in bar:
        generator = torch.Generator(device=device).manual_seed(seed + epoch)
        z = run_task(problem, transform, generator, steps=steps_per_task, unroll=unroll, tasks=tasks_per_step,
                     first_order=first_order, on_unroll=on_unroll)
        history.inner_steps += steps_per_task * tasks_per_step
        if problem.val is not None:
            best = _judge_epoch(select, rule, problem, z, epoch=epoch, history=history, best=best, last_ok=last_ok,
                                seed=seed, steps=steps_per_task, tasks=tasks_per_step,
                                rnnprop_kwargs=dict(betas=betas, eps=eps, fused=fused))
        history.events = prior_events + guard.events
        history.seconds = time.perf_counter() - clock
        save_meta(run, epoch + 1, kind="sl2o", module=rule, optimizer=optimizer, guard=guard,
                  history=history.as_dict(), best=best)
    if best is not None:
        rule.load_state_dict(best["weights"])
        history.best_epoch = best["epoch"]
    return history


def _check_meta_train_args(rule: LSTMRule, problem: Problem, *, epochs: int, steps_per_task: int, unroll: int,
                           meta_lr: float, tasks_per_step: int, seed: int, select: str) -> None:
    """:func:`meta_train`'s argument checks, all before any work."""
    if not isinstance(rule, LSTMRule):
        raise ValueError(f"rule must be an LSTMRule, got {type(rule).__name__}")
    if not isinstance(problem, Problem):
        raise ValueError(f"problem must be a Problem, got {type(problem).__name__}")
    check_int("epochs", epochs)
    check_int("steps_per_task", steps_per_task)
    check_int("unroll", unroll)
    check_positive("meta_lr", meta_lr)
    check_int("tasks_per_step", tasks_per_step)
    check_seed("seed", seed)
    check_choice("select", select, ("mean_val", "final_val"))
    if unroll > steps_per_task:
        raise ValueError(f"unroll={unroll} must be <= steps_per_task={steps_per_task}")
    check_finite_data("problem.train[0] (the training inputs)", problem.train[0])
    if problem.val is not None:
        check_finite_data("problem.val[0] (the validation inputs)", problem.val[0])


def _judge_epoch(select: str, rule: LSTMRule, problem: Problem, z: Tensor, *, epoch: int, history: MetaHistory,
                 best: dict | None, last_ok: bool, seed: int, steps: int, tasks: int, rnnprop_kwargs: dict) -> dict | None:
    """Score the rule an epoch ended with (``select``, see :func:`meta_train`) into ``history``; return
    the best epoch so far. ``z``: the end of the epoch's own task, ``last_ok``: whether its last
    unroll's meta-step was accepted."""
    if select == "mean_val":
        curve, accuracy = selection_curve(rule, problem, steps=steps, seed=seed + SELECTION_SEED, **rnnprop_kwargs)
        return _record_epoch(rule, history, epoch, best, curve, accuracy)
    if not last_ok:
        # The last unroll was refused: the task restarted and z is its untrained start. Score what
        # the epoch ended with, the rolled-back rule, on the epoch's task from the start.
        generator = torch.Generator(device=problem.theta0.device).manual_seed(seed + epoch)
        z = run_task(problem, rnnprop(rule, **rnnprop_kwargs), generator, steps=steps, unroll=steps, tasks=tasks,
                     first_order=True, on_unroll=lambda value, objective: True)
    return _score_epoch(rule, problem, z[0], epoch, history, best)


def _check_resumed_selection(history: MetaHistory, select: str) -> None:
    """A resumed run keeps the selection it started with: its best epoch so far was ranked by it."""
    if history.epoch_val_loss:
        started = "mean_val" if len(history.epoch_val_mean) == len(history.epoch_val_loss) else "final_val"
        if started != select:
            raise ValueError(f"select={select!r} cannot resume this run: its {len(history.epoch_val_loss)} epochs were "
                             f"scored with select={started!r}; pass select={started!r} or start the run again")


def _score_epoch(rule: LSTMRule, problem: Problem, z: Tensor, epoch: int, history: MetaHistory,
                 best: dict | None) -> dict | None:
    """``select="final_val"``: score an epoch's final coordinates ``z`` on ``problem.val`` into
    ``history``; return the best epoch so far (``{"loss", "epoch", "weights"}``)."""
    scores = problem.model.evaluate(problem.lift(z), *problem.val)
    loss = float(scores["loss"])
    history.epoch_val_loss.append(loss)
    history.epoch_val_accuracy.append(float(scores["accuracy"]))
    return _better(rule, epoch, loss, best)


def _record_epoch(rule: LSTMRule, history: MetaHistory, epoch: int, best: dict | None, curve: list[float],
                  accuracy: float) -> dict | None:
    """``select="mean_val"``: record a selection run into ``history``, ranked by its mean validation loss."""
    history.epoch_val_loss.append(curve[-1])
    history.epoch_val_accuracy.append(accuracy)
    history.epoch_val_mean.append(sum(curve) / len(curve))
    return _better(rule, epoch, history.epoch_val_mean[-1], best)


def _better(rule: LSTMRule, epoch: int, score: float, best: dict | None) -> dict | None:
    """The best epoch so far: this one (with a copy of the rule's weights) when ``score`` beats ``best``'s."""
    if best is None or _rank(score) < _rank(best["loss"]):
        return {"loss": score, "epoch": epoch, "weights": {k: v.clone() for k, v in rule.state_dict().items()}}
    return best


# Batch order of the selection task: seed + SELECTION_SEED, far from the training tasks' seed + epoch.
SELECTION_SEED = 10**6


def selection_curve(rule: LSTMRule, problem: Problem, *, steps: int, seed: int, points: int = 10,
                    betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8,
                    fused: bool = False) -> tuple[list[float], float]:
    """Run ``rule`` (no meta-gradient) for ``steps`` inner steps from ``problem.start()`` on the batch
    order ``seed``; return the validation losses at ``points`` evenly spaced steps (the last one the
    end) and the final validation accuracy. Their mean is :func:`meta_train`'s ``"mean_val"`` score:
    a rule that gets low sooner scores lower, as the paper's convergence-speed claim asks."""
    transform = rnnprop(rule, betas=betas, eps=eps, fused=fused)
    generator = torch.Generator(device=problem.theta0.device).manual_seed(seed)
    marks = {round(steps * (i + 1) / points) for i in range(points)}
    z = problem.start(1)
    state, losses = transform.init(z), []
    for k in range(1, steps + 1):
        _, g = problem.loss_and_grad(z, problem.batches(generator, 1))
        with torch.no_grad():
            delta, state = transform.update(g, state, z, k - 1)
        z = z + delta
        if k in marks:
            scores = problem.model.evaluate(problem.lift(z[0]), *problem.val)
            losses.append(float(scores["loss"]))
    return losses, float(scores["accuracy"])
