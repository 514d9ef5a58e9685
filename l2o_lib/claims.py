"""A paper's claim next to what we measure: intervals over seeds, censored step counts, verdicts.

A headline number of this suite is never one run. Each method notebook measures a quantity once per
seed (a meta-training seed for a learned optimizer), and this module turns those per-seed values into
the row of a claims table:

* :func:`bootstrap_interval`: the percentile bootstrap interval of the mean over seeds (95 % by
  default), seeded so that a rerun prints the same interval;
* :func:`censored_summary`: step counts where some runs never reach the target. Such a run is not
  dropped (dropping it makes a slow optimizer look fast): it counts as the horizon, so the mean is a
  lower bound, and the number of censored runs is reported beside it;
* :func:`claim_row` and :func:`verdict`: one row with the paper's value and its source, ours under the
  paper's protocol and under our stronger one, the seeds, the interval and a verdict;
* :func:`save_claims` / :func:`collect_claims`: ``results/claims.json`` of a notebook's run directory,
  and every notebook's rows in one table (notebook 08, the README).

Everything here is plain numbers in, plain numbers out: called once at the end of a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .config import check_choice, check_int, check_seed
from .files import to_jsonable
from .metrics import mean_std, steps_to_target

if TYPE_CHECKING:  # pandas is imported where a table is built, not on import
    import pandas as pd

__all__ = ["bootstrap_interval", "mean_std_interval", "CensoredSummary", "censored_summary", "verdict",
           "direction_verdict", "claim_row", "CLAIM_FIELDS", "save_claims", "collect_claims",
           "format_estimate", "speedup_by_seed", "steps_table", "findings", "claims_frame", "time_to_target"]

#: The fields every row of ``claims.json`` has (issue 18), in table order.
CLAIM_FIELDS = ("claim", "source", "paper", "ours_paper_protocol", "ours_strong", "seeds", "interval", "verdict",
                "explanation")

VERDICTS = ("reproduced", "partly", "not reproduced")


def _finite_values(name: str, values: Sequence[float | None]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    if arr.size == 0:
        raise ValueError(f"{name} must hold at least one value")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds a missing or non-finite value ({arr.tolist()}): count a run that never "
                         "reaches its target with censored_summary instead of passing None / inf")
    return arr


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per seed).

    With one value the interval is that value twice: one seed says nothing about the spread, and the
    table shows ``seeds = 1`` beside it.
    """
    arr = _finite_values("values", values)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    check_int("resamples", resamples)
    check_seed("seed", seed)
    if arr.size == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(resamples, arr.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def mean_std_interval(values: Sequence[float], **kwargs) -> dict[str, Any]:
    """``{"mean", "std", "n", "interval": [low, high]}`` of per-seed values (std with ddof = 1, 0 for one
    value); keyword arguments go to :func:`bootstrap_interval`."""
    arr = _finite_values("values", values)
    mean, std, n = mean_std(arr.tolist())
    return {"mean": mean, "std": std, "n": n, "interval": list(bootstrap_interval(arr, **kwargs))}


@dataclass(frozen=True)
class CensoredSummary:
    """Step counts of runs of which ``censored`` never reached the target within ``horizon`` steps.

    ``mean`` counts each censored run as ``horizon`` (so it is a lower bound when ``censored > 0``);
    ``median`` is exact while fewer than half are censored, ``None`` otherwise."""

    n: int
    censored: int
    horizon: int
    mean: float
    median: float | None

    @property
    def lower_bound(self) -> bool:
        """Whether the mean is only a lower bound (some run never converged)."""
        return self.censored > 0

    def text(self, spec: str = ".1f") -> str:
        """``"62.8"``, or ``"≥ 412.0 (2 of 5 never converged in 800 steps)"``."""
        if not self.censored:
            return format(self.mean, spec)
        return f"≥ {self.mean:{spec}} ({self.censored} of {self.n} never converged in {self.horizon} steps)"


def censored_summary(steps: Sequence[int | None], *, horizon: int) -> CensoredSummary:
    """Summarise step counts where ``None`` marks a run that never reached its target by ``horizon``."""
    check_int("horizon", horizon)
    if len(steps) == 0:
        raise ValueError("steps must hold at least one run")
    values = []
    for i, s in enumerate(steps):
        if s is not None and not (isinstance(s, (int, np.integer)) and 0 <= s <= horizon):
            raise ValueError(f"steps[{i}]={s!r} must be an int in [0, horizon={horizon}] or None (never converged)")
        values.append(horizon if s is None else int(s))
    censored = sum(s is None for s in steps)
    arr = np.asarray(values, dtype=np.float64)
    median = float(np.median(arr)) if 2 * censored < len(arr) else None
    return CensoredSummary(len(arr), censored, horizon, float(arr.mean()), median)


def speedup_by_seed(method_steps: Mapping[Any, Sequence[int | None]], baseline_steps: Sequence[int | None], *,
                    horizon: int, **kwargs) -> dict[str, Any]:
    """``baseline / method`` step counts once per method seed (e.g. a meta-training seed), over seeds.

    ``method_steps`` maps each method seed to its runs' step counts (one per batch order), ``baseline_steps``
    holds the baseline's runs; ``None`` is a run that never converged within ``horizon`` steps
    (:func:`censored_summary`: counted as the horizon, never dropped). Returns the per-seed ``ratios``,
    their :func:`mean_std_interval` (keyword arguments go to :func:`bootstrap_interval`), the summaries of
    both sides and ``bound``: ``"exact"``, ``"lower"`` (only the baseline has censored runs, so its true
    mean and every ratio can only be larger), ``"upper"`` (only the method has) or ``"unknown"`` (both).
    """
    if not method_steps:
        raise ValueError("method_steps must hold at least one method seed")
    base = censored_summary(baseline_steps, horizon=horizon)
    methods = {key: censored_summary(steps, horizon=horizon) for key, steps in method_steps.items()}
    ratios = {key: base.mean / max(m.mean, 1.0) for key, m in methods.items()}
    method_censored = any(m.censored for m in methods.values())
    bound = {(False, False): "exact", (True, False): "lower", (False, True): "upper"}.get(
        (base.censored > 0, method_censored), "unknown")
    return {"ratios": ratios, **mean_std_interval(list(ratios.values()), **kwargs), "baseline": base,
            "method": methods, "bound": bound}


def steps_table(steps: Mapping[str, Sequence[int | None]], *, horizon: int) -> "pd.DataFrame":
    """One row per label: runs, how many never converged, the mean step count with censored runs counted
    as ``horizon`` (a lower bound when any is), and the median (``None`` once half are censored)."""
    import pandas as pd

    rows = []
    for label, values in steps.items():
        s = censored_summary(values, horizon=horizon)
        rows.append({"optimizer": label, "runs": s.n, "never converged": s.censored,
                     "convergence steps": s.text(), "median": s.median})
    return pd.DataFrame(rows)


def verdict(ours: float, interval: Sequence[float], paper: float, *, higher_is_better: bool = True,
            null: float | None = None, by: str = "mean") -> str:
    """``"reproduced"`` when our estimate (the mean over seeds) reaches the paper's value; ``"partly"``
    when only its interval does, or when it is past the ``null`` effect in the claimed direction but
    short of the paper; ``"not reproduced"`` otherwise.

    A ratio claim ("3.4x fewer steps than Momentum†"): the per-seed ratios' mean and interval, ``paper=3.4``,
    ``null=1`` (``partly``: faster, but by less). A bound ("within 0.5 points of SGD"): the gap,
    ``paper=0.5``, ``higher_is_better=False``; a wide interval that merely reaches the bound is ``partly``,
    not a reproduction. ``by="interval"`` judges "within noise of" claims ("competitive with the best
    schedule"): reproduced as soon as the interval reaches the paper's value. A missing or non-finite
    estimate is ``"not reproduced"``.
    """
    check_choice("by", by, ("mean", "interval"))
    low, high = (float(v) for v in interval)
    if not all(math.isfinite(v) for v in (ours, low, high, paper)):
        return "not reproduced"
    sign = 1.0 if higher_is_better else -1.0
    reaches = high >= paper if higher_is_better else low <= paper
    if sign * ours >= sign * paper or (by == "interval" and reaches):
        return "reproduced"
    if reaches or (null is not None and sign * ours > sign * null):
        return "partly"
    return "not reproduced"


def format_estimate(summary: dict[str, Any], spec: str = ".2f") -> str:
    """``"2.61 ± 0.40 [2.20, 3.05]"`` from :func:`mean_std_interval`'s dict."""
    low, high = summary["interval"]
    return f"{summary['mean']:{spec}} ± {summary['std']:{spec}} [{low:{spec}}, {high:{spec}}]"


def claim_row(*, claim: str, source: str, paper: Any, ours_paper_protocol: Any, ours_strong: Any, seeds: int,
              interval: Sequence[float] | None, verdict: str, explanation: str = "") -> dict[str, Any]:
    """One row of a claims table (the fields of :data:`CLAIM_FIELDS`), checked."""
    for name, value in (("claim", claim), ("source", source)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    check_int("seeds", seeds)
    check_choice("verdict", verdict, VERDICTS)
    if interval is not None:
        interval = [float(v) for v in interval]
        if len(interval) != 2 or interval[0] > interval[1]:
            raise ValueError(f"interval must be [low, high] with low <= high, got {interval}")
    return to_jsonable({"claim": claim, "source": source, "paper": paper, "ours_paper_protocol": ours_paper_protocol,
                        "ours_strong": ours_strong, "seeds": seeds, "interval": interval, "verdict": verdict,
                        "explanation": explanation})


def save_claims(run, rows: Sequence[dict]) -> Path:
    """Write ``rows`` (from :func:`claim_row`) as ``results/claims.json`` of ``run`` (atomically)."""
    rows = list(rows)
    for i, row in enumerate(rows):
        missing = [f for f in CLAIM_FIELDS if f not in row]
        if missing:
            raise ValueError(f"rows[{i}] lacks {missing}; build rows with claim_row")
    return run.save_result("claims", rows)


def collect_claims(profile_dir: str | Path) -> list[dict[str, Any]]:
    """Every notebook's claims under ``profile_dir`` (``runs/<profile>``), each row with its ``notebook``.

    A notebook without ``claims.json`` is skipped; an unreadable one becomes a row saying so (one
    damaged file must not hide the others)."""
    rows = []
    for path in sorted(Path(profile_dir).glob("*/results/claims.json")):
        notebook = path.parent.parent.name
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            rows.append({"notebook": notebook, "claim": f"UNREADABLE {path}: {err}; rerun the notebook"})
            continue
        rows += [{"notebook": notebook, **row} for row in found]
    return rows


def findings(rows: Sequence[dict], *, method: str, seeds_word: str = "seeds") -> str:
    """A "What we found" paragraph in Markdown, written from claims rows (so it never goes stale)."""
    if not rows:
        raise ValueError("rows must hold at least one claim")
    lines = [f"**What we found for {method}** (each estimate: mean ± std [95 % bootstrap interval] over seeds):", ""]
    for row in rows:
        lines.append(f"* *{row['claim']}*: the paper reports {row['paper']} ({row['source']}); we measure "
                     f"{row['ours_paper_protocol']} under the paper's protocol and {row['ours_strong']} with baselines "
                     f"tuned on validation data, over {row['seeds']} {seeds_word}: **{row['verdict']}**."
                     + (f" {row['explanation']}." if row.get("explanation") else ""))
    return "\n".join(lines)


def claims_frame(rows: Sequence[dict]) -> "pd.DataFrame":
    """Claims rows (from :func:`collect_claims` or one notebook) as a table in :data:`CLAIM_FIELDS` order,
    ``notebook`` first when present; the interval printed as ``[low, high]``."""
    import pandas as pd

    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return frame
    if "interval" in frame:
        frame["interval"] = [v if not isinstance(v, list) else f"[{v[0]:.3g}, {v[1]:.3g}]" for v in frame["interval"]]
    order = [c for c in ("notebook", *CLAIM_FIELDS) if c in frame.columns]
    return frame[order + [c for c in frame.columns if c not in order]]


def direction_verdict(ours: float, interval: Sequence[float], *, null: float = 0.0,
                      higher_is_better: bool = True) -> str:
    """The verdict of a claim of direction only ("more accurate than Adam", no number to reach):
    ``"reproduced"`` when the whole interval lies past ``null`` in the claimed direction, ``"partly"``
    when only the estimate does, ``"not reproduced"`` otherwise (a non-finite estimate included)."""
    low, high = (float(v) for v in interval)
    if not all(math.isfinite(v) for v in (ours, low, high, null)):
        return "not reproduced"
    if low > high:
        raise ValueError(f"interval must be [low, high] with low <= high, got {[low, high]}")
    sign = 1.0 if higher_is_better else -1.0
    if min(sign * low, sign * high) > sign * null:
        return "reproduced"
    return "partly" if sign * ours > sign * null else "not reproduced"


def time_to_target(times: Sequence[float], curve: Sequence[float], target: float) -> float | None:
    """Wall time at the first evaluation where ``curve`` (e.g. test accuracy) reaches ``target`` (``>=``);
    ``times[i]`` is the run's clock at evaluation ``i``. ``None`` when it never does (a censored run: count it
    with :func:`censored_summary`, never drop it)."""
    times, curve = np.asarray(times, dtype=np.float64), np.asarray(curve, dtype=np.float64)
    if times.ndim != 1 or times.shape != curve.shape or times.size == 0:
        raise ValueError(f"times and curve must be 1-d of one non-zero length, got shapes {times.shape} and {curve.shape}")
    if not math.isfinite(float(target)):
        raise ValueError(f"target must be a finite number, got {target!r}")
    hit = steps_to_target(curve, target, mode="above")  # NaN compares False: a diverged evaluation never counts
    return None if hit is None else float(times[hit])
