"""Timing helpers and the benchmark-case runner behind ``l2o bench``.

A case is a file ``bench/<case>.py`` with ``run(*, quick: bool, device: str) -> dict`` that
returns at least ``ours_s`` and ``reference_s`` (seconds per step, measured in the same process
by :func:`compare`); the runner adds ``case``, ``device`` and ``ratio = reference_s / ours_s``
and writes ``runs/bench/<case>.json`` atomically.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .config import check_int, resolve_device
from .results import atomic_write_json
from .runner import REPO_ROOT

__all__ = ["BENCH_DIR", "synchronize", "time_per_call", "compare", "find_cases", "run_case"]

BENCH_DIR = REPO_ROOT / "bench"


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


def compare(ours: Callable[[], object], reference: Callable[[], object], *, device: str = "cpu",
            warmup: int = 2, repeat: int = 5, rounds: int = 3) -> dict[str, float]:
    """Time ``ours`` and ``reference`` in alternating rounds (so drift in machine load hits both)
    and return the median seconds per call of each plus ``ratio = reference / ours``."""
    check_int("rounds", rounds)
    for fn in (ours, reference):
        for _ in range(warmup):
            fn()
    t_ours, t_ref = [], []
    for _ in range(rounds):
        t_ours.append(time_per_call(ours, device=device, warmup=0, repeat=repeat))
        t_ref.append(time_per_call(reference, device=device, warmup=0, repeat=repeat))
    o, r = statistics.median(t_ours), statistics.median(t_ref)
    return {"ours_s": o, "reference_s": r, "ratio": r / o}


def find_cases(names: list[str] | tuple = (), directory: Path = BENCH_DIR) -> dict[str, Path]:
    """Benchmark cases by name (all of them when ``names`` is empty)."""
    cases = {p.stem: p for p in sorted(Path(directory).glob("*.py")) if not p.stem.startswith("_")}
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise ValueError(f"unknown bench case(s) {unknown}; available: {sorted(cases)}")
    return {n: cases[n] for n in names} if names else cases


def run_case(path: Path, *, quick: bool = False, device: str = "auto",
             out_dir: Path = REPO_ROOT / "runs" / "bench") -> dict:
    """Import and run one case file; write and return its record."""
    device = resolve_device(device)
    spec = importlib.util.spec_from_file_location(f"l2o_bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = module.run(quick=quick, device=device)
    missing = {"ours_s", "reference_s"} - set(record)
    if missing:
        raise ValueError(f"bench case {path.stem!r} returned no {sorted(missing)}")
    record = {"case": path.stem, "device": device,
              "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
              "threads": torch.get_num_threads(), "quick": quick, **record}
    record["ratio"] = record["reference_s"] / record["ours_s"]
    atomic_write_json(Path(out_dir) / f"{path.stem}.json", record)
    return record
