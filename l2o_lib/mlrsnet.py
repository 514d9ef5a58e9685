"""MLR-SNet (Shu et al., TPAMI 2022): an LSTM that maps the training loss to a learning rate.

The schedule network (paper Eq. 8, hidden size ``d' = 50``)::

    a_t = relu(W1a · f_t + b1a)            # the mini-batch training loss, pre-processed
    b_t = relu(W1b · h_{t-1} + b1b)        # the previous hidden state, pre-processed
    (I, F, O, G) = W2 · [a_t; b_t] + b2    # W2 is 4d' x 2d', as in the paper
    c_t = σ(F) ⊙ c_{t-1} + σ(I) ⊙ tanh(G)
    h_t = σ(O) ⊙ tanh(c_t)
    α_t = γ · σ(W3 · h_t + b3)             # the learning rate, in [0, γ]

with ``γ = √f0 · log(f0·C) / (4·C^¼)`` (:func:`gamma_bound`; ``f0`` the initial training loss,
``C`` the number of classes). The same cell serves meta-training and meta-testing (the public
code swaps in a different cell at meta-test time).

Meta-training (paper Algorithm 1) is online: SGD with momentum trains the model with the LR the
network predicts, and every ``t_val`` steps a one-step look-ahead
``θ' = θ − α(φ)·d_t`` (``d_t`` the momentum-SGD direction of the current batch) is scored on a
validation batch; Adam (1e-3, weight decay 1e-4) descends ``∇_φ L_val(θ')``. The direction does
not depend on ``φ``, so the meta-gradient is exact and first-order:
``∇_φ L_val = −(∇L_val(θ') · d_t) · ∂α/∂φ`` (one extra forward/backward on the validation
batch per meta-step; no Hessian-vector product). The LSTM state is truncated (detached) at
every step, as in the paper. Meta-testing (Algorithm 2) replays snapshots of ``φ`` taken at
``T/3, 2T/3, T`` and switches between them at the thirds of the new run.

What is here:

* the functional core :func:`mlrsnet_lr` ``(params, loss, carry, gamma) -> (lr, carry)`` over
  tensors with any leading batch shape, and :class:`MLRSNet`, the module holding ``φ``;
* :func:`gamma_bound` with the guards the reference lacks;
* :func:`lookahead_meta_loss` and :func:`meta_train` (checkpoints and resume through
  :class:`~l2o_lib.results.Run`, NaN/explosion rollback through
  :class:`~l2o_lib.meta.DivergenceGuard`);
* :class:`TrainedSchedule` (the snapshots, saved and loaded as kind ``"mlrsnet"`` by
  :mod:`~l2o_lib.artifacts`) and :class:`MLRSNetScheduler`, which drives any ``torch.optim`` optimizer;
* :func:`mlrsnet_rule`, the meta-test of many runs at once for
  :func:`~l2o_lib.population.train_population` (seeds and baselines side by side);
* the hypergradient-descent baseline :func:`hypergradient_sgd` (Baydin et al., 2018) and input
  corruptions (:func:`corrupt`) for the transfer tasks;
* the comparison protocol: :func:`hand_schedule` (the paper's Eq. 4 scaled to a run),
  :func:`baseline_configs` (each baseline over a small grid) and :func:`compare_schedules`
  (all of them and the transferred schedule, over seeds, as one population).

Known differences from the public code, on purpose: one LSTM cell for meta-train and meta-test;
γ guarded (see :func:`gamma_bound`) and kept from ``f0`` for the whole meta-test run (the public
meta-test recomputes it from the current loss at each snapshot switch); the inner optimizer is SGD
with momentum (the public default is momentum 0); the meta-gradient is taken without
``create_graph`` through the training gradient (the terms it would add are zero). L4 and RTHO
baselines are not implemented.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import (check_choice, check_int, check_nonnegative, check_positive, check_probability, check_seed,
                     check_seeds)
from .data import ArrayData, BatchSampler, Dataset
from .finite import NonFiniteError, check_finite_data
from .functional import FlatModel
from .meta import DivergenceGuard, GuardEvent, check_meta_kind, check_not_past, load_meta_state, meta_state
from .optim import momentum as momentum_transform
from .optim.base import Transform
from .population import Rule, schedule_table, transform_rule
from .results import Run, resume_or_start
from .training import History, _all_finite, _finish, progress

__all__ = [
    "LRCarry", "gamma_bound", "mlrsnet_lr", "mlrsnet_lr_reference", "MLRSNet", "initial_loss",
    "lookahead_meta_loss", "MetaTrainResult", "meta_train", "snapshot_steps", "snapshot_index",
    "TrainedSchedule", "MLRSNetScheduler",
    "mlrsnet_rule", "HDState", "hypergradient_sgd", "corrupt", "split_validation",
    "MethodConfig", "HAND_DESIGNED", "hand_schedule", "baseline_configs", "Comparison", "compare_schedules",
]


# ------------------------------------------------------------------------------------- γ bound


def gamma_bound(f0: float | Tensor, num_classes: int, *, min_log: float = 1.0) -> float | Tensor:
    """The LR ceiling ``γ = √f0 · max(log(f0·C), min_log) / (4·C^¼)`` (paper Sec. 3.2.1, guarded).

    The paper's ``log|f0·C|`` is 0 when ``f0 = 1/C`` (every LR becomes 0: training stops) and
    negative for ``f0 < 1/C`` (negative LRs: ascent); ``f0 <= 0`` makes ``√f0`` NaN. Guards:

    * the log factor is floored at ``min_log`` (default 1), so ``γ >= min_log·√f0/(4·C^¼) > 0``.
      This leaves the paper's value unchanged whenever ``f0·C >= e^min_log``, which holds for
      every randomly initialised cross-entropy model with ``C >= 3`` classes (``f0 ≈ log C``);
      it raises ``γ`` for binary problems and for starts already below ``e/C`` (fine-tuning);
    * a non-finite or non-positive ``f0`` is replaced by ``log C``, the loss of a uniform
      prediction, i.e. the value ``f0`` takes at a typical random initialisation.

    ``f0`` may be a float (returns a float) or a tensor of any shape (returns a tensor, computed
    on its device without a host synchronisation).
    """
    check_int("num_classes", num_classes, minimum=2)
    check_positive("min_log", min_log)
    scale = 4.0 * num_classes ** 0.25
    if isinstance(f0, Tensor):
        fallback = torch.full_like(f0, math.log(num_classes))
        f = torch.where(torch.isfinite(f0) & (f0 > 0), f0, fallback)
        return f.sqrt() * torch.log(f * num_classes).clamp_min(min_log) / scale
    if isinstance(f0, bool) or not isinstance(f0, (int, float)):
        raise ValueError(f"f0 must be a real number or a tensor, got {f0!r}")
    f = float(f0) if math.isfinite(f0) and f0 > 0 else math.log(num_classes)
    return math.sqrt(f) * max(math.log(f * num_classes), min_log) / scale


# --------------------------------------------------------------------------- the schedule net


class LRCarry(NamedTuple):
    """The LSTM state ``(h, c)``, each ``(..., hidden)``."""

    h: Tensor
    c: Tensor


def mlrsnet_lr(params: Mapping[str, Tensor], loss: Tensor, carry: LRCarry,
               gamma: float | Tensor) -> tuple[Tensor, LRCarry]:
    """One step of the schedule network: ``(lr, carry')`` from the training ``loss`` (paper Eq. 8).

    Args:
        params: the network's parameters by name (``dict(net.named_parameters())``).
        loss: training loss(es), shape ``batch_shape`` (``()`` for one run, ``(K,)`` for K runs).
        carry: the LSTM state, each ``batch_shape + (hidden,)``.
        gamma: the LR ceiling (:func:`gamma_bound`), a float or a tensor broadcastable to ``loss``.

    Returns:
        the learning rate(s) ``γ·σ(W3 h + b3)`` of shape ``batch_shape``, and the new carry.
        Differentiable in ``params`` (and ``loss``, ``carry``).
    """
    hidden = carry.h.shape[-1]
    a = torch.relu(torch.addcmul(params["inp.bias"], loss.unsqueeze(-1), params["inp.weight"].squeeze(-1)))
    b = torch.relu(F.linear(carry.h, params["rec.weight"], params["rec.bias"]))
    z = F.linear(torch.cat([a, b], -1), params["gates.weight"], params["gates.bias"])
    # Gate layout (I, F, O, G), as the public code: the three sigmoid gates are one slice, so
    # the cell is a handful of kernels (this runs every training step; per-op overhead is the cost).
    ifo = torch.sigmoid(z[..., :3 * hidden])
    c = torch.addcmul(ifo[..., hidden:2 * hidden] * carry.c, ifo[..., :hidden], torch.tanh(z[..., 3 * hidden:]))
    h = ifo[..., 2 * hidden:] * torch.tanh(c)
    p = torch.sigmoid(F.linear(h, params["out.weight"], params["out.bias"])).squeeze(-1)
    return gamma * p, LRCarry(h, c)


def mlrsnet_lr_reference(params: Mapping[str, Tensor], loss: Tensor, carry: LRCarry,
                         gamma: float | Tensor) -> tuple[Tensor, LRCarry]:
    """:func:`mlrsnet_lr` spelled out gate by gate (the readable test reference)."""
    f = loss.unsqueeze(-1)
    a = torch.relu(f @ params["inp.weight"].T + params["inp.bias"])
    b = torch.relu(carry.h @ params["rec.weight"].T + params["rec.bias"])
    z = torch.cat([a, b], -1) @ params["gates.weight"].T + params["gates.bias"]
    i, fg, o, g = z.chunk(4, -1)
    c = torch.sigmoid(fg) * carry.c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    p = torch.sigmoid(h @ params["out.weight"].T + params["out.bias"]).squeeze(-1)
    return gamma * p, LRCarry(h, c)


class MLRSNet(nn.Module):
    """The parameters ``φ`` of the schedule network and a module front-end to :func:`mlrsnet_lr`.

    Layers: ``inp`` (1 → d', W1 on the loss), ``rec`` (d' → d', W1 on ``h``), ``gates``
    (2d' → 4d', W2), ``out`` (d' → 1, W3). Initialisation as the public code: the first three
    weight matrices uniform in ``[-init_range, init_range]``, PyTorch defaults elsewhere, plus a
    forget-gate bias of ``forget_bias`` (the public code subtracts 1 inside the cell; as an
    initial bias it has the same effect and keeps Eq. 8 exact). The initial LR is then close
    to ``γ/2``.

    Args:
        hidden: ``d'``, the LSTM width (the paper's 50).
        init_range: half-width of the uniform initialisation.
        forget_bias: initial bias of the forget gate.
        seed: seeds the initialisation (the global RNG is left alone); ``None`` uses it.
    """

    def __init__(self, hidden: int = 50, *, init_range: float = 0.1, forget_bias: float = -1.0,
                 seed: int | None = None):
        super().__init__()
        check_int("hidden", hidden)
        check_positive("init_range", init_range)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if seed is not None:
            check_seed("seed", seed)
        self.hidden = hidden
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.inp = nn.Linear(1, hidden)
            self.rec = nn.Linear(hidden, hidden)
            self.gates = nn.Linear(2 * hidden, 4 * hidden)
            self.out = nn.Linear(hidden, 1)
            with torch.no_grad():
                for layer in (self.inp, self.rec, self.gates):
                    layer.weight.uniform_(-init_range, init_range)
                self.gates.bias[hidden:2 * hidden].add_(forget_bias)

    def init_carry(self, batch_shape: Sequence[int] = (), *, device=None, dtype=None) -> LRCarry:
        """A zero LSTM state for runs of shape ``batch_shape``."""
        ref = self.out.weight
        shape = (*tuple(batch_shape), self.hidden)
        z = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return LRCarry(z, z.clone())

    def params(self) -> dict[str, Tensor]:
        """``φ`` by name, the form :func:`mlrsnet_lr` takes."""
        return dict(self.named_parameters())

    def forward(self, loss: Tensor, carry: LRCarry, gamma: float | Tensor = 1.0) -> tuple[Tensor, LRCarry]:
        """``mlrsnet_lr(self.params(), loss, carry, gamma)``."""
        return mlrsnet_lr(self.params(), loss, carry, gamma)


# ------------------------------------------------------------------------- meta-training


def initial_loss(model: FlatModel, theta: Tensor, data: ArrayData, *, max_examples: int = 2048) -> Tensor:
    """``f0``: the eval-mode loss of ``theta`` on the first ``max_examples`` training examples
    (the public code uses the whole training set), as a 0-d tensor (no host synchronisation)."""
    check_int("max_examples", max_examples)
    n = min(len(data), max_examples)
    return model.evaluate(theta, data.x[:n], data.y[:n])["loss"]


def split_validation(data: ArrayData, n_val: int, *, seed: int = 0) -> tuple[ArrayData, ArrayData]:
    """A seeded split of ``data`` into ``(train, validation)`` with ``n_val`` validation examples
    (the paper holds out 1,000 CIFAR training images)."""
    check_int("n_val", n_val)
    check_seed("seed", seed)
    if not isinstance(data, ArrayData):
        raise ValueError(f"data must be an ArrayData, got {type(data).__name__}")
    if n_val >= len(data):
        raise ValueError(f"n_val={n_val} must be smaller than the {len(data)} examples")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


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


def snapshot_steps(total: int, k: int = 3) -> list[int]:
    """Completed-step counts ``⌈T·l/k⌉`` (``l = 1..k``) at which meta-training keeps ``φ`` (paper Sec. 4.2.1)."""
    check_int("total", total)
    check_int("k", k)
    return [max(1, math.ceil(total * l / k)) for l in range(1, k + 1)]


def snapshot_index(step: int, total: int, k: int) -> int:
    """Which of ``k`` snapshots drives step ``step`` of a ``total``-step run (switch at the k-ths)."""
    return min(k - 1, step * k // total)


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

    device = train.x.device
    theta0 = model.flatten() if theta is None else theta.detach().clone()
    model.check_theta(theta0)
    check_finite_data("theta", theta0)
    net = (MLRSNet(hidden, seed=seed) if net is None else net).to(device=device, dtype=theta0.dtype)
    meta_opt = torch.optim.Adam(net.parameters(), lr=meta_lr, weight_decay=meta_weight_decay)
    sampler = BatchSampler(train, batch_size, seed=seed)
    val_sampler = BatchSampler(val, val_batch_size, seed=seed + 1)
    keep_at = snapshot_steps(steps, snapshots)

    def fresh() -> dict:
        buffers = model.init_buffers()
        f0 = initial_loss(model, theta0, train)
        return {"theta": theta0, "buf": torch.zeros_like(theta0), "carry": tuple(net.init_carry()),
                "buffers": buffers, "f0": f0, "losses": torch.full((steps,), float("nan"), device=device),
                "lrs": torch.full((steps,), float("nan"), device=device), "meta_steps": [], "meta_losses": [],
                "evals": [], "snapshots": [], "events": [], "reference": None,
                "meta": meta_state(net, meta_opt), "rng": sampler.generator.get_state(),
                "val_rng": val_sampler.generator.get_state()}

    start, state = (0, fresh()) if run is None else resume_or_start(run, fresh, map_location=device)
    check_meta_kind(state.get("meta", state), "mlrsnet")  # another trainer's checkpoint: say so before anything else
    check_not_past("steps", steps, start)
    load_meta_state(state.get("meta", state), net, meta_opt, kind="mlrsnet")  # a foreign checkpoint has no "meta"
    sampler.generator.set_state(state["rng"])
    val_sampler.generator.set_state(state["val_rng"])
    theta, buf, buffers = state["theta"].to(device), state["buf"].to(device), state["buffers"]
    carry = LRCarry(*(t.to(device) for t in state["carry"]))
    f0 = state["f0"].to(device)
    gamma = gamma_bound(f0, num_classes, min_log=min_log)
    losses, lrs = state["losses"].to(device), state["lrs"].to(device)
    meta_steps, meta_losses = list(state["meta_steps"]), list(state["meta_losses"])
    evals: list[tuple[int, dict]] = [(int(s), {"loss": l, "accuracy": a}) for s, l, a in state["evals"]]
    kept: list[dict] = list(state["snapshots"])
    guard = DivergenceGuard(net, meta_opt, explode=explode, patience=patience)
    guard.reference = state["reference"]
    events_before = [tuple(e) for e in state["events"]]
    good = (theta.clone(), buf.clone(), carry, {k: v.clone() for k, v in buffers.items()})
    good_step, inner_failures = start, 0
    refused: set[int] = set()  # steps skipped after a refused meta-step: their loss stays NaN on purpose

    def restore() -> None:
        nonlocal theta, buf, carry
        theta, buf, carry = good[0].clone(), good[1].clone(), good[2]
        for k, v in good[3].items():
            buffers[k].copy_(v)

    def inner_ok(step: int) -> bool:
        """At a sync point (a meta-step, a checkpoint, the end): is the model finite? If not, record
        where its loss first went non-finite, roll it back to the last good state and return
        ``False``; ``patience`` failed checks in a row raise :class:`NonFiniteError`."""
        nonlocal inner_failures
        if _all_finite([theta, buf]):
            inner_failures = 0
            return True
        since = losses[good_step:step].cpu().numpy()
        bad = [good_step + int(i) for i in np.flatnonzero(~np.isfinite(since)) if good_step + int(i) not in refused]
        bad_at = bad[0] if bad else step - 1
        value = float(since[bad_at - good_step]) if bad else float("nan")
        guard.events.append(GuardEvent(bad_at, f"non-finite training loss: the model was rolled back to its state "
                                               f"at step {good_step}", value))
        inner_failures += 1
        restore()
        if inner_failures >= patience:
            raise NonFiniteError(
                f"MLR-SNet meta-training: the model's training loss went non-finite at step {bad_at} (0-based, of "
                f"{steps}), {inner_failures} times in a row after rolling back to step {good_step}; check the data and "
                "the model for NaN / inf, and lower momentum or meta_lr (the learned LR may be too large for this model)",
                bad_at)
        return False

    def evaluate(step: int) -> None:
        if eval_data is not None:
            evals.append((step, model.evaluate(theta, *eval_data, buffers)))

    def checkpoint(done: int) -> None:
        events = events_before + [(e.step, e.reason, e.value) for e in guard.events]
        run.save_checkpoint({
            "theta": theta, "buf": buf, "carry": tuple(carry), "buffers": buffers, "f0": f0, "losses": losses,
            "lrs": lrs, "meta_steps": meta_steps, "meta_losses": meta_losses,
            "evals": [(s, e["loss"], e["accuracy"]) for s, e in evals], "snapshots": kept, "events": events,
            "reference": guard.reference, "meta": meta_state(net, meta_opt, kind="mlrsnet"),
            "rng": sampler.generator.get_state(), "val_rng": val_sampler.generator.get_state()}, done)

    params = net.params()  # Adam and the guard's rollback write these tensors in place
    clock = time.perf_counter()
    if start == 0:
        evaluate(0)
    for step in progress(range(start, steps), total=steps - start, desc=desc):
        batch = sampler.sample()
        loss, grad = model.loss_and_grad(theta, batch, buffers)
        # d_t = μ·d_{t-1} + g_t + wd·θ_t, torch.optim.SGD's buffer (d_{-1} = 0 gives its d_0 = g_0).
        g = grad.add(theta, alpha=weight_decay) if weight_decay else grad
        direction = torch.add(g, buf, alpha=momentum) if momentum else g
        skip = False
        if step % t_val == 0:
            if step > start and not inner_ok(step):
                # θ went non-finite since the last check: recompute this step from the restored state.
                loss, grad = model.loss_and_grad(theta, batch, buffers)
                g = grad.add(theta, alpha=weight_decay) if weight_decay else grad
                direction = torch.add(g, buf, alpha=momentum) if momentum else g
            meta_opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                meta_loss = lookahead_meta_loss(model, params, loss, carry, gamma, theta, direction,
                                                val_sampler.sample(), buffers)
                if fault is not None:
                    meta_loss = fault(step, meta_loss)
                meta_loss.backward()
            if guard.step(step, meta_loss.detach()):
                good = (theta.clone(), buf.clone(), carry, {k: v.clone() for k, v in buffers.items()})
                good_step = step
                meta_steps.append(step)
                meta_losses.append(meta_loss.detach())
            else:
                # The model state may itself be what went wrong: restart from the last good one.
                restore()
                refused.add(step)
                skip = True
        if not skip:
            with torch.no_grad():
                lr, carry = mlrsnet_lr(params, loss, carry, gamma)
            theta = torch.addcmul(theta, lr, direction, value=-1)
            buf = direction
            losses[step], lrs[step] = loss, lr
        done = step + 1
        at_checkpoint = run is not None and checkpoint_every is not None and (done % checkpoint_every == 0 or
                                                                              done == steps)
        # Nothing non-finite may be saved or returned: check at the checkpoints and the end (both
        # synchronise anyway); a state that passes becomes the one to roll back to, as after a resume.
        if (at_checkpoint or done == steps) and inner_ok(done):
            good = (theta.clone(), buf.clone(), carry, {k: v.clone() for k, v in buffers.items()})
            good_step = done
        if done in keep_at and len(kept) < keep_at.index(done) + 1:
            kept.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        if done % eval_every == 0 or done == steps:
            evaluate(done)
        if at_checkpoint:
            checkpoint(done)
    events = events_before + [(e.step, e.reason, e.value) for e in guard.events]
    history = _finish(losses, evals, clock, theta, extra={
        "lr": lrs.cpu().numpy(), "meta_steps": np.array(meta_steps, dtype=np.int64),
        "meta_loss": torch.stack(meta_losses).cpu().numpy() if meta_losses else np.zeros(0),
        "gamma": float(gamma), "f0": float(f0), "guard_events": events, "resumed_at": start})
    schedule = TrainedSchedule(kept, hidden=net.hidden, info={
        "num_classes": num_classes, "steps": steps, "t_val": t_val, "momentum": momentum,
        "weight_decay": weight_decay, "batch_size": batch_size, "snapshot_steps": keep_at[:len(kept)],
        "min_log": min_log})
    return MetaTrainResult(net, schedule, history)


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


# ----------------------------------------------------------------------- hypergradient descent


class HDState(NamedTuple):
    """Hypergradient descent: the current LR (shape ``theta.shape[:-1] + (1,)``), the momentum
    buffer and the previous step's direction."""

    lr: Tensor
    buf: Tensor
    prev: Tensor


def hypergradient_sgd(lr: float | Tensor = 0.01, hyper_lr: float | Tensor = 1e-4, *, momentum: float = 0.9,
                      weight_decay: float = 0.0) -> Transform:
    """SGD(-momentum) with hypergradient descent on its LR (Baydin et al., ICLR 2018, SGDN-HD).

    With ``g_t = ∇f(θ_t) + wd·θ_t`` and ``θ_t = θ_{t-1} − α_{t-1}·b_{t-1}``, the derivative of
    ``f(θ_t)`` in the last LR is ``−g_t·b_{t-1}``, so::

        α_t = α_{t-1} + β · g_t·b_{t-1}       (β = hyper_lr; b_{-1} = 0)
        b_t = μ·b_{t-1} + g_t  (b_0 = g_0);  delta = −α_t·b_t

    The LR lives in the state as a tensor (no host synchronisation). ``theta`` may carry leading
    batch dimensions ``(K, D)``; ``lr`` and ``hyper_lr`` may then be ``(K, 1)`` tensors (one per
    run). Float arguments are validated.
    """
    for name, value in (("lr", lr), ("hyper_lr", hyper_lr)):
        if not isinstance(value, Tensor):
            check_positive(name, value)
    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)

    def init(theta: Tensor) -> HDState:
        shape = theta.shape[:-1] + (1,)
        rate = (lr.to(theta) if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=theta.dtype,
                                                                          device=theta.device))
        zero = torch.zeros_like(theta)
        return HDState(rate.expand(shape).clone(), zero, zero.clone())

    def update(grad: Tensor, state: HDState, theta: Tensor, step: int) -> tuple[Tensor, HDState]:
        g = grad.add(theta, alpha=weight_decay) if weight_decay else grad
        beta = hyper_lr.to(theta) if isinstance(hyper_lr, Tensor) else hyper_lr
        rate = state.lr + beta * (g * state.prev).sum(-1, keepdim=True)
        buf = g.clone() if step == 0 else state.buf.mul(momentum).add(g)
        return buf * -rate, HDState(rate, buf, buf)

    return Transform(init, update)


# ----------------------------------------------------------------------------- corruptions


def corrupt(data: Dataset, kind: str, severity: float, *, seed: int = 0, splits: Sequence[str] = ("train", "test")) -> Dataset:
    """A copy of ``data`` with CIFAR-C-style corruptions generated on the fly (fixed per ``seed``).

    * ``noise``: ``x + severity·σ·ε`` with ``σ`` the training inputs' standard deviation;
    * ``blur``: a box blur over the spatial dimensions, ``severity`` the (odd, >= 3) width;
    * ``contrast``: ``mean + severity·(x − mean)`` per example (``severity < 1`` lowers it).

    Inputs ``(N, L)`` are signals (MNIST-1D), ``(N, C, H, W)`` images; ``splits`` picks which
    splits are corrupted (the paper trains on corrupted data and tests on clean data).
    """
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    check_choice("kind", kind, ("noise", "blur", "contrast"))
    check_positive("severity", severity)
    check_seed("seed", seed)
    for s in splits:
        check_choice("splits", s, ("train", "test"))
    if kind == "blur":
        width = int(severity)
        if width != severity or width < 3 or width % 2 == 0:
            raise ValueError(f"severity for blur is the box width, an odd integer >= 3; got {severity!r}")
    sigma = data.train.x.std()
    g = torch.Generator().manual_seed(seed)

    def apply(x: Tensor) -> Tensor:
        if kind == "noise":
            return x + severity * sigma * torch.randn(x.shape, generator=g).to(x)
        if kind == "contrast":
            dims = tuple(range(1, x.dim()))
            mean = x.mean(dims, keepdim=True)
            return mean + severity * (x - mean)
        w = int(severity)
        if x.dim() == 2:
            return F.avg_pool1d(x.unsqueeze(1), w, 1, w // 2, count_include_pad=False).squeeze(1)
        if x.dim() == 4:
            return F.avg_pool2d(x, w, 1, w // 2, count_include_pad=False)
        raise ValueError(f"blur needs inputs of shape (N, L) or (N, C, H, W), got {tuple(x.shape)}")

    train = ArrayData(apply(data.train.x), data.train.y) if "train" in splits else data.train
    test = ArrayData(apply(data.test.x), data.test.y) if "test" in splits else data.test
    info = {**data.info, "corruption": {"kind": kind, "severity": severity, "splits": list(splits)}}
    return Dataset(f"{data.name}-{kind}", train, test, data.input_shape, data.num_classes, info)


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


# ------------------------------------------------------------------- comparison protocol


@dataclass(frozen=True)
class MethodConfig:
    """One hyper-parameter setting of one compared method.

    Attributes:
        method: the method's name (``"Fixed"``, ``"MultiStep"``, ``"Adam"``, ``"HD"``, ...).
        setting: the setting, e.g. ``"lr=0.1"``.
        make: ``make(n_runs, steps, device) -> Rule`` for ``n_runs`` runs of ``steps`` steps.
    """

    method: str
    setting: str
    make: Callable[[int, int, Any], Rule]


HAND_DESIGNED = ("Fixed", "MultiStep", "Exponential", "Cosine", "SGDR")


def hand_schedule(method: str, lr: float, steps: int) -> Callable[[int], float]:
    """The paper's hand-designed schedules (Eq. 4) scaled to a run of ``steps`` steps.

    ``Fixed``: ``lr``. ``MultiStep``: ÷10 at 30 %, 60 % and 90 % of the run (the paper's epochs 60,
    120, 180 of 200). ``Exponential``: a constant per-step factor that divides the LR by 100 over the
    run (the paper's 0.95 per epoch reaches ~0 by mid-run; ours keeps the late phase useful for
    short runs). ``Cosine``: a half cosine to 0. ``SGDR``: warm restarts with a first period of
    5 % of the run, doubling, ``min_lr = 1e-5`` (the paper's ``E0 = 10`` of 200 epochs, ``T_mult = 2``).
    """
    from .optim.schedules import constant, cosine, exponential, multistep, sgdr

    check_choice("method", method, HAND_DESIGNED)
    check_positive("lr", lr)
    check_int("steps", steps)
    if method == "Fixed":
        return constant(lr)
    if method == "MultiStep":
        return multistep(lr, sorted({max(1, round(steps * f)) for f in (0.3, 0.6, 0.9)}), 0.1)
    if method == "Exponential":
        return exponential(lr, 0.01 ** (1.0 / steps))
    if method == "Cosine":
        return cosine(lr, steps)
    return sgdr(lr, max(1, round(steps / 20)), 2, min_lr=1e-5)


def baseline_configs(*, sgd_lrs: Sequence[float] = (0.03, 0.1, 0.3), adam_lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
                     hd_lr: float = 0.1, hd_hyper_lrs: Sequence[float] = (1e-4, 1e-3, 1e-2), momentum: float = 0.9,
                     weight_decay: float = 5e-4, methods: Sequence[str] | None = None) -> list[MethodConfig]:
    """The compared methods, each over a small grid (the paper tunes HD's hyper-LR over powers of ten).

    SGD with momentum under the five :func:`hand_schedule` schedules (grid ``sgd_lrs``), Adam at
    constant LRs ``adam_lrs`` (paper: defaults), and hypergradient descent (:func:`hypergradient_sgd`)
    from ``hd_lr`` with hyper-LRs ``hd_hyper_lrs``; ``weight_decay`` for all (coupled, as in
    ``torch.optim``). ``methods`` keeps a subset by name. L4 and RTHO are not implemented.
    """
    from .optim import adam

    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)
    check_positive("hd_lr", hd_lr)
    for name, grid in (("sgd_lrs", sgd_lrs), ("adam_lrs", adam_lrs), ("hd_hyper_lrs", hd_hyper_lrs)):
        if not len(grid):
            raise ValueError(f"{name} must not be empty")
        for v in grid:
            check_positive(name, v)
    allowed = (*HAND_DESIGNED, "Adam", "HD")
    if methods is not None:
        for m in methods:
            check_choice("methods", m, allowed)
    wanted = set(allowed if methods is None else methods)
    configs: list[MethodConfig] = []

    def sgd_config(method: str, lr: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            table = schedule_table([hand_schedule(method, lr, steps)] * n, steps, device=device)
            tx = momentum_transform(lr=lambda t: table[t, :, None], momentum=momentum, weight_decay=weight_decay)
            return transform_rule(tx, table)
        return MethodConfig(method, f"lr={lr:g}", make)

    def adam_config(lr: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            table = torch.full((steps, n), float(lr), device=device)
            return transform_rule(adam(lr=lambda t: table[t, :, None], weight_decay=weight_decay), table)
        return MethodConfig("Adam", f"lr={lr:g}", make)

    def hd_config(beta: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            return transform_rule(hypergradient_sgd(hd_lr, beta, momentum=momentum, weight_decay=weight_decay))
        return MethodConfig("HD", f"lr0={hd_lr:g}, β={beta:g}", make)

    for method in HAND_DESIGNED:
        if method in wanted:
            configs += [sgd_config(method, lr) for lr in sgd_lrs]
    if "Adam" in wanted:
        configs += [adam_config(lr) for lr in adam_lrs]
    if "HD" in wanted:
        configs += [hd_config(b) for b in hd_hyper_lrs]
    return configs


@dataclass
class Comparison:
    """What :func:`compare_schedules` returns.

    Attributes:
        records: one dict per run: ``method``, ``setting``, ``seed``, ``accuracy`` and ``loss`` (final,
            on the test split), ``val_accuracy`` and ``val_loss`` (final, on the validation split carved
            from the training data; ``None`` without one), ``diverged_at`` (the step where the run's
            training loss went NaN / inf, ``None`` when it stayed finite: a diverging setting of a
            grid is a result, kept and marked).
        lr_curves: ``{(method, setting): (steps,) mean LR over seeds}``.
        accuracy_curves: ``{(method, setting): (eval_steps, mean accuracy)}``.
        history: the whole :class:`~l2o_lib.population.PopulationHistory`.
    """

    records: list[dict]
    lr_curves: dict
    accuracy_curves: dict
    history: Any

    def _validation_means(self, methods: Sequence[str] | None):
        import pandas as pd

        frame = pd.DataFrame(self.records)
        if methods is not None:
            frame = frame[frame["method"].isin(list(methods))]
        if frame["val_accuracy"].isna().any():
            raise ValueError("these runs have no validation split to tune on (pass n_val > 0 to compare_schedules); "
                             "selecting on the test split would report a tuned-on-test number")
        return frame.groupby(["method", "setting"], sort=False)["val_accuracy"].mean().reset_index()

    def best(self, methods: Sequence[str] | None = None) -> dict[str, str]:
        """``{method: setting}`` with the highest mean final **validation** accuracy (the tuned
        baselines); the test split never takes part in the choice."""
        means = self._validation_means(methods)
        return {m: part.loc[part["val_accuracy"].idxmax(), "setting"] for m, part in means.groupby("method", sort=False)}

    def top(self, methods: Sequence[str]) -> str:
        """The method among ``methods`` whose best setting has the highest mean validation accuracy."""
        means = self._validation_means(methods)
        return str(means.loc[means["val_accuracy"].idxmax(), "method"])

    def tuned(self, methods: Sequence[str] | None = None) -> list[dict]:
        """The records of each method's best setting only (for mean ± std tables)."""
        best = self.best(methods)
        return [r for r in self.records if best.get(r["method"]) == r["setting"]]


def compare_schedules(model_name: str, data: Dataset, configs: Sequence[MethodConfig], *, seeds: Sequence[int],
                      steps: int, schedule: TrainedSchedule | None = None, batch_size: int = 128,
                      eval_every: int = 100, momentum: float = 0.9, weight_decay: float = 5e-4,
                      model_kwargs: dict | None = None, vectorize: bool | None = None,
                      augment: Callable | None = None, batch_seed: int = 0, desc: str | None = None,
                      n_val: int = 0) -> Comparison:
    """Train every ``config`` (and the transferred ``schedule``, as ``"MLR-SNet"``) once per seed
    on ``data`` with the architecture ``model_name``, all as one population (see
    :func:`~l2o_lib.population.train_population`). Seed ``s`` fixes the initialisation
    (``build_model(..., seed=s)``), shared by every method, so methods differ only in their LRs
    and mini-batch draws.

    ``n_val`` training examples are held out (:func:`split_validation`, seeded by ``batch_seed``)
    and every run is evaluated on them at the end: :meth:`Comparison.best` tunes on those, never
    on the test split, which is only reported. ``n_val=0`` trains on the whole training split and
    leaves nothing to tune on (for runs whose settings were chosen elsewhere)."""
    from .models import build_model
    from .population import mixed_rule, train_population

    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    seeds = check_seeds("seeds", seeds)
    check_seed("batch_seed", batch_seed)
    configs = list(configs)
    if not configs and schedule is None:
        raise ValueError("nothing to compare: configs is empty and schedule is None")
    for c in configs:
        if not isinstance(c, MethodConfig):
            raise ValueError(f"configs must hold MethodConfig, got {type(c).__name__}")
    if schedule is not None and not isinstance(schedule, TrainedSchedule):
        raise ValueError(f"schedule must be a TrainedSchedule or None, got {type(schedule).__name__}")
    check_int("steps", steps)
    check_int("n_val", n_val, minimum=0)
    train, val = split_validation(data.train, n_val, seed=batch_seed) if n_val else (data.train, None)
    device = data.device
    kwargs = dict(model_kwargs or {})
    modules = [build_model(model_name, data.input_shape, data.num_classes, seed=s, **kwargs).to(device) for s in seeds]
    model = FlatModel(modules[0])
    base = torch.stack([FlatModel(m).flatten() for m in modules])  # (S, D)
    n = len(seeds)
    entries = [(c.method, c.setting) for c in configs]
    parts = [(n, c.make(n, steps, device)) for c in configs]
    if schedule is not None:
        f0 = torch.stack([initial_loss(model, base[i], train) for i in range(n)])
        parts.append((n, mlrsnet_rule(schedule, total_steps=steps, num_classes=data.num_classes, f0=f0,
                                      momentum=momentum, weight_decay=weight_decay)))
        entries.append(("MLR-SNet", "transferred"))
    thetas = base.repeat(len(parts), 1)
    hist = train_population(model, train, mixed_rule(parts), thetas=thetas, steps=steps, batch_size=batch_size,
                            seed=batch_seed, eval_data=(data.test.x, data.test.y), eval_every=eval_every,
                            vectorize=vectorize, augment=augment, desc=desc, on_nonfinite="record")
    validation = _final_evaluation(model, hist, val) if val is not None else None
    records, lr_curves, acc_curves = [], {}, {}
    for j, (method, setting) in enumerate(entries):
        rows = slice(j * n, (j + 1) * n)
        for i, s in enumerate(seeds):
            k = j * n + i
            records.append({"method": method, "setting": setting, "seed": s,
                            "accuracy": float(hist.test_accuracy[k, -1]), "loss": float(hist.test_loss[k, -1]),
                            "val_accuracy": None if validation is None else float(validation["accuracy"][k]),
                            "val_loss": None if validation is None else float(validation["loss"][k]),
                            "diverged_at": hist.extra["nonfinite_step"][k]})
        lr_curves[(method, setting)] = hist.lr[rows].mean(0)
        acc_curves[(method, setting)] = (hist.eval_steps, hist.test_accuracy[rows].mean(0))
    return Comparison(records, lr_curves, acc_curves, hist)


def _final_evaluation(model: FlatModel, hist: Any, data: ArrayData) -> dict[str, np.ndarray]:
    """Loss and accuracy of every final member of a population run on ``data``, as host arrays
    (each member with its own BatchNorm statistics when the model has them)."""
    buffers = hist.extra.get("buffers")
    if buffers:
        rows = [model.evaluate(theta, data.x, data.y, b) for theta, b in zip(hist.thetas, buffers)]
        out = {key: torch.stack([r[key] for r in rows]) for key in ("loss", "accuracy")}
    else:
        out = model.batched_evaluate(hist.thetas, data.x, data.y)
    return {key: value.cpu().numpy() for key, value in out.items()}
