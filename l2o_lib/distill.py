"""Probe learned optimizers for (input → output) samples, and run fitted formulas as optimizers.

For each method, a *probe* runs the learned optimizer on real training runs and records what it sees
and what it answers, as :class:`Samples` for :func:`l2o_lib.symbolic.fit`; a *distilled* optimizer
runs a formula in the network's place, through the same code path as the network:

============  ========================================================  ===============================
method        inputs (names in the formulas)                            output
============  ========================================================  ===============================
SL2O          ``m`` = m̂/√(v̂+ε), ``g`` = g/√(v̂+ε) (its RNNprop          ``update``: the coordinate's
              features), ``u`` = its previous update (recent history)  step (θ ← θ − update)
MLR-SNet      ``loss`` (the mini-batch loss it is fed), ``t`` =          ``lr``
              step / run length
L3RS          ``t`` = step / T, ``depth`` = layer index / (L − 1),      ``log_scale`` (λ's log-scale)
              ``log_n`` = log of the layer's size, ``log_g``, ``log_w``  and ``mu_<base>`` per base
              (EMA 0.9 of its log gradient / weight norm), ``loss``     but the first
              (EMA 0.9)
============  ========================================================  ===============================

:class:`FormulaRule` is an SL2O rule (use it with :func:`l2o_lib.sl2o.sl2o`), :func:`formula_schedule`
an MLR-SNet-style schedule for :func:`l2o_lib.mlrsnet.compare_schedules`, :func:`distilled_l3rs` an L3RS
transform whose policy is the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import check_int, check_positive, check_seed
from .functional import FlatModel
from .l3rs import L3RSConfig, feature_names, l3rs, policy, unpack_phi
from .mlrsnet import MethodConfig, TrainedSchedule, compare_schedules
from .optim import momentum as momentum_transform
from .optim.base import Transform
from .population import Rule
from .runs import run as run_task
from .sl2o import sl2o
from .symbolic import to_torch
from .training import Sampler, train_flat

__all__ = ["Samples", "SL2O_INPUTS", "MLRSNET_INPUTS", "L3RS_INPUTS", "probe_sl2o", "FormulaRule", "front_sl2o",
           "run_front_sl2o", "probe_mlrsnet",
           "formula_schedule", "probe_l3rs", "l3rs_targets", "distilled_l3rs"]

SL2O_INPUTS = ("m", "g", "u")
MLRSNET_INPUTS = ("loss", "t")
L3RS_INPUTS = ("t", "depth", "log_n", "log_g", "log_w", "loss")


@dataclass
class Samples:
    """Rows ``X`` ``(n, k)`` with columns ``names`` and the learned optimizer's answers ``y`` ``(n,)``."""

    X: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    target: str

    def __len__(self) -> int:
        return len(self.y)

    def subsample(self, n: int, *, seed: int = 0) -> "Samples":
        """At most ``n`` rows, drawn without replacement by ``seed``."""
        check_int("n", n)
        check_seed("seed", seed)
        if n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Samples(self.X[keep], self.y[keep], self.names, self.target)


def _samples(rows: Tensor, names: Sequence[str], target: str) -> Samples:
    rows = rows.detach().double().cpu().numpy()
    rows = rows[np.isfinite(rows).all(1)]
    return Samples(rows[:, :-1], rows[:, -1], tuple(names), target)


# ----------------------------------------------------------------------------------- SL2O


class _RecordingRule:
    """Wraps a rule: same answers, and every call's ``(m, g, u, update)`` rows kept."""

    def __init__(self, rule):
        self.rule, self.rows = rule, []

    def init_carry(self, grad: Tensor):
        return (self.rule.init_carry(grad), torch.zeros_like(grad))

    def __call__(self, grad, features, carry):
        inner, previous = carry
        step, inner = self.rule(grad, features, inner)
        self.rows.append(torch.cat([features.reshape(-1, 2), previous.reshape(-1, 1), step.reshape(-1, 1)], 1).detach())
        return step, (inner, step)


def probe_sl2o(rule, model: FlatModel, space, samplers: Sequence[Sampler], *, steps: int,
               theta: Tensor | None = None) -> Samples:
    """Run the SL2O optimizer ``rule`` in ``space`` for ``steps`` steps per sampler (one run each, e.g.
    one per batch order) and return every coordinate's ``(m, g, u) → update``."""
    check_int("steps", steps)
    recorder = _RecordingRule(rule)
    for sampler in samplers:
        train_flat(model, sl2o(recorder, space), sampler, steps=steps, theta=theta)
    if not recorder.rows:
        raise ValueError("samplers must not be empty")
    return _samples(torch.cat(recorder.rows), SL2O_INPUTS, "update")


class FormulaRule:
    """An SL2O rule computing ``update = fn(m, g, u)`` per coordinate (``u``: its previous update),
    clipped to ``±bound`` like the LSTM's ``tanh × scale`` output."""

    def __init__(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor], *, bound: float = 1.0):
        if not callable(fn):
            raise ValueError("fn must be callable: fn(m, g, u) -> update, e.g. symbolic.to_torch(expr, SL2O_INPUTS)")
        self.fn, self.bound = fn, check_positive("bound", bound)

    def init_carry(self, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad)

    def __call__(self, grad: Tensor, features: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]:
        f = features.reshape(*grad.shape, 2)
        step = torch.nan_to_num(self.fn(f[..., 0], f[..., 1], carry), nan=0.0).clamp(-self.bound, self.bound)
        return step, step


def front_sl2o(fit, complexity: int | None, space, *, bound: float = 1.0) -> Callable[[], Transform]:
    """A factory ``() -> Transform``: the SL2O optimizer in ``space`` whose rule is the formula of
    ``complexity`` on the Pareto front of ``fit`` (a :class:`~l2o_lib.symbolic.Fit` of
    :func:`probe_sl2o`'s samples; ``None``: its chosen formula), as a :class:`FormulaRule` clipped to
    ``±bound`` (the LSTM's output scale). ``ValueError`` for a complexity not on the front."""
    if tuple(fit.names) != SL2O_INPUTS:
        raise ValueError(f"fit must be a fit of SL2O's inputs {SL2O_INPUTS}, got names {tuple(fit.names)}")
    fn = to_torch(fit.candidate(complexity).expr, SL2O_INPUTS)
    check_positive("bound", bound)
    return lambda: sl2o(FormulaRule(fn, bound=bound), space)


def run_front_sl2o(fit, task, space, *, bound: float, steps: int, seed: int = 0,
                   complexities: Sequence[int] | None = None) -> dict[int, object]:
    """Train ``task`` (a :class:`~l2o_lib.tasks.Task` whose start is ``space``'s origin) for ``steps``
    steps on the batches of ``seed`` with each front formula of :func:`front_sl2o` run as the
    optimizer; ``{complexity: History}`` (``complexities``: a subset, default the whole front). A
    formula whose run goes non-finite is kept (``History.extra["nonfinite_step"]``), not raised."""
    check_int("steps", steps)
    check_seed("seed", seed)
    wanted = [c.complexity for c in fit.front] if complexities is None else list(complexities)
    return {c: run_task(task, front_sl2o(fit, c, space, bound=bound), seeds=[seed], steps=steps, eval_every=steps,
                   vectorize=False, on_nonfinite="record")[0] for c in wanted}


# ----------------------------------------------------------------------------------- MLR-SNet


def probe_mlrsnet(schedule: TrainedSchedule, model_name: str, data, *, steps: int, seeds: Sequence[int] = (0,),
                  **kwargs) -> tuple[Samples, object]:
    """Train ``model_name`` on ``data`` under the schedule (one run per seed, as in
    :func:`~l2o_lib.mlrsnet.compare_schedules`, whose keyword arguments pass through) and return
    ``(loss, t) → lr`` for every step, with the comparison itself."""
    check_int("steps", steps)
    comparison = compare_schedules(model_name, data, [], seeds=seeds, steps=steps, schedule=schedule, **kwargs)
    hist = comparison.history
    t = np.broadcast_to(np.arange(steps) / steps, hist.train_loss.shape)
    rows = torch.as_tensor(np.stack([hist.train_loss, t, hist.lr], -1).reshape(-1, 3))
    return _samples(rows, MLRSNET_INPUTS, "lr"), comparison


def formula_schedule(fn: Callable[[Tensor, Tensor], Tensor], *, name: str = "MLR-SNet (distilled)", setting: str = "",
                     momentum: float = 0.9, weight_decay: float = 5e-4, max_lr: float = 10.0) -> MethodConfig:
    """A compared method whose LR is ``fn(loss, t)`` (clipped to ``[0, max_lr]``) on SGD with
    momentum, the direction MLR-SNet drives (for :func:`~l2o_lib.mlrsnet.compare_schedules`)."""
    if not callable(fn):
        raise ValueError("fn must be callable: fn(loss, t) -> lr, e.g. symbolic.to_torch(expr, MLRSNET_INPUTS)")
    check_positive("max_lr", max_lr)

    def make(n_runs: int, steps: int, device) -> Rule:
        direction = momentum_transform(lr=1.0, momentum=momentum, weight_decay=weight_decay)

        def update(grads, losses, state, thetas, step):
            neg_dir, state = direction.update(grads, state, thetas, step)
            lrs = torch.nan_to_num(fn(losses, torch.full_like(losses, step / steps)), nan=0.0).clamp(0.0, max_lr)
            return neg_dir * lrs.unsqueeze(-1), state, lrs

        return Rule(direction.init, update)

    return MethodConfig(name, setting, make)


# ----------------------------------------------------------------------------------- L3RS


def _columns(config: L3RSConfig) -> list[int]:
    names = feature_names(config)
    middle = f"{config.ema_decays[len(config.ema_decays) // 2]:g}"
    return [names.index(f"log_g_ema{middle}"), names.index(f"log_w_ema{middle}"), names.index(f"loss_ema{middle}")]


def _inputs(config: L3RSConfig, features: Tensor, step: int, total_steps: int, segments: Sequence[int]) -> list[Tensor]:
    """The named inputs :data:`L3RS_INPUTS`, each ``(L,)``."""
    n_layers = features.shape[0]
    t = features.new_full((n_layers,), step / total_steps)
    depth = torch.arange(n_layers, device=features.device, dtype=features.dtype) / max(n_layers - 1, 1)
    log_n = torch.tensor(segments, device=features.device, dtype=features.dtype).log()
    return [t, depth, log_n, *(features[:, c] for c in _columns(config))]


def l3rs_targets(config: L3RSConfig) -> tuple[str, ...]:
    """The outputs a distilled L3RS needs: ``log_scale`` and ``mu_<base>`` for every base but the first."""
    return ("log_scale", *(f"mu_{b}" for b in config.bases[1:]))


def probe_l3rs(phi: Tensor, config: L3RSConfig, run: Callable[[Callable[[], Transform]], object], *,
               total_steps: int, segments: Sequence[int]) -> dict[str, Samples]:
    """Record the policy's inputs and outputs while ``run(make_transform)`` fine-tunes with L3RS
    (e.g. ``lambda make: compare_methods(family, {"L3RS": make}, ...)``); one :class:`Samples` per
    name of :func:`l3rs_targets`, one row per layer and step."""
    params = unpack_phi(phi, config)
    rows: list[Tensor] = []

    def recording_policy(features: Tensor, step: int):
        log_scale, mu = policy(params, features, config.max_log_scale)
        rows.append(torch.stack([*_inputs(config, features, step, total_steps, segments), log_scale, *mu[:, 1:].T], 1).detach())
        return log_scale, mu

    run(lambda: l3rs(phi, config, total_steps=total_steps, segments=segments, policy_fn=recording_policy))
    if not rows:
        raise ValueError("run(make_transform) made no L3RS step")
    table = torch.cat(rows)
    k = len(L3RS_INPUTS)
    return {name: _samples(torch.cat([table[:, :k], table[:, k + j:k + j + 1]], 1), L3RS_INPUTS, name)
            for j, name in enumerate(l3rs_targets(config))}


def distilled_l3rs(phi: Tensor, config: L3RSConfig, formulas: Mapping[str, Callable[..., Tensor]], *,
                   total_steps: int, segments: Sequence[int]) -> Transform:
    """L3RS with its MLP replaced by ``formulas`` (one per name of :func:`l3rs_targets`, each
    ``fn(t, depth, log_n, log_g, log_w, loss)``); the base optimizers (and Adam's learned β) stay those of
    ``phi``. ``log_scale`` is bounded as the MLP's is; the μ are clipped to ``[0, 1]`` and
    renormalised, the first base taking what the others leave."""
    missing = [n for n in l3rs_targets(config) if n not in formulas]
    if missing:
        raise ValueError(f"formulas lacks {missing}; needed: {list(l3rs_targets(config))}")
    bound = config.max_log_scale

    def formula_policy(features: Tensor, step: int):
        inputs = _inputs(config, features, step, total_steps, segments)
        log_scale = torch.nan_to_num(formulas["log_scale"](*inputs), nan=0.0).clamp(-bound, bound)
        others = [torch.nan_to_num(formulas[f"mu_{b}"](*inputs), nan=0.0).clamp(0.0, 1.0) for b in config.bases[1:]]
        rest = [(1.0 - sum(others)).clamp_min(0.0)] if others else [torch.ones_like(log_scale)]
        mu = torch.stack(rest + others, 1)
        return log_scale, mu / mu.sum(1, keepdim=True).clamp_min(1e-12)

    return l3rs(phi, config, total_steps=total_steps, segments=segments, policy_fn=formula_policy)
