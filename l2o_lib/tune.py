"""One tuner and one selection rule.

:func:`tune` grid-searches the learning rate of every optimizer of ``factories`` on a
:class:`~l2o_lib.tasks.Task`, over seeds, and **selects on the task's validation split** (carved
from the training data by :func:`~l2o_lib.tasks.make_task` / :func:`~l2o_lib.tasks.split_validation`),
never on its test split: the runs it makes do not even carry the test split. All grid × seeds
members run as one vmapped program when the model allows (:func:`l2o_lib.runs.run_members`).

:func:`best_setting` is the selection rule every tuner of the library uses (this one, MLR-SNet's
:meth:`~l2o_lib.mlrsnet.Comparison.best` / ``top`` and L3RS's
:func:`~l2o_lib.l3rs.tune_baselines`): mean score over the records of a setting (over seeds or
tasks), a diverged run scores the worst value and makes its setting's mean the worst (it is kept and
counted, not dropped), and ties go to the setting met first (the grid's order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .config import check_choice, check_int, check_positive, check_seeds
from .optim.base import Transform
from .runs import run_members
from .tasks import Task
from .training import History

__all__ = ["CRITERIA", "TuneResult", "tune", "score_run", "mean_scores", "best_setting", "best_settings"]

# name -> (what it reads from a run's History, larger is better)
CRITERIA: dict[str, tuple[Callable[[History], float], bool]] = {
    # mean validation loss over the evaluations after step 0: rewards a fast descent and a low end
    # (the validation analogue of the mean training loss SL2O and L3RS are meta-trained on)
    "val_loss_mean": (lambda h: float(np.mean(h.val_loss[1:])), False),
    "val_loss": (lambda h: float(h.val_loss[-1]), False),          # final validation loss
    "val_accuracy": (lambda h: float(h.val_accuracy[-1]), True),   # final validation accuracy
}


def score_run(history: History, criterion: str = "val_loss_mean") -> float:
    """``criterion`` (a key of :data:`CRITERIA`) of one run; the worst value (``inf``, or ``-inf``
    for a criterion to maximise) for a run that diverged or has a non-finite score."""
    check_choice("criterion", criterion, CRITERIA)
    read, maximize = CRITERIA[criterion]
    if not len(history.val_loss):
        raise ValueError("the run has no validation evaluations: give its task a val split")
    worst = -math.inf if maximize else math.inf
    if "nonfinite_step" in history.extra:
        return worst
    value = read(history)
    return value if math.isfinite(value) else worst


def _key(record: Mapping, fields: str | Sequence[str]) -> Any:
    return record[fields] if isinstance(fields, str) else tuple(record[f] for f in fields)


def mean_scores(records: Sequence[Mapping], *, keys: str | Sequence[str], score: str = "score",
                maximize: bool = False, diverged: str = "diverged_at") -> list[dict]:
    """``score`` averaged over the records that share ``keys`` (one field or several), in the order
    the settings are first met: ``[{"key": ..., "score": mean, "n": runs, "diverged": runs}]``.

    A record whose ``score`` is ``None``, NaN or infinite, or whose ``diverged`` field is not
    ``None`` (the step a run went NaN / inf), counts as the worst value (``inf``; ``-inf`` when
    ``maximize``), so one diverged seed makes its setting the worst; it is counted in ``diverged``.
    """
    if not records:
        raise ValueError("records must not be empty")
    worst = -math.inf if maximize else math.inf
    groups: dict[Any, list[float]] = {}
    failed: dict[Any, int] = {}
    for r in records:
        value = r.get(score)
        bad = r.get(diverged) is not None or value is None or not math.isfinite(float(value))
        key = _key(r, keys)
        groups.setdefault(key, []).append(worst if bad else float(value))
        failed[key] = failed.get(key, 0) + bad
    return [{"key": key, "score": float(np.mean(values)), "n": len(values), "diverged": failed[key]}
            for key, values in groups.items()]


def best_setting(records: Sequence[Mapping], *, setting: str | Sequence[str], score: str = "score",
                 maximize: bool = False, diverged: str = "diverged_at") -> Any:
    """The selection rule: the value of ``setting`` (a field, or a tuple of fields) whose mean
    ``score`` over its records is lowest (highest when ``maximize``); diverged runs as in
    :func:`mean_scores`; ties, all-diverged included, go to the setting met first."""
    rows = mean_scores(records, keys=setting, score=score, maximize=maximize, diverged=diverged)
    sign = -1.0 if maximize else 1.0
    best = rows[0]
    for row in rows[1:]:
        if sign * row["score"] < sign * best["score"]:  # strict: an equal score keeps the earlier setting
            best = row
    return best["key"]


def best_settings(records: Sequence[Mapping], *, group: str, setting: str | Sequence[str], score: str = "score",
                  maximize: bool = False, diverged: str = "diverged_at") -> dict:
    """``{group value: best setting}``: :func:`best_setting` within each group (e.g. each method)."""
    groups: dict[Any, list[Mapping]] = {}
    for r in records:
        groups.setdefault(r[group], []).append(r)
    if not groups:
        raise ValueError("records must not be empty")
    return {g: best_setting(rs, setting=setting, score=score, maximize=maximize, diverged=diverged)
            for g, rs in groups.items()}


@dataclass
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        best: ``{name: lr}``, the chosen LR of each optimizer.
        table: one record per (name, lr): ``name``, ``lr``, ``score`` (mean over seeds), ``n`` (runs),
            ``diverged`` (runs that went NaN / inf; their setting scores the worst value).
        records: one record per run: ``name``, ``lr``, ``seed``, ``score``, ``diverged_at``.
        criterion: the key of :data:`CRITERIA` that was used.
    """

    best: dict
    table: list[dict]
    records: list[dict]
    criterion: str

    def scores(self, name: str) -> dict[float, float]:
        """``{lr: mean score}`` of optimizer ``name``."""
        if name not in self.best:
            raise ValueError(f"name={name!r} was not tuned; choose one of {sorted(self.best)}")
        return {r["lr"]: r["score"] for r in self.table if r["name"] == name}

    @property
    def diverged(self) -> int:
        """How many runs of the grid diverged."""
        return sum(r["diverged"] for r in self.table)


def _check_grid(grid, names: Sequence[str]) -> dict[str, list[float]]:
    """One LR list per name: ``grid`` is a list shared by every name or a ``{name: list}``."""
    grids = dict(grid) if isinstance(grid, Mapping) else {name: grid for name in names}
    if set(grids) != set(names):
        raise ValueError(f"grid must name exactly the factories {sorted(names)}, got {sorted(grids)}")
    for name, values in grids.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not list(values):
            raise ValueError(f"grid[{name!r}] must be a non-empty sequence of learning rates, got {values!r}")
        grids[name] = [float(check_positive(f"grid[{name!r}]", v)) for v in values]
    return grids


def tune(task: Task, factories: Mapping[str, Callable[[float], Transform]], grid, *, steps: int,
         seeds: Sequence[int] = (0,), criterion: str = "val_loss_mean", eval_every: int | None = None,
         vectorize: bool | None = None, desc: str | None = "tune") -> TuneResult:
    """Tune the LR of every optimizer of ``factories`` (``{name: lr -> Transform}``) on ``task``'s
    validation split, averaging ``criterion`` over ``seeds``.

    Args:
        task: a :class:`~l2o_lib.tasks.Task` with a ``val`` split; its test split is never read.
        factories: the optimizers, each ``factory(lr) -> Transform``.
        grid: the LRs tried: one sequence for every name, or ``{name: sequence}``.
        steps: length of each run; seeds: batch seeds, each setting runs once per seed.
        criterion: a key of :data:`CRITERIA`: ``"val_loss_mean"`` (mean validation loss over the
            run's evaluations after step 0), ``"val_loss"`` (final) or ``"val_accuracy"`` (final).
        eval_every: evaluation cadence (default ``steps // 10``, at least 1).
        vectorize: as in :func:`~l2o_lib.runs.run_members`: by default every grid × seeds member
            runs in one vmapped program when the model has no buffers, else one run at a time.

    A diverging setting is a result: its runs are kept (``diverged_at``), it scores the worst value
    and is counted in ``table``'s ``diverged``; ties go to the earlier LR of the grid.
    """
    if not isinstance(task, Task):
        raise ValueError(f"task must be a Task, got {type(task).__name__}")
    if task.val is None:
        raise ValueError("task has no validation split to tune on: build it with make_task(..., n_val=...) or "
                         "Task(..., val=...); tuning on the test split would report a tuned-on-test number")
    if not isinstance(factories, Mapping) or not factories or not all(callable(f) for f in factories.values()):
        raise ValueError("factories must be a non-empty {name: lr -> Transform} mapping")
    grids = _check_grid(grid, list(factories))
    check_int("steps", steps)
    seeds = check_seeds("seeds", seeds)
    check_choice("criterion", criterion, CRITERIA)
    eval_every = max(1, steps // 10) if eval_every is None else check_int("eval_every", eval_every)
    members = [(name, lr, seed) for name in factories for lr in grids[name] for seed in seeds]
    built = {(name, lr): factories[name](lr) for name in factories for lr in grids[name]}
    for (name, lr), tx in built.items():
        if not isinstance(tx, Transform):
            raise ValueError(f"factories[{name!r}]({lr:g}) must return a Transform, got {type(tx).__name__}")
    histories = run_members(task.without_test(), [built[name, lr] for name, lr, _ in members],
                            [seed for *_, seed in members], steps=steps, eval_every=eval_every,
                            vectorize=vectorize, on_nonfinite="record", desc=desc)
    records = [{"name": name, "lr": lr, "seed": seed, "score": score_run(h, criterion),
                "diverged_at": h.extra.get("nonfinite_step")} for (name, lr, seed), h in zip(members, histories)]
    maximize = CRITERIA[criterion][1]
    table = [{"name": row["key"][0], "lr": row["key"][1], "score": row["score"], "n": row["n"],
              "diverged": row["diverged"]} for row in mean_scores(records, keys=("name", "lr"), maximize=maximize)]
    best = best_settings(records, group="name", setting="lr", maximize=maximize)
    return TuneResult(best, table, records, criterion)
