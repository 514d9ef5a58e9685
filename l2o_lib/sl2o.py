"""SL2O (Chen et al.): a coordinate-wise LSTM optimizer acting on subspace coordinates.

The learned optimizer sees, per coordinate, the RNNprop features of Lv et al. (bias-corrected
Adam moments, ``m̂ / √(v̂ + ε)`` and ``g / √(v̂ + ε)`` with β1 = 0.9, β2 = 0.99) and outputs the
coordinate's step through ``LSTMCell → Linear (no bias) → tanh × scale``; the reference size is
one cell of 8 units (392 weights). Acting on the d coordinates of a :class:`~l2o_lib.subspace.Subspace`
(``W = W0 + zᵀ P``) is SL2O; acting on every parameter of a small model is plain L2O.

Pieces, from the core outwards:

* :class:`LSTMRule`: the network, one call for all coordinates (any leading shape, so K tasks
  are one batch of ``K·d`` rows, no vmap needed for the optimizer itself);
* :func:`rnnprop`: the pure :class:`~l2o_lib.optim.Transform` around any rule (the LSTM, or a
  fixed rule such as ``lr · g`` in tests, which then *is* SGD);
* :func:`sl2o`: ``dagger(rnnprop(rule), subspace)``; :class:`SL2O`: the ``torch.optim`` adapter;
* :func:`meta_train`: truncated-BPTT meta-training (Algorithm 1): tasks of ``steps_per_task``
  inner steps, a meta-step every ``unroll`` steps on the summed training losses, Adam on the
  rule's weights, first- or second-order meta-gradients, K tasks per meta-step, a divergence
  guard, per-task checkpoints and the paper's selection of the best weights by test loss.

Differences from the public reference code (see DESIGN.md): no hard stop after 10k steps, one
LSTM cell definition, and the paper's convergence-step metric in :mod:`~l2o_lib.metrics`.

First-order meta-gradients treat the optimizee's gradient as a constant input (the reference
does the same by reading ``p.grad.data``). Then ``∂L(z_t)/∂φ = g_tᵀ ∂z_t/∂φ`` exactly, so the
meta-loss is replaced by the surrogate ``Σ_t g_t·z_t`` whose backward pass runs through the tiny
LSTM chain only: a meta-training step costs one forward and backward of the model, like an SGD
step. The loss of the last coordinates of an unroll is scored with the gradient computed at the
first step of the next one, so no extra forward pass is spent on it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Protocol, Sequence

import torch
from torch import Tensor, nn
from torch.func import vmap

from .config import check_int, check_positive, check_seed
from .finite import check_finite_data
from .functional import FlatModel
from .fused import fused_rnnprop
from .meta import DivergenceGuard, GuardEvent, check_meta_kind, check_not_past, load_meta_state, meta_state
from .results import artifact_path, atomic_torch_save, find_artifact, load_torch_file
from .optim.adapter import FlatOptimizer
from .optim.base import Transform, check_betas
from .lora import LoRASpace, lora_dagger
from .subspace import Subspace, dagger
from .training import progress

__all__ = ["LSTMRule", "RNNpropState", "rnnprop", "sl2o", "SL2O", "Problem", "MetaHistory", "meta_train", "meta_gradient",
           "Trained", "save_trained", "trained_path", "load_trained"]


class Rule(Protocol):
    """What :func:`rnnprop` needs from a learned (or fixed) rule."""

    def init_carry(self, grad: Tensor) -> Tensor: ...

    def __call__(self, grad: Tensor, features: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]: ...


class LSTMRule(nn.Module):
    """The coordinate-wise network: ``layers`` LSTM cells → ``Linear(hidden, 1, bias=False)`` → ``tanh × scale``.

    Args:
        hidden: units per LSTM cell (reference: 8).
        layers: stacked cells (reference: 1).
        scale: output scale; a coordinate moves at most ``scale`` per step (reference: 1).
        input_size: features per coordinate (RNNprop: 2).
        seed: initialisation seed (PyTorch's default LSTM/Linear initialisation).
    """

    def __init__(self, hidden: int = 8, layers: int = 1, scale: float = 1.0, input_size: int = 2, seed: int = 0):
        super().__init__()
        self.hidden = check_int("hidden", hidden)
        self.layers = check_int("layers", layers)
        self.scale = check_positive("scale", scale)
        self.input_size = check_int("input_size", input_size)
        check_seed("seed", seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cells = nn.ModuleList(nn.LSTMCell(input_size if i == 0 else hidden, hidden) for i in range(layers))
            self.out = nn.Linear(hidden, 1, bias=False)
            # Untrained steps of at most ~scale/10: the first meta-steps then start from a stable,
            # slow optimizer instead of a random walk of full-size steps (which diverges at scale 1).
            self.out.weight.data.mul_(0.1)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"

    def init_carry(self, grad: Tensor) -> Tensor:
        """Zero LSTM state for every coordinate of ``grad``: ``(2, layers, grad.numel(), hidden)``."""
        return grad.new_zeros(2, self.layers, grad.numel(), self.hidden)

    def forward(self, grad: Tensor, features: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]:
        """The step of every coordinate (shaped like ``grad``) and the new carry."""
        x = features.reshape(-1, self.input_size)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (carry[0, i], carry[1, i]))
            hs.append(h)
            cs.append(c)
            x = h
        step = torch.tanh(self.out(x)).view_as(grad) * self.scale
        return step, torch.stack([torch.stack(hs), torch.stack(cs)])


class RNNpropState(NamedTuple):
    m: Tensor      # first moment of the gradient
    v: Tensor      # second moment
    carry: Tensor  # the rule's recurrent state


def rnnprop(rule: Rule, *, betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8,
            differentiable: bool = False, fused: bool = False, compile: str = "auto") -> Transform:
    """The learned optimizer as a pure transform: ``delta = -rule(g, [m̂/√(v̂+ε), g/√(v̂+ε)], carry)``.

    Args:
        rule: an :class:`LSTMRule` or any object with ``init_carry(grad)`` and
            ``rule(grad, features, carry) -> (step, carry)``.
        betas: the feature moments' decay rates (paper: 0.9, 0.99).
        eps: added to ``v̂`` under the square root (Algorithm 1).
        differentiable: keep the autograd graph through the rule (meta-training); otherwise the
            rule runs under ``no_grad`` so a long meta-test builds no graph.
        fused: run an :class:`LSTMRule` through :func:`~l2o_lib.fused.fused_rnnprop`, one pure
            function ``torch.compile`` can fuse (same state and numbers); ``compile`` is its mode
            (``"auto"``: compiled on CUDA, eager elsewhere).
    """
    if fused:
        return fused_rnnprop(rule, betas=betas, eps=eps, differentiable=differentiable, compile=compile)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    if not callable(rule) or not hasattr(rule, "init_carry"):
        raise ValueError("rule must be callable and have init_carry(grad), e.g. an LSTMRule")

    def init(theta: Tensor) -> RNNpropState:
        return RNNpropState(torch.zeros_like(theta), torch.zeros_like(theta), rule.init_carry(theta))

    def update(grad: Tensor, state: RNNpropState, theta: Tensor, step: int):
        m = beta1 * state.m + (1 - beta1) * grad
        v = beta2 * state.v + (1 - beta2) * grad * grad
        scale = torch.rsqrt(v / (1 - beta2 ** (step + 1)) + eps)
        features = torch.stack([m / (1 - beta1 ** (step + 1)) * scale, grad * scale], dim=-1)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            out, carry = rule(grad, features, state.carry)
        return -out, RNNpropState(m, v, carry)

    return Transform(init, update)


def sl2o(rule: Rule, subspace: Subspace | LoRASpace | None = None, **kwargs) -> Transform:
    """SL2O: :func:`rnnprop` (``kwargs`` are its options) on the coordinates of ``subspace`` (a DLDR /
    random :class:`~l2o_lib.subspace.Subspace` or LoRA coordinates); plain L2O when ``None``."""
    inner = rnnprop(rule, **kwargs)
    if subspace is None:
        return inner
    return lora_dagger(inner, subspace) if isinstance(subspace, LoRASpace) else dagger(inner, subspace)


class SL2O(FlatOptimizer):
    """The learned optimizer as a ``torch.optim.Optimizer`` over an ordinary model.

    Args:
        params: the model's parameters, in the order the subspace was built on (a single group).
        rule: the trained :class:`LSTMRule`.
        subspace: the subspace the rule acts in; ``None`` = every parameter (plain L2O).
        betas, eps, fused: as in :func:`rnnprop`.
    """

    def __init__(self, params, rule: Rule, subspace: Subspace | None = None, *,
                 betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8, fused: bool = False):
        def factory(betas: tuple = tuple(betas), eps: float = eps) -> Transform:
            return sl2o(rule, subspace, betas=betas, eps=eps, fused=fused)

        super().__init__(params, factory)
        if len(self.param_groups) != 1:
            raise ValueError("SL2O acts on one flat vector: pass a single parameter group")
        n = sum(p.numel() for p in self.param_groups[0]["params"])
        want = n if subspace is None else subspace.ambient_dim
        if n != want:
            raise ValueError(f"params have {n} entries but the subspace lives in {want} dimensions")


# ----------------------------------------------------------------------------- meta-training
@dataclass
class Problem:
    """One task family: a model, the subspace its optimizer acts in, and training data.

    Tasks of the family differ by the order of their batches (the paper samples tasks this way)
    and start at ``theta0`` (the subspace origin when a subspace is given).

    Args:
        model: the flat view of the network.
        train: ``(x, y)`` training tensors on the device.
        batch_size: inner mini-batch size (paper: 128).
        space: a :class:`~l2o_lib.subspace.Subspace`, LoRA coordinates
            (:class:`~l2o_lib.lora.LoRASpace`, for transformers) or ``None`` (all parameters).
        theta0: starting parameters (default: the space's origin, else the module's weights);
            LoRA coordinates always start at the space's own initial ``(A, B)``.
        test: ``(x, y)`` used to pick the best meta-training epoch.
    """

    model: FlatModel
    train: tuple[Tensor, Tensor]
    batch_size: int = 128
    space: Subspace | LoRASpace | None = None
    theta0: Tensor | None = None
    test: tuple[Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, FlatModel):
            raise ValueError(f"model must be a FlatModel, got {type(self.model).__name__}")
        check_int("batch_size", self.batch_size)
        # Shapes, dtypes and devices only: a mismatch would otherwise surface deep in meta-training.
        self.model.check_batch(self.train, name="train")
        if len(self.train[0]) == 0:
            raise ValueError("train must hold at least one example")
        if self.test is not None:
            self.model.check_batch(self.test, name="test")
        if self.theta0 is None:
            self.theta0 = self.space.origin if self.space is not None else self.model.flatten()
        self.model.check_theta(self.theta0, name="theta0")
        if self.space is not None and self.space.ambient_dim != self.model.dim:
            raise ValueError(f"space lives in {self.space.ambient_dim} dimensions, the model has {self.model.dim}")

    @property
    def dim(self) -> int:
        """Number of coordinates the learned optimizer acts on."""
        return self.model.dim if self.space is None else self.space.dim

    def start(self, k: int = 1) -> Tensor:
        """Starting coordinates of ``k`` tasks: ``(k, dim)``."""
        if self.space is None:
            z0 = self.theta0
        elif isinstance(self.space, LoRASpace):
            z0 = self.space.init()
        else:
            z0 = self.space.project(self.theta0)
        return z0.expand(k, -1).clone()

    def lift(self, z: Tensor) -> Tensor:
        """Parameters of coordinates ``z``: ``(dim,)`` → ``(D,)``, ``(k, dim)`` → ``(k, D)``."""
        if self.space is None:
            return z
        if isinstance(self.space, LoRASpace):
            return self.space.lift(z) if z.dim() == 1 else torch.stack([self.space.lift(row) for row in z])
        return self.space.lift(z)

    def batches(self, generator: torch.Generator, k: int) -> tuple[Tensor, Tensor]:
        """``k`` independent mini-batches, stacked: ``(k, batch, ...)``."""
        x, y = self.train
        idx = torch.randint(len(x), (k, self.batch_size), generator=generator, device=generator.device)
        return x[idx], y[idx]

    def losses(self, z: Tensor, batches: tuple[Tensor, Tensor]) -> Tensor:
        """Training loss of each of the ``k`` tasks at coordinates ``z`` ``(k, dim)``: shape ``(k,)``.

        One task runs the module directly (BatchNorm in train mode, running statistics left
        alone); several run in one ``vmap`` call, which needs a model without BatchNorm.
        """
        thetas = self.lift(z)
        x, y = batches
        if len(z) == 1:
            return self.model.loss(thetas[0], (x[0], y[0]), train=True)[None]
        return vmap(lambda theta, xb, yb: self.model.loss(theta, (xb, yb), train=True))(thetas, x, y)

    def loss_and_grad(self, z: Tensor, batches: tuple[Tensor, Tensor], *,
                      create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """The summed training loss of the ``k`` tasks at ``z`` and its gradient ``(k, dim)``.

        ``create_graph=False`` (first-order meta-training) returns constants; then one task in a
        linear subspace (or on every parameter) takes :meth:`FlatModel.loss_and_grad` at ``lift(z)``
        and the chain rule ``P g``: the module's own autograd, as fast as a ``torch.optim`` step.
        ``create_graph=True`` keeps the graph through ``z`` and the gradient (second order).
        """
        if not create_graph and len(z) == 1 and not isinstance(self.space, LoRASpace):
            x, y = batches
            loss, g = self.model.loss_and_grad(self.lift(z.detach()[0]), (x[0], y[0]), train=True)
            return loss, (g if self.space is None else self.space.project_grad(g))[None]
        with torch.enable_grad():
            leaf = z if create_graph and z.requires_grad else z.detach().requires_grad_(True)
            loss = self.losses(leaf, batches).sum()
            (g,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
        return (loss if create_graph else loss.detach()), g


@dataclass
class MetaHistory:
    """What :func:`meta_train` did: meta-loss per meta-step, test loss per epoch, guard events."""

    meta_loss: list[float] = field(default_factory=list)
    epoch_test_loss: list[float] = field(default_factory=list)
    epoch_test_accuracy: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    events: list[GuardEvent] = field(default_factory=list)
    seconds: float = 0.0
    inner_steps: int = 0

    def as_dict(self) -> dict:
        """Plain types, for ``Run.save_result`` and checkpoints."""
        return {"meta_loss": self.meta_loss, "epoch_test_loss": self.epoch_test_loss,
                "epoch_test_accuracy": self.epoch_test_accuracy, "best_epoch": self.best_epoch,
                "events": [vars(e) for e in self.events], "seconds": self.seconds, "inner_steps": self.inner_steps}

    @classmethod
    def from_dict(cls, d: dict) -> "MetaHistory":
        """Inverse of :meth:`as_dict`."""
        events = [GuardEvent(**e) for e in d.get("events", [])]
        return cls(list(d["meta_loss"]), list(d["epoch_test_loss"]), list(d["epoch_test_accuracy"]),
                   d["best_epoch"], events, d["seconds"], d["inner_steps"])


def _run_task(problem: Problem, transform: Transform, generator: torch.Generator, *, steps: int, unroll: int,
              tasks: int, first_order: bool, on_unroll: Callable[[Tensor, Tensor | None], bool]) -> Tensor:
    """Run one task of ``steps`` inner steps with truncation every ``unroll`` steps.

    At the end of every unroll ``on_unroll(meta_loss, objective)`` gets the unroll's summed
    training losses (per task) and the differentiable objective whose gradient is the
    meta-gradient (``None`` when nothing depends on the weights); it returns ``False`` to restart
    the task from scratch (after a rolled-back meta-step). Returns the final coordinates.
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


def _rank(test_loss: float) -> float:
    """A test loss for choosing the best epoch: NaN / inf (a diverged task) ranks last."""
    return test_loss if math.isfinite(test_loss) else math.inf


def _descend(optimizer: torch.optim.Optimizer) -> Callable[[Tensor, Tensor | None], bool]:
    """An ``on_unroll`` for :func:`_run_task`: one ``optimizer`` step on every unroll's meta-gradient,
    with no guard and no bookkeeping (what the benchmarks time; :func:`meta_train` adds both)."""
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
    _run_task(problem, rnnprop(rule, betas=betas, eps=eps, differentiable=True), generator, steps=steps,
              unroll=steps, tasks=tasks, first_order=first_order, on_unroll=on_unroll)
    return out["loss"], out["grads"]


def meta_train(rule: LSTMRule, problem: Problem, *, epochs: int = 20, steps_per_task: int = 1000,
               unroll: int = 10, meta_lr: float = 0.01, tasks_per_step: int = 1, first_order: bool = True,
               betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8, seed: int = 0, run=None,
               explode: float = 1e3, patience: int = 10, fused: bool = False,
               desc: str = "meta-train SL2O") -> MetaHistory:
    """Meta-train ``rule`` in place by truncated back-propagation through time (Algorithm 1).

    Every epoch is one task: ``steps_per_task`` inner steps from ``problem.start()`` with a fresh
    batch order; every ``unroll`` steps, Adam (``meta_lr``) takes a step on the summed training
    losses of the unroll, and the unroll is truncated. After each epoch the final parameters are
    scored on ``problem.test`` and the weights of the best epoch are kept (the paper selects the
    optimizer by its test performance); at the end they are loaded into ``rule``.

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
        fused: step the rule through :func:`~l2o_lib.fused.fused_rnnprop` (compiled on CUDA).
    """
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
    if unroll > steps_per_task:
        raise ValueError(f"unroll={unroll} must be <= steps_per_task={steps_per_task}")
    check_finite_data("problem.train[0] (the training inputs)", problem.train[0])
    if problem.test is not None:
        check_finite_data("problem.test[0] (the test inputs)", problem.test[0])
    device = problem.theta0.device
    rule.to(device)
    optimizer = torch.optim.Adam(rule.parameters(), lr=meta_lr)
    guard = DivergenceGuard(rule, optimizer, explode=explode, patience=patience)
    history, start, best = MetaHistory(), 0, None
    if run is not None:
        latest = run.latest_checkpoint(map_location=device)
        if latest is not None:
            start, state = latest
            check_meta_kind(state, "sl2o")  # another trainer's checkpoint: say so before anything else
            check_not_past("epochs", epochs, start)
            extra = load_meta_state(state, rule, optimizer, kind="sl2o")
            history, best = MetaHistory.from_dict(extra["history"]), extra["best"]
            guard.commit()
            # The explosion test compares with the first accepted meta-loss: without it a resumed
            # run would take its first unroll as the reference and accept what the run refused.
            guard.reference = extra.get("reference")
    bar = progress(range(start, epochs), total=epochs, initial=start, desc=desc)
    clock = time.perf_counter() - history.seconds

    prior_events = list(history.events)

    last = {"ok": True}

    def on_unroll(value: Tensor, objective: Tensor | None) -> bool:
        optimizer.zero_grad(set_to_none=True)
        if objective is not None:
            objective.backward()
        last["ok"] = guard.step(len(history.meta_loss), value)
        history.meta_loss.append(float(value))
        bar.set_postfix(meta_loss=f"{history.meta_loss[-1]:.4g}", refresh=False)
        return last["ok"]

    transform = rnnprop(rule, betas=betas, eps=eps, differentiable=True, fused=fused)
    for epoch in bar:
        generator = torch.Generator(device=device).manual_seed(seed + epoch)
        z = _run_task(problem, transform, generator, steps=steps_per_task, unroll=unroll, tasks=tasks_per_step,
                      first_order=first_order, on_unroll=on_unroll)
        history.inner_steps += steps_per_task * tasks_per_step
        if problem.test is not None:
            if not last["ok"]:
                # The last unroll was refused: the task restarted and z is its untrained start. Score
                # what the epoch ended with, the rolled-back rule, on the epoch's task from the start.
                z = _run_task(problem, rnnprop(rule, betas=betas, eps=eps, fused=fused),
                              torch.Generator(device=device).manual_seed(seed + epoch), steps=steps_per_task,
                              unroll=steps_per_task, tasks=tasks_per_step, first_order=True,
                              on_unroll=lambda value, objective: True)
            scores = problem.model.evaluate(problem.lift(z[0]), *problem.test)
            loss = float(scores["loss"])
            history.epoch_test_loss.append(loss)
            history.epoch_test_accuracy.append(float(scores["accuracy"]))
            if best is None or _rank(loss) < _rank(best["loss"]):
                best = {"loss": loss, "epoch": epoch, "weights": {k: v.clone() for k, v in rule.state_dict().items()}}
        history.events = prior_events + guard.events
        history.seconds = time.perf_counter() - clock
        if run is not None:
            run.save_checkpoint(meta_state(rule, optimizer, kind="sl2o", history=history.as_dict(), best=best,
                                           reference=guard.reference), epoch + 1)
    if best is not None:
        rule.load_state_dict(best["weights"])
        history.best_epoch = best["epoch"]
    return history


class Trained(NamedTuple):
    """A meta-trained SL2O optimizer and the subspace it was trained in (``None``: plain L2O)."""

    rule: LSTMRule
    space: Subspace | None


def save_trained(path: str | os.PathLike, rule: LSTMRule, space: Subspace | None = None) -> Path:
    """Write the rule (configuration and weights) and its subspace atomically to ``path``."""
    if not isinstance(rule, LSTMRule):
        raise ValueError(f"rule must be an LSTMRule, got {type(rule).__name__}")
    config = {"hidden": rule.hidden, "layers": rule.layers, "scale": rule.scale, "input_size": rule.input_size}
    blob = {"config": config, "weights": rule.state_dict()}
    if space is not None:
        blob["space"] = {"origin": space.origin, "basis": space.basis,
                         "explained_variance_ratio": space.explained_variance_ratio,
                         "singular_values": space.singular_values}
    return atomic_torch_save(path, blob)


def trained_path(profile: str, root: str | os.PathLike = "runs") -> Path:
    """Where notebook 03 keeps the optimizer meta-trained under ``profile``."""
    return artifact_path(profile, "03_sl2o", "sl2o.pt", root)


def load_trained(profile_or_path: str | os.PathLike, *, root: str | os.PathLike = "runs",
                 map_location="cpu") -> Trained | None:
    """The optimizer saved by notebook 03 under a profile (``"ci"``, ``"quick"``, ``"paper"``) or at a
    path; ``None`` when there is none yet (run notebook 03 first). A damaged file raises
    :class:`~l2o_lib.results.CorruptFileError` (a ``ValueError``) naming it."""
    path = find_artifact(profile_or_path, "03_sl2o", "sl2o.pt", root)
    if path is None:
        return None
    blob = load_torch_file(path, map_location=map_location,
                           fix="rerun notebook 03_sl2o to write it again, or delete it")
    rule = LSTMRule(**blob["config"])
    rule.load_state_dict(blob["weights"])
    space = Subspace(**blob["space"]) if "space" in blob else None
    return Trained(rule, space)
