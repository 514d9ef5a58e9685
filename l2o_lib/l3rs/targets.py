"""Speed-up as a function of the target level and the mean curve of a metric over runs, for the
meta-test figures of notebook 05 (:func:`level_targets`, :func:`steps_by_level`,
:func:`metric_curve`).

:func:`~l2o_lib.l3rs.speedup_records` asks how much sooner L3RS reaches the best baseline's *final*
value. A ratio at one target hides where the gain is made: a method can be faster early and level
with the baseline at the end, or the other way round. Here the target moves from the baseline's
starting value towards its final one,

    target_q = start + q * (final - start),   q in (0, 1],

per task; :func:`steps_by_level` gives the steps to each level, which
:func:`l2o_lib.claims.speedup_by_seed` turns into the speed-up as in the notebook (runs that never reach
the target counted as the horizon, never dropped; ``claims`` sits a layer above this package)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..config import check_choice
from ..training import History
from .compare import _curve, steps_to

__all__ = ["level_targets", "steps_by_level", "metric_curve"]


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


def steps_by_level(histories: Mapping[str, Sequence[History]], *, methods: Mapping[Any, str], baseline: str,
                   metric: str = "loss", fractions: Sequence[float] = (0.25, 0.5, 0.75, 0.9, 1.0)) -> list[dict]:
    """The steps the baseline and each method seed need to reach several target levels, per task.

    Args:
        histories: ``{name: [History per task]}`` of :func:`~l2o_lib.l3rs.compare_methods` (the same
            tasks, in the same order, for every name; ``test_curve=True`` for ``"accuracy"``).
        methods: ``{seed key: method name}``, e.g. one L3RS per meta-training seed.
        baseline: the baseline's name; its curve on each task sets that task's targets
            (:func:`level_targets`).
        metric: ``"loss"`` (lower is better) or ``"accuracy"`` (higher is better).
        fractions: the levels ``q`` (in ``(0, 1]``; 1 is the baseline's final value, the notebook's
            main speed-up).

    Returns:
        one dict per level: ``fraction``, ``targets`` (per task), ``baseline`` (its step counts per
        task) and ``methods`` (``{seed key: step counts per task}``); ``None`` is a run that never
        reached the target, to count as the horizon, never to drop: pass ``methods`` and ``baseline``
        to :func:`l2o_lib.claims.speedup_by_seed` for the speed-up per seed and over seeds.
    """
    check_choice("metric", metric, ("loss", "accuracy"))
    if not methods:
        raise ValueError("methods must hold at least one method seed")
    missing = [n for n in (baseline, *methods.values()) if n not in histories]
    if missing:
        raise ValueError(f"histories lack method(s) {missing}")
    rows = []
    for q in _check_fractions(fractions):
        targets = level_targets(histories[baseline], metric, q)
        rows.append({"fraction": q, "targets": targets,
                     "baseline": [steps_to(h, metric, t) for h, t in zip(histories[baseline], targets)],
                     "methods": {key: [steps_to(h, metric, t) for h, t in zip(histories[name], targets)]
                                 for key, name in methods.items()}})
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
