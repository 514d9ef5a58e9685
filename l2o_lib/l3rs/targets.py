"""Speed-up as a function of the target level and the mean curve of a metric over runs, for the
meta-test figures of notebook 05 (:func:`level_targets`, :func:`speedup_by_level`,
:func:`metric_curve`).

:func:`~l2o_lib.l3rs.speedup_records` asks how much sooner L3RS reaches the best baseline's *final*
value. A ratio at one target hides where the gain is made: a method can be faster early and level
with the baseline at the end, or the other way round. Here the target moves from the baseline's
starting value towards its final one,

    target_q = start + q * (final - start),   q in (0, 1],

per task, and the speed-up at each level ``q`` is counted as in the notebook (runs that never reach
the target counted as the horizon, never dropped: :func:`l2o_lib.claims.speedup_by_seed`)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..config import check_choice, check_int
from ..training import History
from .compare import _curve

__all__ = ["level_targets", "speedup_by_level", "metric_curve"]


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    out = []
    for q in fractions:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
            raise ValueError(f"fractions must be numbers in (0, 1], got {q!r}")
        out.append(float(q))
    if not out:
        raise ValueError("fractions must not be empty")
    return out


def level_targets(baseline: Sequence[History], metric: str, fraction: float) -> list[float]:
    """Per run of the baseline: ``start + fraction * (final - start)`` of its evaluated ``metric``
    curve (``"loss"``: training loss, ``"accuracy"``: test accuracy, as
    :func:`~l2o_lib.l3rs.speedup_records` reads them). A run whose curve ended non-finite (diverged)
    takes its last finite value as ``final``."""
    check_choice("metric", metric, ("loss", "accuracy"))
    (q,) = _check_fractions([fraction])
    out = []
    for h in baseline:
        curve = _curve(h, metric)
        finite = curve[np.isfinite(curve)]
        start, final = (float(finite[0]), float(finite[-1])) if finite.size else (float("nan"),) * 2
        out.append(final + (1 - q) * (start - final))  # written from the end: q = 1 is the final value exactly
    return out


def _steps(h: History, metric: str, target: float) -> int | None:
    """The step of ``h``'s first evaluation at or past ``target`` (``None``: never)."""
    from ..metrics import steps_to_target

    hit = steps_to_target(_curve(h, metric), target, mode="below" if metric == "loss" else "above")
    return None if hit is None else int(h.eval_steps[hit])


def speedup_by_level(histories: Mapping[str, Sequence[History]], *, methods: Mapping[Any, str], baseline: str,
                     metric: str = "loss", fractions: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0),
                     horizon: int) -> list[dict]:
    """The speed-up of each method seed over ``baseline`` at several target levels.

    Args:
        histories: ``{name: [History per task]}`` of :func:`~l2o_lib.l3rs.compare_methods` (the same
            tasks, in the same order, for every name; ``test_curve=True`` for ``"accuracy"``).
        methods: ``{seed key: method name}``, e.g. one L3RS per meta-training seed.
        baseline: the baseline's name; its curve on each task sets that task's targets.
        metric: ``"loss"`` (lower is better) or ``"accuracy"`` (higher is better).
        fractions: the levels ``q`` (in ``(0, 1]``; 1 is the baseline's final value, the notebook's
            main speed-up).
        horizon: the run length, what a run that never reaches a target counts as.

    Returns:
        one dict per level: ``fraction``, ``mean`` / ``std`` / ``interval`` over the method seeds,
        ``ratios`` (per seed), ``bound`` (``"exact"``, ``"lower"``, ``"upper"``, ``"unknown"``: see
        :func:`l2o_lib.claims.speedup_by_seed`) and ``censored`` (runs of the methods that never
        reached the target, over all seeds and tasks).
    """
    from ..claims import speedup_by_seed

    check_choice("metric", metric, ("loss", "accuracy"))
    check_int("horizon", horizon)
    if not methods:
        raise ValueError("methods must hold at least one method seed")
    missing = [n for n in (baseline, *methods.values()) if n not in histories]
    if missing:
        raise ValueError(f"histories lack method(s) {missing}")
    rows = []
    for q in _check_fractions(fractions):
        targets = level_targets(histories[baseline], metric, q)
        base = [_steps(h, metric, t) for h, t in zip(histories[baseline], targets)]
        ours = {key: [_steps(h, metric, t) for h, t in zip(histories[name], targets)] for key, name in methods.items()}
        s = speedup_by_seed(ours, base, horizon=horizon)
        rows.append({"fraction": q, "mean": s["mean"], "std": s["std"], "interval": s["interval"],
                     "ratios": s["ratios"], "bound": s["bound"],
                     "censored": sum(v is None for steps in ours.values() for v in steps)})
    return rows


def metric_curve(histories: Sequence[History], metric: str) -> dict[str, np.ndarray]:
    """Mean and std over runs of the evaluated ``metric`` curve (``"loss"``: training loss,
    ``"accuracy"``: test accuracy), as ``{"x", "y", "y_std"}`` for :func:`l2o_lib.plots.curves`; the
    runs must share their evaluation steps."""
    check_choice("metric", metric, ("loss", "accuracy"))
    if not histories:
        raise ValueError("histories must not be empty")
    steps = np.asarray(histories[0].eval_steps)
    if any(not np.array_equal(np.asarray(h.eval_steps), steps) for h in histories):
        raise ValueError("the runs must share their evaluation steps (one run length and eval_every)")
    ys = np.stack([_curve(h, metric) for h in histories])
    return {"x": steps, "y": ys.mean(0), "y_std": ys.std(0)}
