"""Many training runs of one architecture as one program: seeds × hyper-parameter grids × methods.

Comparing learning-rate schedules fairly needs every baseline tuned over a grid and repeated
over seeds: dozens of short runs of a small model. On a CPU such a run is dominated by per-op
overhead, so :func:`train_population` stacks the runs' flat parameters into ``(K, D)`` and takes
one ``vmap``-ed gradient for all of them per step (an MLP on MNIST-1D: about a third of the time
of ``K`` separate runs). Each run still draws its own mini-batches and keeps its own optimizer
state through a :class:`Rule`; :func:`transform_rule` lifts any pure transform of
:mod:`l2o_lib.optim` (they are elementwise, so ``(K, D)`` works as is), :func:`schedule_table`
turns ``K`` LR schedules into one device table, and :func:`mixed_rule` joins blocks of runs that
follow different rules. Models with BatchNorm buffers (and any model with ``vectorize=False``)
run the same loop with one gradient call per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.func import grad_and_value, vmap

from .config import check_int, check_seed, check_seeds
from .data import ArrayData, BatchSampler
from .finite import LR_HINT, NonFiniteError, check_finite_data, check_on_nonfinite, divergence_step
from .functional import FlatModel
from .optim.base import Transform
from .optim.schedules import schedule_values
from .training import evaluate_splits, progress, stack_evals

__all__ = ["Rule", "transform_rule", "schedule_table", "mixed_rule", "PopulationHistory", "evaluate_members",
           "train_population"]


class Rule(NamedTuple):
    """An update rule for a population of ``K`` runs: ``init(thetas) -> state`` and
    ``update(grads, losses, state, thetas, step) -> (deltas, state, lrs)``; ``thetas`` and
    ``grads`` are ``(K, D)``, ``losses`` and ``lrs`` ``(K,)`` (``lrs`` is what gets recorded)."""

    init: Callable[[Tensor], Any]
    update: Callable[[Tensor, Tensor, Any, Tensor, int], tuple[Tensor, Any, Tensor]]


def transform_rule(transform: Transform, lr_table: Tensor | None = None) -> Rule:
    """A population rule from a pure transform applied to all ``(K, D)`` rows at once.

    The recorded LR is ``lr_table[step]`` (``(steps, K)``, see :func:`schedule_table`), else the
    state's own ``lr`` field when it has one (hypergradient descent), else NaN.
    """
    if not isinstance(transform, Transform):
        raise ValueError(f"transform must be a Transform, got {type(transform).__name__}")
    if lr_table is not None and (not isinstance(lr_table, Tensor) or lr_table.dim() != 2):
        raise ValueError("lr_table must be a (steps, K) tensor or None")

    def update(grads, losses, state, thetas, step):
        delta, state = transform.update(grads, state, thetas, step)
        if lr_table is not None:
            lrs = lr_table[step]
        elif isinstance(getattr(state, "lr", None), Tensor):
            lrs = state.lr.reshape(losses.shape)
        else:
            lrs = torch.full_like(losses, float("nan"))
        return delta, state, lrs

    return Rule(transform.init, update)


def schedule_table(schedules: Sequence[Callable[[int], float]], steps: int, *, device=None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """``(steps, K)`` LRs of ``K`` schedules, computed once on the host and moved once, so a loop
    indexes a device tensor instead of building one per step. Use ``lr=lambda t: table[t, :, None]``
    to hand the column to a transform."""
    check_int("steps", steps)
    if not schedules or not all(callable(s) for s in schedules):
        raise ValueError("schedules must be a non-empty list of callables step -> lr")
    columns = [schedule_values(s, steps, name=f"schedules[{i}]") for i, s in enumerate(schedules)]
    return torch.tensor(columns, dtype=dtype, device=device).T.contiguous()


def mixed_rule(parts: Sequence[tuple[int, Rule]]) -> Rule:
    """One rule over a population made of consecutive blocks ``parts = [(size, rule), ...]``
    (e.g. every baseline configuration and MLR-SNet, several seeds each, trained together)."""
    parts = list(parts)
    if not parts:
        raise ValueError("parts must not be empty")
    for size, rule in parts:
        check_int("parts[i][0]", size)
        if not isinstance(rule, Rule):
            raise ValueError(f"parts must hold (size, Rule) pairs, got {type(rule).__name__}")
    sizes = [s for s, _ in parts]

    def init(thetas):
        if thetas.shape[0] != sum(sizes):
            raise ValueError(f"the population has {thetas.shape[0]} runs but parts sum to {sum(sizes)}")
        return [rule.init(t) for (_, rule), t in zip(parts, thetas.split(sizes))]

    def update(grads, losses, state, thetas, step):
        out = [rule.update(g, l, s, t, step) for (_, rule), g, l, s, t in
               zip(parts, grads.split(sizes), losses.split(sizes), state, thetas.split(sizes))]
        return torch.cat([o[0] for o in out]), [o[1] for o in out], torch.cat([o[2] for o in out])

    return Rule(init, update)


@dataclass
class PopulationHistory:
    """What :func:`train_population` returns, one row per run.

    Attributes:
        train_loss, lr: ``(K, steps)`` mini-batch losses and the LRs the rule reported.
        eval_steps: ``(E,)``; test_loss, test_accuracy: ``(K, E)``.
        seconds: wall time of the loop; thetas: the final ``(K, D)`` parameters.
        extra: ``buffers`` (BatchNorm state per run, or ``None``) and ``nonfinite_step``: per run,
            the 0-based step where its loss first went NaN / inf, ``None`` for a run that stayed finite.
        val_loss, val_accuracy: ``(K, E)`` on the validation split (``(K, 0)`` without ``val_data``).
    """

    train_loss: np.ndarray
    lr: np.ndarray
    eval_steps: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    seconds: float
    thetas: Tensor
    extra: dict = field(default_factory=dict)
    val_loss: np.ndarray | None = None
    val_accuracy: np.ndarray | None = None

    @property
    def final_accuracy(self) -> np.ndarray:
        """``(K,)`` test accuracy at the end."""
        return self.test_accuracy[:, -1]


def evaluate_members(model: FlatModel, thetas: Tensor, x: Tensor, y: Tensor,
                     buffers: Sequence[dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
    """Loss and accuracy of every row of ``thetas`` on ``(x, y)``, as ``(K,)`` device tensors: one
    batched call, or one member at a time with its own BatchNorm ``buffers`` when given."""
    if buffers:
        rows = [model.evaluate(theta, x, y, b) for theta, b in zip(thetas, buffers)]
        return {key: torch.stack([r[key] for r in rows]) for key in ("loss", "accuracy")}
    return model.batched_evaluate(thetas, x, y)


def _check_population_args(model, data, rule, thetas, *, steps, batch_size, seed, splits, eval_every, augment,
                           on_nonfinite, member_seeds) -> list[int] | None:
    """:func:`train_population`'s arguments, refused before any work (one finiteness check each of the
    training inputs and the starts); returns ``member_seeds`` as a list (or ``None``)."""
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    if not isinstance(rule, Rule):
        raise ValueError(f"rule must be a Rule, got {type(rule).__name__}")
    if not isinstance(data, ArrayData):
        raise ValueError(f"data must be an ArrayData, got {type(data).__name__}")
    model.check_theta(thetas, batched=True, name="thetas")
    model.check_data(data.x, data.y, name="data")
    for name, split in splits.items():
        if split is not None:
            model.check_batch(split, name=name)
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if batch_size > len(data):
        raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} training examples")
    check_seed("seed", seed)
    check_int("eval_every", eval_every)
    if augment is not None and not callable(augment):
        raise ValueError(f"augment must be callable or None, got {augment!r}")
    check_on_nonfinite(on_nonfinite)
    check_finite_data("data.x (the training inputs)", data.x)
    check_finite_data("thetas", thetas)
    if member_seeds is None:
        return None
    member_seeds = check_seeds("member_seeds", member_seeds)
    if len(member_seeds) != thetas.shape[0]:
        raise ValueError(f"member_seeds has {len(member_seeds)} seeds for {thetas.shape[0]} runs; give one per row "
                         f"of thetas")
    return member_seeds


def train_population(model: FlatModel, data: ArrayData, rule: Rule, *, thetas: Tensor, steps: int,
                     batch_size: int = 128, seed: int = 0, eval_data: tuple[Tensor, Tensor] | None = None,
                     eval_every: int = 100, vectorize: bool | None = None,
                     augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
                     desc: str | None = None, on_nonfinite: str = "raise",
                     val_data: tuple[Tensor, Tensor] | None = None,
                     member_seeds: Sequence[int] | None = None) -> PopulationHistory:
    """Train ``K`` runs of one architecture together; nothing syncs with the host in the loop.

    Args:
        model: the flat view of the architecture.
        data: the training split (on the device of ``thetas``).
        rule: the update rule (:func:`transform_rule`, :func:`mixed_rule`, MLR-SNet's rule).
        thetas: ``(K, D)`` starting parameters (e.g. one initialisation per seed).
        steps, batch_size: loop length and mini-batch size of every run.
        seed: seeds the mini-batch indices (each run draws its own).
        member_seeds: ``K`` seeds instead of ``seed``: run ``i`` then draws exactly the batches (and
            augmentations) of ``BatchSampler(data, batch_size, seed=member_seeds[i]).sample()``, as
            one :func:`~l2o_lib.training.train_flat` run with that seed would (runs sharing a seed
            share their batches).
        eval_data, eval_every: test split evaluated at step 0, every ``eval_every`` and at the end.
        val_data: a validation split evaluated alongside (``val_loss`` / ``val_accuracy``).
        vectorize: one vmapped gradient for all runs (default: when ``K > 1`` and the model has no
            buffers); ``False`` loops over runs, each with its own BatchNorm buffers (convolutions
            under vmap are slower than a loop on the CPU, so pass ``False`` for them there).
        augment: ``augment(x, generator)`` applied to every run's batch (e.g. random crops).
        desc: progress-bar label.
        on_nonfinite: ``"raise"``: a run whose weights end NaN / inf raises
            :class:`~l2o_lib.finite.NonFiniteError` naming the run and the step its loss first went
            non-finite; ``"record"``: keep it, with that step in ``extra["nonfinite_step"]`` (LR
            grids, where a diverging setting is a result).
    """
    member_seeds = _check_population_args(model, data, rule, thetas, steps=steps, batch_size=batch_size, seed=seed,
                                          splits={"eval_data": eval_data, "val_data": val_data},
                                          eval_every=eval_every, augment=augment, on_nonfinite=on_nonfinite,
                                          member_seeds=member_seeds)
    k, device = thetas.shape[0], thetas.device
    if vectorize is None:
        vectorize = k > 1 and not model.buffer_names
    elif vectorize and model.buffer_names:
        raise ValueError("vectorize=True needs a model without buffers (BatchNorm); pass vectorize=False")
    draw = _batch_draw(data, k, batch_size, seed, member_seeds, augment)
    buffers = [model.init_buffers() for _ in range(k)]

    grad_fn = vmap(grad_and_value(lambda theta, x, y: model.loss(theta, (x, y), train=True)))
    losses = torch.empty(k, steps, device=device)
    lrs = torch.empty(k, steps, device=device)
    evals: list[tuple[int, dict]] = []

    def evaluate(step: int) -> None:
        if eval_data is not None or val_data is not None:
            member_buffers = buffers if model.buffer_names else None
            evals.append((step, evaluate_splits(lambda x, y: evaluate_members(model, thetas, x, y, member_buffers),
                                                eval_data, val_data)))

    thetas = thetas.detach().clone()
    state = rule.init(thetas)
    clock = time.perf_counter()
    evaluate(0)
    for step in progress(range(steps), desc=desc):
        x, y = draw()
        if vectorize:
            grads, loss = grad_fn(thetas, x, y)
        else:
            pairs = [model.loss_and_grad(thetas[i], (x[i], y[i]), buffers[i]) for i in range(k)]
            loss = torch.stack([p[0] for p in pairs])
            grads = torch.stack([p[1] for p in pairs])
        delta, state, lr = rule.update(grads, loss.detach(), state, thetas, step)
        thetas = thetas + delta
        losses[:, step], lrs[:, step] = loss.detach(), lr
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1)
    train_loss, train_lr = losses.cpu().numpy(), lrs.cpu().numpy()  # on a GPU: waits for the queued steps
    seconds = time.perf_counter() - clock
    diverged = _settle_members(train_loss, thetas, on_nonfinite)
    eval_steps, values = stack_evals(evals, rows=k)
    return PopulationHistory(train_loss, train_lr, eval_steps, values["loss"], values["accuracy"], seconds,
                             thetas, extra={"buffers": buffers if model.buffer_names else None,
                                            "nonfinite_step": diverged},
                             val_loss=values["val_loss"], val_accuracy=values["val_accuracy"])


def _settle_members(train_loss: np.ndarray, thetas: Tensor, on_nonfinite: str) -> list[int | None]:
    """Per run, the step its loss first went NaN / inf (``None`` if never); with ``on_nonfinite="raise"``
    a run that ended with non-finite weights raises :class:`~l2o_lib.finite.NonFiniteError` naming it."""
    k, steps = train_loss.shape
    finite = torch.isfinite(thetas).all(1).tolist()
    diverged = [divergence_step(train_loss[i], finite[i]) for i in range(k)]
    if on_nonfinite == "raise" and not all(finite):
        run = finite.index(False)
        raise NonFiniteError(
            f"population training diverged: run {run} (of {k}) ended with non-finite weights, its training loss "
            f"first non-finite at step {diverged[run]} (0-based, of {steps}); {sum(not f for f in finite)} run(s) "
            f"diverged in all; {LR_HINT}; or pass on_nonfinite='record' to keep diverged runs (LR grids)",
            diverged[run])
    return diverged


def _batch_draw(data: ArrayData, k: int, batch_size: int, seed: int, member_seeds: list[int] | None,
                augment: Callable | None) -> Callable[[], tuple[Tensor, Tensor]]:
    """``draw() -> (x, y)`` of shape ``(K, batch_size, ...)``: one generator for all runs (``seed``),
    or one :class:`~l2o_lib.data.BatchSampler` per run (``member_seeds``), so that run ``i`` sees the
    batches of a single run with its seed."""
    if member_seeds is not None:
        # One sampler per distinct seed: runs sharing a seed share its batches, drawn once and indexed.
        unique = list(dict.fromkeys(member_seeds))
        samplers = [BatchSampler(data, batch_size, seed=s, augment=augment) for s in unique]
        rows = torch.tensor([unique.index(s) for s in member_seeds], device=data.x.device)

        def draw_each() -> tuple[Tensor, Tensor]:
            pairs = [sampler.sample() for sampler in samplers]
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            return (x, y) if len(unique) == len(member_seeds) else (x[rows], y[rows])

        return draw_each
    generator = torch.Generator(device=data.x.device).manual_seed(seed)

    def draw_shared() -> tuple[Tensor, Tensor]:
        index = torch.randint(len(data), (k, batch_size), generator=generator, device=data.x.device)
        x, y = data.x[index], data.y[index]
        if augment is not None:
            x = augment(x.flatten(0, 1), generator).view(x.shape)
        return x, y

    return draw_shared
