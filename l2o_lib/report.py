"""The four methods side by side: one table built from what the notebooks and the benches recorded.

Nothing is measured here. The inputs are

* ``runs/<profile>/<notebook>/results/summary.json`` (through :func:`l2o_lib.runner.collect_summaries`):
  accuracy, the notebook's baseline, convergence steps and speed-ups;
* ``runs/<profile>/<notebook>/params.json``: the task (model and dataset);
* ``runs/bench/<case>.json`` (through :func:`l2o_lib.benchmark.load_records`): the cost of a step
  relative to the hand-designed step of the same model and batch;
* the meta-training clocks the notebooks kept: SL2O's meta-checkpoint (``history.seconds``, the
  whole run including resumed sessions) and L3RS's ``nes_history.json`` (seconds per generation).

Every row names where each of its numbers came from (``source``), and a missing input leaves its
cells empty instead of raising, so the table can be built at any stage of a fresh checkout.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from .benchmark import BENCH_DIR, RECORD_DIR, load_records
from .runner import REPO_ROOT, collect_summaries

__all__ = ["Cost", "MethodSpec", "METHODS", "COLUMNS", "parse_number", "task_name", "meta_training_seconds",
           "method_table", "side_by_side", "markdown", "bench_frame", "scaling_frames"]


@dataclass(frozen=True)
class Cost:
    """A step cost read from a bench record: the first of ``keys`` present in ``case``'s record.

    ``keys`` pairs a record field (a ratio ours / reference) with a description of what was timed,
    a format string over the record's fields (e.g. ``"every T_val = {t_val}"``); ``unit`` names the
    reference step.
    """

    case: str
    keys: tuple[tuple[str, str], ...]
    unit: str


@dataclass(frozen=True)
class MethodSpec:
    """Where one method's row comes from.

    Attributes:
        method: the row's name.
        notebook: the notebook whose ``summary.json`` holds its results.
        name: the method's name in that summary.
        accuracy: the summary metric holding test accuracy (the method's and the baselines').
        baseline: the baseline the notebook compares with; ``None``: the most accurate other method
            under ``accuracy`` that is not in ``variants``.
        variants: other rows of the same method (excluded from the baselines).
        steps: the metric holding convergence steps, or ``None``.
        speedup: the metric holding the speed-up over ``speedup_vs``, or ``None``.
        speedup_vs: what the speed-up is measured against.
        step_cost: cost of one optimizer step at meta-test time.
        meta_cost: cost of one meta-training step (DLDR: building the basis).
        meta_time: ``"sl2o"`` / ``"l3rs"`` (where the clock was kept), ``"none"`` (no meta-training)
            or ``None`` (not recorded).
    """

    method: str
    notebook: str
    name: str
    accuracy: str
    baseline: str | None = None
    variants: tuple[str, ...] = ()
    steps: str | None = None
    speedup: str | None = None
    speedup_vs: str = ""
    step_cost: Cost | None = None
    meta_cost: Cost | None = None
    meta_time: str | None = None


METHODS: tuple[MethodSpec, ...] = (
    MethodSpec("DLDR + P-BFGS", "02_pbfgs", "P-BFGS", "test accuracy", variants=("P+-BFGS",),
               step_cost=Cost("pbfgs_step", (("ratio_vs_sgd", "P-BFGS iteration"),), "SGD step"),
               meta_cost=Cost("dldr_basis", (("ratio_vs_sgd_step", "DLDR basis from {checkpoints} checkpoints"),),
                              "SGD step"),
               meta_time="none"),
    MethodSpec("SL2O", "03_sl2o", "SL2O", "test accuracy", baseline="Momentum†", steps="convergence steps",
               speedup="speed-up vs Momentum† (convergence steps)", speedup_vs="Momentum†",
               step_cost=Cost("sl2o_step", (("ours_vs_momentum_dagger", "meta-test step"),), "Momentum† step"),
               meta_cost=Cost("sl2o_meta_step", (("ratio_vs_sgd", "first-order meta-training inner step"),),
                              "SGD step"),
               meta_time="sl2o"),
    MethodSpec("MLR-SNet", "04_mlrsnet", "MLR-SNet", "test accuracy (same task, tuned)",
               step_cost=Cost("mlrsnet_step", (("meta_test_overhead", "meta-test step"),), "momentum-SGD step"),
               meta_cost=Cost("mlrsnet_step", (("overhead_tval300", "training step, meta-updates every T_val = {t_val_tval300}"),
                                               ("overhead", "training step, meta-updates every T_val = {t_val}")),
                              "momentum-SGD step")),
    MethodSpec("L3RS", "05_l3rs", "L3RS", "test accuracy (held-out)", variants=("L3RS (untrained φ0)",),
               speedup="median speed-up over the best tuned baseline (held-out tasks)",
               speedup_vs="the best tuned baseline (median, steps to its final loss)",
               step_cost=Cost("l3rs_step", (("ours_vs_adam", "L3RS step"),), "Adam step"),
               meta_time="l3rs"),
)

#: The columns of :func:`method_table`, in order.
COLUMNS = ("method", "notebook", "task", "accuracy", "accuracy_text", "baseline", "baseline_accuracy",
           "baseline_text", "steps", "baseline_steps", "speedup", "speedup_vs", "step_cost", "step_cost_what",
           "meta_step_cost", "meta_step_cost_what", "meta_training_s", "meta_training_what", "source")


def parse_number(value: Any) -> float | None:
    """A summary value as a number: floats and ints as they are, ``"0.68 ± 0.02"`` → 0.68; ``None``
    for anything else (missing, ``"2/4"``, booleans, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, str):
        try:
            return float(value.split("±")[0])
        except ValueError:
            return None
    return None


def task_name(params: Mapping | None) -> str:
    """``"convnet on mnist1d"`` from a notebook's ``params.json`` content (``""`` when unknown)."""
    p = (params or {}).get("params", params or {})
    model, dataset = p.get("model"), p.get("dataset")
    return f"{model} on {dataset}" if model and dataset else ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checkpoint_seconds(folder: Path) -> float | None:
    """``history.seconds`` of the newest ``step_*.pt`` in ``folder``; ``None`` when absent or unreadable."""
    checkpoints = sorted(folder.glob("step_*.pt"))
    if not checkpoints:
        return None
    import torch

    try:
        return float(torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["history"]["seconds"])
    except Exception:  # noqa: BLE001 - a missing or foreign checkpoint leaves the cell empty
        return None


def meta_training_seconds(kind: str | None, run_dir: Path) -> tuple[float | None, str]:
    """``(seconds, where)`` of a meta-training run whose clock ``kind`` says where to find, in the
    notebook's run directory; ``(None, "")`` when it was not recorded or cannot be read.

    ``"sl2o"``: ``history.seconds`` of the newest ``checkpoints/step_*.pt`` (``meta_train`` keeps it
    across resumed sessions), averaged over the meta-trainings under ``meta/*/`` when there are any. ``"l3rs"``: the sum of ``results/nes_history.json``'s per-generation
    ``seconds``.
    """
    run_dir = Path(run_dir)
    if kind == "sl2o":
        # one meta-training per meta-seed and scale under meta/<name>/ (notebook 03 since issue 18), or one
        # in the run's own checkpoints/; each newest checkpoint holds that meta-training's whole clock
        runs = sorted(d for d in run_dir.glob("meta/*/checkpoints") if d.is_dir()) or [run_dir / "checkpoints"]
        seconds = [_checkpoint_seconds(d) for d in runs]
        if None in seconds:
            return None, ""
        what = f"{run_dir.name} meta-checkpoint" + (f"s (mean of {len(seconds)})" if len(seconds) > 1 else "")
        return sum(seconds) / len(seconds), what
    if kind == "l3rs":
        history = _read_json(run_dir / "results" / "nes_history.json")
        try:
            return float(sum(history["seconds"])), f"{run_dir.name} nes_history.json"
        except (TypeError, KeyError, ValueError):
            return None, ""
    return None, ""


def _bench_source(record: Mapping) -> str:
    mode = {True: "quick", False: "full"}.get(record.get("quick"), "")
    return f"bench/{record['case']}.py ({', '.join(x for x in (mode, record.get('device', '')) if x)})"


def _cost(cost: Cost | None, bench: Mapping[str, Mapping]) -> tuple[float | None, str, str]:
    """``(ratio, "what / unit", source)`` of a cost, or ``(None, "", "")`` when its record is missing."""
    record = bench.get(cost.case) if cost else None
    if not record or "error" in record:
        return None, "", ""
    for key, what in cost.keys:
        value = parse_number(record.get(key))
        if value is not None:
            try:
                what = what.format(**record)
            except (KeyError, IndexError, ValueError):
                pass
            return value, f"{what} / {cost.unit}", _bench_source(record)
    return None, "", ""


_SUMMARY_FIELDS = {"method", "metric", "value"}


def _value(rows: pd.DataFrame, method: str, metric: str | None) -> Any:
    if metric is None or rows.empty or not _SUMMARY_FIELDS <= set(rows.columns):
        return None
    hit = rows[(rows["method"] == method) & (rows["metric"] == metric)]
    return None if hit.empty else hit["value"].iloc[-1]


def _baseline(rows: pd.DataFrame, spec: MethodSpec) -> str | None:
    if rows.empty or not _SUMMARY_FIELDS <= set(rows.columns):  # the notebook has not run: no baseline either
        return None
    if spec.baseline is not None:
        return spec.baseline
    scored = rows[(rows["metric"] == spec.accuracy) & ~rows["method"].isin((spec.name, *spec.variants))]
    values = [(parse_number(v), m) for m, v in zip(scored["method"], scored["value"])]
    values = [(v, m) for v, m in values if v is not None]
    return max(values)[1] if values else None


def method_table(summaries: pd.DataFrame, bench: Mapping[str, Mapping], *, run_root: Path | None = None,
                 methods: Sequence[MethodSpec] = METHODS) -> pd.DataFrame:
    """One row per method in ``methods``, columns :data:`COLUMNS`; cells without an input are ``None``.

    Args:
        summaries: :func:`~l2o_lib.runner.collect_summaries` of a profile (columns ``notebook``,
            ``method``, ``metric``, ``value``); may be empty.
        bench: bench records by case (:func:`~l2o_lib.benchmark.load_records`); may be empty.
        run_root: ``runs/<profile>``, for ``params.json`` and the meta-training clocks (``None``:
            neither is read).

    ``accuracy`` / ``baseline_accuracy`` are numbers (the mean where the notebook wrote
    ``mean ± std``, which ``*_text`` keeps); ``speedup`` is over ``speedup_vs``; ``step_cost`` and
    ``meta_step_cost`` are ratios ours / the reference named in ``*_what``; ``source`` lists the
    summary, bench records and clocks the row's numbers came from.
    """
    rows = []
    for spec in methods:
        nb = summaries[summaries["notebook"] == spec.notebook] if "notebook" in summaries else pd.DataFrame()
        if "method" in nb:  # rows without a method (an unreadable summary's, a failed run's) hold no numbers
            nb = nb[nb["method"].notna()]
        sources = [f"{spec.notebook} summary.json"] if not nb.empty else []
        acc = _value(nb, spec.name, spec.accuracy)
        base = _baseline(nb, spec)
        base_acc = _value(nb, base, spec.accuracy) if base else None
        row = {"method": spec.method, "notebook": spec.notebook, "task": "",
               "accuracy": parse_number(acc), "accuracy_text": None if acc is None else str(acc),
               "baseline": base, "baseline_accuracy": parse_number(base_acc),
               "baseline_text": None if base_acc is None else str(base_acc),
               "steps": parse_number(_value(nb, spec.name, spec.steps)),
               "baseline_steps": parse_number(_value(nb, base, spec.steps)) if base else None,
               "speedup": parse_number(_value(nb, spec.name, spec.speedup)), "speedup_vs": spec.speedup_vs or None}
        if row["speedup"] is None:
            row["speedup_vs"] = None
        for col, cost in (("step_cost", spec.step_cost), ("meta_step_cost", spec.meta_cost)):
            value, what, source = _cost(cost, bench)
            row[col], row[f"{col}_what"] = value, what or None
            if source and source not in sources:
                sources.append(source)
        seconds, where = (None, "")
        if run_root is not None:
            row["task"] = task_name(_read_json(Path(run_root) / spec.notebook / "params.json"))
            seconds, where = meta_training_seconds(spec.meta_time, Path(run_root) / spec.notebook)
        row["meta_training_s"] = seconds
        row["meta_training_what"] = "none needed" if spec.meta_time == "none" else None
        if where:
            sources.append(where)
        row["source"] = "; ".join(sources)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(object)
    return frame.where(frame.notna(), None)  # missing is None in every column, numbers stay floats


def side_by_side(profile: str, *, runs: Path = REPO_ROOT / "runs", bench_dir: Path = RECORD_DIR,
                 cases_dir: Path | None = BENCH_DIR) -> pd.DataFrame:
    """:func:`method_table` for ``profile`` from ``runs/<profile>`` and the records in ``bench_dir``."""
    return method_table(collect_summaries(profile, root=runs), load_records(bench_dir, cases_dir),
                        run_root=Path(runs) / profile)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: float | None, spec: str = ".3g") -> str:
    return "" if _missing(value) else format(value, spec)


def markdown(table: pd.DataFrame) -> str:
    """The README / notebook form of :func:`method_table`: one line per method, empty where unknown.

    Columns: method, task, test accuracy (the baseline's in brackets), speed-up (over whom),
    step cost and meta-training step cost (× the reference step), meta-training time, source.
    """
    lines = ["| method | task | test accuracy (baseline) | speed-up | step cost | meta-training step cost | "
             "meta-training time | source |", "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        r = {k: None if _missing(v) else v for k, v in r.items()}
        acc = r["accuracy_text"] or ""
        if acc and r["baseline"]:
            acc += f" ({r['baseline']} {r['baseline_text'] or '?'})"
        speed = ""
        if r["speedup"] is not None:
            speed = f"{_fmt(r['speedup'])}× vs {r['speedup_vs']}"
            if r["steps"] is not None and r["baseline_steps"] is not None:
                speed += f" ({_fmt(r['steps'], '.4g')} vs {_fmt(r['baseline_steps'], '.4g')} convergence steps)"
        step = "" if r["step_cost"] is None else f"{_fmt(r['step_cost'])}× ({r['step_cost_what']})"
        meta = "" if r["meta_step_cost"] is None else f"{_fmt(r['meta_step_cost'])}× ({r['meta_step_cost_what']})"
        seconds = r["meta_training_s"]
        clock = (r["meta_training_what"] or "") if seconds is None else f"{seconds:{'.0f' if seconds >= 10 else '.2g'}} s"
        cells = [r["method"], r["task"] or "", acc, speed, step, meta, clock, r["source"] or ""]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def bench_frame(records: Mapping[str, Mapping] | Sequence[Mapping]) -> pd.DataFrame:
    """One row per bench target (see :func:`l2o_lib.benchmark.target_rows`) plus

    * ``status``: met, missed, or n/a (another device's target, not judged by this record);
    * ``headroom``: the value relative to its bound, oriented so that ``<= 1`` meets the target
      (``value / target`` for ``<=``, ``target / value`` for ``>=``);
    * ``label``: the case for a case's only judged target, else the case and the target's number in
      the case (``"mlrsnet_step #2"``), short enough for an axis.

    Empty (with the columns) when there are no targets.
    """
    from .benchmark import target_rows

    rows = target_rows(records)
    frame = pd.DataFrame(rows, columns=["case", "device", "quick", "name", "value", "target", "op", "target_device",
                                        "met"])
    frame["status"] = [("n/a" if m is None else ("met" if m else "missed")) for m in frame["met"]]
    frame["headroom"] = [(v / t if op == "<=" else (t / v if v else math.inf)) for v, t, op
                         in zip(frame["value"], frame["target"], frame["op"])]
    judged = frame.loc[frame["status"] != "n/a", "case"].value_counts()
    number = frame.groupby("case").cumcount() + 1
    frame["label"] = [c if s != "n/a" and judged.get(c, 0) == 1 else f"{c} #{k}"
                      for c, s, k in zip(frame["case"], frame["status"], number)]
    return frame


def scaling_frames(record: Mapping | None) -> dict[str, pd.DataFrame]:
    """The ``scaling`` bench record's points as frames: ``{"models": ..., "meta_batch": ...}`` (one
    row per point: model, parameters, tasks, ours_s, sgd_s, ratio_vs_sgd, per_task_vs_sgd);
    ``{}`` without a record."""
    if not record or "error" in record:
        return {}
    return {key: pd.DataFrame(record[key]) for key in ("models", "meta_batch") if record.get(key)}
