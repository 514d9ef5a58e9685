"""Metrics shared by every method: SL2O's convergence step, accuracy, steps-to-target,
speed-up ratios and mean ± std tables over seeds.

All functions take plain sequences / arrays / tensors and return Python numbers or pandas
frames, so they are called once at the end of a run, never inside a training loop.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .config import check_choice, check_int, check_nonnegative, check_positive

__all__ = ["convergence_step", "convergence_steps", "steps_to_target", "speedup", "accuracy",
           "mean_std", "summary_table"]


def _as_array(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("losses must not be empty")
    return arr


def convergence_step(losses, *, best: float | None = None, window: int = 20, std_tol: float = 0.1,
                     gap_tol: float = 0.1) -> int | None:
    """SL2O's convergence step (Sec. 4 of the paper): the first ``t`` with

    ``std(L[t-window+1 .. t]) < std_tol``  and  ``L[t] < L* + gap_tol``,

    where ``L*`` (``best``) is the lowest loss reached by any of the runs being compared (this
    run's own minimum when ``None``). The standard deviation is the population one (ddof = 0).
    Returns ``None`` when the run never converges; non-finite losses never count as converged.
    """
    check_int("window", window)
    check_positive("std_tol", std_tol)
    check_nonnegative("gap_tol", gap_tol)
    L = _as_array(losses)
    if best is None:
        best = float(np.nanmin(L))
    if len(L) < window:
        return None
    windows = np.lib.stride_tricks.sliding_window_view(L, window)
    ok = (windows.std(axis=1) < std_tol) & (L[window - 1:] < best + gap_tol) & np.isfinite(windows).all(axis=1)
    hits = np.flatnonzero(ok)
    return int(hits[0] + window - 1) if hits.size else None


def convergence_steps(curves: Mapping[str, Iterable], **kwargs) -> dict[str, int | None]:
    """Convergence step of every curve, with ``L*`` the minimum over all of them (the paper's rule)."""
    arrays = {k: _as_array(v) for k, v in curves.items()}
    best = min(float(np.nanmin(a)) for a in arrays.values())
    return {k: convergence_step(a, best=best, **kwargs) for k, a in arrays.items()}


def steps_to_target(losses, target: float, *, smooth: int = 1, mode: str = "below") -> int | None:
    """First index at which the (moving-average ``smooth``) curve is ``<= target`` (``mode="below"``,
    for losses) or ``>= target`` (``mode="above"``, for accuracies); ``None`` if never."""
    check_int("smooth", smooth)
    check_choice("mode", mode, ("below", "above"))
    L = _as_array(losses)
    if smooth > 1:
        if len(L) < smooth:
            return None
        L = np.convolve(L, np.ones(smooth) / smooth, mode="valid")
        offset = smooth - 1
    else:
        offset = 0
    hits = np.flatnonzero(L <= target if mode == "below" else L >= target)
    return int(hits[0] + offset) if hits.size else None


def speedup(baseline_steps: float | None, method_steps: float | None) -> float:
    """``baseline / method`` (how many times fewer steps the method needs); ``nan`` when either is missing."""
    if baseline_steps is None or method_steps is None or method_steps <= 0:
        return math.nan
    return float(baseline_steps) / float(method_steps)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of rows whose arg-max equals the target."""
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits has {logits.shape[0]} rows but targets has {targets.shape[0]}")
    return (logits.argmax(-1) == targets).float().mean().item()


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof = 1; 0 for a single value) and count of the
    values that are not ``None`` / NaN."""
    arr = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))],
                     dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)


def summary_table(records: Iterable[Mapping], *, by: str | Sequence[str], metrics: Sequence[str],
                  digits: int = 2) -> pd.DataFrame:
    """Mean ± std over seeds as a table: one row per ``by`` group, one column per metric, plus
    ``n`` (runs in the group). Missing / ``None`` values (e.g. runs that never converged) are left
    out of the statistics; the cell then shows how many of the runs counted, as ``(k/n)``."""
    frame = pd.DataFrame(list(records))
    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*keys, *metrics] if c not in frame.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; they have {sorted(frame.columns)}")
    rows = []
    for group, part in frame.groupby(keys, sort=False):
        group = group if isinstance(group, tuple) else (group,)
        row = dict(zip(keys, group))
        row["n"] = len(part)
        for m in metrics:
            mean, std, k = mean_std([None if pd.isna(v) else v for v in part[m]])
            cell = "—" if k == 0 else f"{mean:.{digits}f} ± {std:.{digits}f}"
            row[m] = cell if k in (0, len(part)) else f"{cell} ({k}/{len(part)})"
        rows.append(row)
    return pd.DataFrame(rows)
