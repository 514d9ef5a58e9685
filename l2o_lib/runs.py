"""One run engine: :func:`run` trains a :class:`~l2o_lib.tasks.Task` with a transform over seeds, and
:func:`run_members` trains any list of (transform, seed) members, e.g. every method × LR × seed of a
grid search.

Two paths, one result. Several members of a model without BatchNorm buffers run as **one vmapped
program** (:func:`~l2o_lib.population.train_population`: a ``(K, D)`` stack of parameters, one
batched gradient per step, consecutive members sharing a transform updated together through
:func:`~l2o_lib.population.transform_rule`); otherwise each member is its own
:func:`~l2o_lib.training.train_flat` run. Either way member ``i`` draws the batches of
``BatchSampler(task.train, task.batch_size, seed=seeds[i], augment=task.augment).sample()``, starts
at ``task.theta0``, is evaluated on the task's validation and test splits at step 0, every
``eval_every`` steps and at the end, and nothing syncs with the host inside the loop. The result is
one :class:`~l2o_lib.training.History` per member, in member order, whichever path ran (the vmapped
path agrees with the loop to float rounding; tested).
"""

from __future__ import annotations

from typing import Callable, Sequence

from .config import check_int, check_seeds
from .data import BatchSampler
from .finite import check_on_nonfinite
from .optim.base import Transform
from .population import mixed_rule, train_population, transform_rule
from .tasks import Task
from .training import History, train_flat

__all__ = ["run", "run_members"]

TransformLike = Transform | Callable[[], Transform]


def _make(transform: TransformLike, name: str) -> Transform:
    """A transform, or the one a zero-argument factory builds."""
    if isinstance(transform, Transform):
        return transform
    if callable(transform):
        built = transform()
        if isinstance(built, Transform):
            return built
        raise ValueError(f"{name} must build a Transform when called, got {type(built).__name__}")
    raise ValueError(f"{name} must be a Transform or a factory () -> Transform, got {type(transform).__name__}")


def run(task: Task, transform: TransformLike, *, steps: int, seeds: Sequence[int] = (0,), eval_every: int = 100,
        vectorize: bool | None = None, on_nonfinite: str = "raise", desc: str | None = None) -> list[History]:
    """Train ``task`` with ``transform`` (a Transform or a factory ``() -> Transform``) once per seed.

    Returns one :class:`~l2o_lib.training.History` per seed (a one-element list for ``seeds=(s,)``);
    see :func:`run_members` for the paths, ``vectorize`` and ``on_nonfinite``.
    """
    seeds = check_seeds("seeds", seeds)
    return run_members(task, [transform] * len(seeds), seeds, steps=steps, eval_every=eval_every,
                       vectorize=vectorize, on_nonfinite=on_nonfinite, desc=desc)


def run_members(task: Task, transforms: Sequence[TransformLike], seeds: Sequence[int], *, steps: int,
                eval_every: int = 100, vectorize: bool | None = None, on_nonfinite: str = "raise",
                desc: str | None = None) -> list[History]:
    """Train member ``i`` with ``transforms[i]`` on the batches of ``seeds[i]``; one History each.

    Args:
        task: model, splits, start and batch size.
        transforms: one Transform or factory ``() -> Transform`` per member (a factory is called
            once per member on the loop path and once per block of consecutive identical entries on
            the vmapped one; transforms are pure, so one instance serves many rows).
        seeds: one batch seed per member (members sharing a seed share their batches).
        steps, eval_every: loop length and evaluation cadence (the validation and test splits).
        vectorize: ``None``: one vmapped program when there are several members and the model has no
            buffers; ``True``: force it; ``False``: one :func:`~l2o_lib.training.train_flat` run per
            member (e.g. convolutions on a CPU, or a transform that cannot take ``(K, D)`` rows:
            LAMB, ``lora_dagger``, L3RS, P-BFGS).
        on_nonfinite: ``"raise"``: a member ending with NaN / inf weights raises
            :class:`~l2o_lib.finite.NonFiniteError`; ``"record"``: kept, with
            ``extra["nonfinite_step"]`` (grid searches).
        desc: progress-bar label.

    On the vmapped path ``History.seconds`` is the wall time of the whole program (shared by its
    members), ``theta`` a row of its final parameters and ``extra["lr"]`` the LRs the rule reported.
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    seeds = check_seeds("seeds", seeds)
    transforms = list(transforms)
    if len(transforms) != len(seeds):
        raise ValueError(f"transforms has {len(transforms)} entries for {len(seeds)} seeds; give one per member")
    check_int("steps", steps)
    check_int("eval_every", eval_every)
    check_on_nonfinite(on_nonfinite)
    if vectorize not in (None, True, False):
        raise ValueError(f"vectorize must be None, True or False, got {vectorize!r}")
    if vectorize is None:
        vectorize = len(seeds) > 1 and not task.model.buffer_names
    if vectorize:
        return _run_vmapped(task, transforms, seeds, steps=steps, eval_every=eval_every,
                            on_nonfinite=on_nonfinite, desc=desc)
    return [train_flat(task.model, _make(tx, f"transforms[{i}]"),
                       BatchSampler(task.train, task.batch_size, seed=seed, augment=task.augment),
                       steps=steps, theta=task.theta0, eval_data=task.split("test"), val_data=task.split("val"),
                       eval_every=eval_every, desc=desc, on_nonfinite=on_nonfinite)
            for i, (tx, seed) in enumerate(zip(transforms, seeds))]


def _run_vmapped(task: Task, transforms: list[TransformLike], seeds: list[int], *, steps: int, eval_every: int,
                 on_nonfinite: str, desc: str | None) -> list[History]:
    """All members as one :func:`~l2o_lib.population.train_population` program, split back into Histories."""
    parts: list[tuple[int, TransformLike]] = []
    for tx in transforms:  # consecutive identical entries: one block, one rule over its rows
        if parts and parts[-1][1] is tx:
            parts[-1] = (parts[-1][0] + 1, tx)
        else:
            parts.append((1, tx))
    rules = [(size, transform_rule(_make(tx, "transforms[i]"))) for size, tx in parts]
    rule = rules[0][1] if len(rules) == 1 else mixed_rule(rules)
    thetas = task.theta0.expand(len(seeds), -1).clone()
    hist = train_population(task.model, task.train, rule, thetas=thetas, steps=steps, batch_size=task.batch_size,
                            eval_data=task.split("test"), val_data=task.split("val"), eval_every=eval_every,
                            vectorize=True, augment=task.augment, desc=desc, on_nonfinite=on_nonfinite,
                            member_seeds=seeds)
    out = []
    for i, diverged in enumerate(hist.extra["nonfinite_step"]):
        extra = {"lr": hist.lr[i]} if diverged is None else {"lr": hist.lr[i], "nonfinite_step": diverged}
        out.append(History(hist.train_loss[i], hist.eval_steps, hist.test_loss[i], hist.test_accuracy[i],
                           hist.seconds, hist.thetas[i], extra=extra, val_loss=hist.val_loss[i],
                           val_accuracy=hist.val_accuracy[i]))
    return out
