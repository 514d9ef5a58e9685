"""Timing helpers, the benchmark-case runner behind ``l2o bench``, targets and the bench table.

A case is a file ``bench/<case>.py`` with ``run(*, quick: bool, device: str) -> dict`` that
returns at least ``ours_s`` and ``reference_s`` (seconds per step, measured in the same process
by :func:`compare`) and a ``targets`` list (see :func:`target`); the runner adds ``case``,
``device``, ``ratio = reference_s / ours_s`` and, to every target that applies to the device, ``met``,
and writes ``runs/bench/<case>.json`` atomically. A case may also define ``targets(record) -> list``
(the same list, computed from the record's fields); :func:`load_records` uses it to give records
written before targets existed their targets, from the numbers they hold.

:func:`table` renders records as one markdown table (one line per target) that ``l2o bench``
prints and writes to ``runs/bench/table.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from .config import check_int, resolve_device
from .files import atomic_write_json, atomic_write_text
from .runner import REPO_ROOT

__all__ = ["BENCH_DIR", "RECORD_DIR", "synchronize", "time_per_call", "alternate", "median_times", "compare", "torch_sgd_steps", "find_cases", "run_case",
           "run_cases", "target", "check_targets", "evaluate_targets", "error_record", "load_records", "target_rows",
           "tally", "table", "write_table"]

BENCH_DIR = REPO_ROOT / "bench"
RECORD_DIR = REPO_ROOT / "runs" / "bench"
TARGET_OPS = ("<=", ">=")
TARGET_DEVICES = ("cpu", "cuda", "any")


def synchronize(device: str | torch.device) -> None:
    """Wait for queued GPU work so a timer measures it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], *, device: str = "cpu", warmup: int = 2, repeat: int = 5) -> float:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then the mean of ``repeat`` calls."""
    check_int("warmup", warmup, minimum=0)
    check_int("repeat", repeat)
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeat


def alternate(measures: Mapping[str, Callable[[], object]], *, rounds: int) -> dict[str, list]:
    """Every measurement's values over ``rounds`` rounds, each round calling every measurement once
    in turn, so that drift in the machine's load hits all alike (warm-up is the caller's)."""
    check_int("rounds", rounds)
    values = {k: [] for k in measures}
    for _ in range(rounds):
        for k, measure in measures.items():
            values[k].append(measure())
    return values


def median_times(fns: Mapping[str, Callable[[], object]], *, device: str = "cpu", warmup: int = 1, repeat: int = 1,
                 rounds: int = 3, per: int = 1) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, divided by ``per`` (e.g. the steps a call takes):
    ``warmup`` untimed calls of each, then :func:`alternate` rounds of :func:`time_per_call`
    (``repeat`` calls each)."""
    check_int("warmup", warmup, minimum=0)
    check_int("repeat", repeat)
    check_int("rounds", rounds)
    check_int("per", per)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = alternate({k: (lambda fn=fn: time_per_call(fn, device=device, warmup=0, repeat=repeat))
                       for k, fn in fns.items()}, rounds=rounds)
    return {k: statistics.median(v) / per for k, v in times.items()}


def compare(ours: Callable[[], object], reference: Callable[[], object], *, device: str = "cpu",
            warmup: int = 2, repeat: int = 5, rounds: int = 3) -> dict[str, float]:
    """Time ``ours`` and ``reference`` in alternating rounds (so drift in machine load hits both)
    and return the median seconds per call of each plus ``ratio = reference / ours``."""
    t = median_times({"ours_s": ours, "reference_s": reference}, device=device, warmup=warmup, repeat=repeat,
                     rounds=rounds)
    return {**t, "ratio": t["reference_s"] / t["ours_s"]}


def torch_sgd_steps(module: torch.nn.Module, sample: Callable[[], tuple[torch.Tensor, torch.Tensor]], steps: int = 1,
                    **sgd_kwargs) -> Callable[[], None]:
    """``fn()`` that takes ``steps`` plain ``torch.optim.SGD(**sgd_kwargs)`` steps of ``module`` (train
    mode, cross-entropy) on batches from ``sample()``: the hand-designed step the issues' CPU targets
    divide by ("a torch.optim SGD step of the same model and batch")."""
    check_int("steps", steps)
    module.train()
    opt = torch.optim.SGD(module.parameters(), **{"lr": 0.1, **sgd_kwargs})

    def fn() -> None:
        for _ in range(steps):
            x, y = sample()
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
    return fn


def find_cases(names: list[str] | tuple = (), directory: Path = BENCH_DIR) -> dict[str, Path]:
    """Benchmark cases by name (all of them when ``names`` is empty)."""
    cases = {p.stem: p for p in sorted(Path(directory).glob("*.py")) if not p.stem.startswith("_")}
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise ValueError(f"unknown bench case(s) {unknown}; available: {sorted(cases)}")
    return {n: cases[n] for n in names} if names else cases


def _load_case(path: Path):
    spec = importlib.util.spec_from_file_location(f"l2o_bench_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_case(path: Path, *, quick: bool = False, device: str = "auto", out_dir: Path = RECORD_DIR) -> dict:
    """Import and run one case file; write and return its record (targets checked, ``met`` added)."""
    device = resolve_device(device)
    module = _load_case(path)
    record = module.run(quick=quick, device=device)
    missing = {"ours_s", "reference_s"} - set(record)
    if missing:
        raise ValueError(f"bench case {path.stem!r} returned no {sorted(missing)}")
    targets = check_targets(path.stem, record.get("targets", []))
    record = {"case": path.stem, "device": device,
              "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "quick": quick,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
    record["ratio"] = record["reference_s"] / record["ours_s"]
    record["targets"] = evaluate_targets(targets, device)
    atomic_write_json(Path(out_dir) / f"{path.stem}.json", record)
    return record


def run_cases(cases: Mapping[str, Path], *, quick: bool = False, device: str = "auto", out_dir: Path = RECORD_DIR,
              on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every case of ``{name: path}`` (see :func:`run_case`) and return their records in order.

    A case that raises does not stop the others: it gives an :func:`error_record` (and writes no
    JSON, so its last good record stays on disk). ``on_done(record)`` is called after each case.
    """
    resolved = resolve_device(device)
    records = []
    for name, path in cases.items():
        try:
            record = run_case(path, quick=quick, device=resolved, out_dir=out_dir)
        except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others' numbers
            record = error_record(name, resolved, exc)
        records.append(record)
        if on_done is not None:
            on_done(record)
    return records


def write_table(records: Iterable[dict], out_dir: Path = RECORD_DIR, cases_dir: Path | None = BENCH_DIR
                ) -> tuple[str, Path]:
    """Render :func:`table` over every record in ``out_dir``, with ``records`` (this run's, failures
    included) taking the place of the stored ones of the same case, and write it atomically to
    ``out_dir/table.md``. Returns ``(text, path)``."""
    merged = load_records(out_dir, cases_dir)
    merged.update({r["case"]: r for r in records})
    text = table([merged[k] for k in sorted(merged)])
    return text, atomic_write_text(Path(out_dir) / "table.md", text)


# ----------------------------------------------------------------------------------- targets


def target(name: str, value: float, bound: float, op: str = "<=", device: str = "any") -> dict:
    """One target of a bench case: ``value op bound`` should hold on ``device`` (``"any"``, ``"cpu"``
    or ``"cuda"``), e.g. ``target("P-BFGS iteration / SGD step", 1.05, 1.5)``."""
    return check_targets("target", [{"name": name, "value": value, "target": bound, "op": op, "device": device}])[0]


def check_targets(case: str, targets) -> list[dict]:
    """Validated copies of a case's targets (``value`` and ``target`` as floats; ``value`` may be NaN
    when the case could not measure it). Raises ``ValueError`` naming the case and the field."""
    if not isinstance(targets, (list, tuple)):
        raise ValueError(f"bench case {case!r}: targets must be a list of dicts, got {type(targets).__name__}")
    out = []
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping):
            raise ValueError(f"bench case {case!r}: targets[{i}] must be a dict, got {type(t).__name__}")
        missing = {"name", "value", "target", "op"} - set(t)
        if missing:
            raise ValueError(f"bench case {case!r}: targets[{i}] has no {sorted(missing)}")
        if t["op"] not in TARGET_OPS:
            raise ValueError(f"bench case {case!r}: targets[{i}] op={t['op']!r}; choose one of {list(TARGET_OPS)}")
        device = t.get("device", "any")
        if device not in TARGET_DEVICES:
            raise ValueError(f"bench case {case!r}: targets[{i}] device={device!r}; choose one of {list(TARGET_DEVICES)}")
        try:
            value = float("nan") if t["value"] is None else float(t["value"])
            bound = float(t["target"])
        except (TypeError, ValueError):
            raise ValueError(f"bench case {case!r}: targets[{i}] value and target must be numbers, "
                             f"got {t['value']!r} and {t['target']!r}") from None
        out.append({**t, "name": str(t["name"]), "value": value, "target": bound, "device": device})
    return out


def _applies(t: Mapping, device: str) -> bool:
    return t.get("device", "any") == "any" or torch.device(device).type == t["device"]


def evaluate_targets(targets: Iterable[Mapping], device: str) -> list[dict]:
    """Copies of ``targets`` with ``met`` (bool) added to those that apply to ``device``; a NaN value
    misses. Targets for another device get no ``met`` (they were not in reach of this run)."""
    out = []
    for t in targets:
        t = {k: v for k, v in t.items() if k != "met"}
        if _applies(t, device):
            value = t["value"]
            t["met"] = bool(not math.isnan(value) and (value <= t["target"] if t["op"] == "<=" else value >= t["target"]))
        out.append(t)
    return out


def error_record(case: str, device: str, error: BaseException) -> dict:
    """What a failed case leaves in the table: its name, the device, the error and its traceback."""
    return {"case": case, "device": device, "error": f"{type(error).__name__}: {error}",
            "traceback": "".join(traceback.format_exception(error))}


def load_records(directory: Path = RECORD_DIR, cases_dir: Path | None = BENCH_DIR) -> dict[str, dict]:
    """The bench records in ``directory`` (``<case>.json``), by case name; ``{}`` when there are none.

    A record written before cases returned targets gets them from its case's ``targets(record)``
    in ``cases_dir`` (when that file defines one), marked ``"targets_derived": True``: the values
    are the record's own measurements, the bounds today's; a record that lacks what its case's
    ``targets`` reads keeps none. Unreadable files are skipped.
    """
    records = {}
    directory = Path(directory)
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or "case" not in record:
            continue
        if "targets" not in record and cases_dir is not None:
            case_file = Path(cases_dir) / f"{record['case']}.py"
            try:
                derive = getattr(_load_case(case_file), "targets", None) if case_file.is_file() else None
                targets = None if derive is None else check_targets(record["case"], derive(record))
            except (KeyError, TypeError, ValueError, ImportError):  # a record too old for today's case
                targets = None
            if targets is not None:
                record = {**record, "targets": evaluate_targets(targets, record.get("device", "cpu")),
                          "targets_derived": True}
        records[record["case"]] = record
    return records


def _as_list(records) -> list[dict]:
    return list(records.values()) if isinstance(records, Mapping) else list(records)


def target_rows(records) -> list[dict]:
    """One flat row per target (``case, device, quick, name, value, target, op, target_device, met``;
    ``met`` is ``None`` where the target is for another device). Failed cases give no rows."""
    rows = []
    for r in _as_list(records):
        for t in r.get("targets", []):
            rows.append({"case": r["case"], "device": r.get("device"), "quick": r.get("quick"), "name": t["name"],
                         "value": t["value"], "target": t["target"], "op": t["op"],
                         "target_device": t.get("device", "any"), "met": t.get("met")})
    return rows


def tally(records) -> dict:
    """Counts over all targets: ``met``, ``missed``, ``not_applicable`` (another device's), and the
    names of the ``failed`` cases."""
    rows = target_rows(records)
    return {"met": sum(r["met"] is True for r in rows), "missed": sum(r["met"] is False for r in rows),
            "not_applicable": sum(r["met"] is None for r in rows),
            "failed": [r["case"] for r in _as_list(records) if "error" in r]}


def _num(value, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, fmt)


def _cell(text: str) -> str:
    # A "|" would split the markdown cell; newlines would end the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(records) -> str:
    """A markdown table of bench records (a list, or the dict of :func:`load_records`): per case
    its device, mode, seconds per step of ours and the reference and ``ratio`` (reference / ours),
    then one line per target with the target, the measured value and met / missed (``n/a`` for
    another device's target); a failed case shows its error. A tally line follows the table."""
    symbol = {"<=": "≤", ">=": "≥"}
    lines = ["| case | device | mode | ours (s) | reference (s) | ratio | target | value | met |",
             "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in _as_list(records):
        mode = "" if r.get("quick") is None else ("quick" if r["quick"] else "full")
        head = [r["case"], r.get("device", ""), mode]
        if "error" in r:
            lines.append("| " + " | ".join(map(_cell, head + ["", "", "", f"error: {r['error']}", "", "failed"])) + " |")
            continue
        ratio = _num(r.get("ratio"), ".3g")
        timing = [_num(r.get("ours_s"), ".4g"), _num(r.get("reference_s"), ".4g"), ratio + "×" if ratio else ""]
        targets = r.get("targets", [])
        if not targets:
            lines.append("| " + " | ".join(map(_cell, head + timing + ["—", "", ""])) + " |")
        for i, t in enumerate(targets):
            where = "" if t.get("device", "any") == "any" else f" ({t['device']})"
            status = "n/a" if "met" not in t else ("met" if t["met"] else "missed")
            row = head + (timing if i == 0 else ["", "", ""]) + [
                f"{t['name']} {symbol[t['op']]} {t['target']:g}{where}", _num(t["value"]), status]
            lines.append("| " + " | ".join(map(_cell, row)) + " |")
    counts = tally(records)
    foot = (f"targets: {counts['met']} met, {counts['missed']} missed, {counts['not_applicable']} for another device"
            + (f"; failed cases: {', '.join(counts['failed'])}" if counts["failed"] else ""))
    return "\n".join(lines) + "\n\n" + foot + "\n"
