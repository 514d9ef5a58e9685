"""Run the numbered notebooks headlessly with papermill under a profile.

Executed notebooks land in ``runs/<profile>/notebooks/``; each notebook stores its headline
numbers through :mod:`l2o_lib.results` as ``runs/<profile>/<notebook>/results/summary.json``, and
:func:`collect_summaries` gathers them into one results table, marking the numbers of a notebook whose
latest run failed (they come from an earlier run) and summaries that cannot be read.

Parameters are checked against the notebooks' declarations (:mod:`l2o_lib.nbparams`) before papermill
starts a kernel.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from . import nbparams
from .config import PROFILES, check_choice, check_int

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "NotebookFailure", "NotebookResult", "find_notebooks",
           "check_parameters", "run_notebook", "run_notebooks", "collect_summaries"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = nbparams.NOTEBOOK_DIR  # REPO_ROOT / "notebooks"

#: Which notebooks read what others saved (trained optimizers, tuned LRs, summaries). In a parallel run a
#: notebook starts only after those of them that are in the same run have finished, so it reuses their
#: results instead of training its own fallback copy side by side.
NEEDS: dict[str, tuple[str, ...]] = {
    "06_landscapes": ("03_sl2o", "04_mlrsnet", "05_l3rs"),
    "07_symbolic": ("03_sl2o", "04_mlrsnet", "05_l3rs"),
    "08_benchmarks": ("00_quickstart", "01_subspaces", "02_pbfgs", "03_sl2o", "04_mlrsnet", "05_l3rs",
                      "06_landscapes", "07_symbolic"),
}


@dataclass
class NotebookResult:
    """Outcome of one notebook run."""

    name: str
    output: Path
    seconds: float
    error: str | None = None  # the failing cell and its error, when it failed

    @property
    def ok(self) -> bool:
        return self.error is None


class NotebookFailure(RuntimeError):
    """A notebook raised; the message shows the failing cell's source and its error."""


def find_notebooks(names: Iterable[str] = (), directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """Notebooks in ``directory`` (sorted); ``names`` select by stem or number prefix (``"00"``)."""
    found = sorted(p for p in Path(directory).glob("*.ipynb") if not p.name.startswith("."))
    names = list(names)
    if not names:
        return found
    chosen = []
    for name in names:
        stem = Path(name).stem
        match = [p for p in found if p.stem == stem or p.stem.split("_")[0] == stem]
        if not match:
            raise ValueError(f"notebook {name!r} not found; available: {[p.stem for p in found]}")
        chosen.extend(m for m in match if m not in chosen)
    return chosen


def _describe_failure(error: Exception, output: Path) -> str:
    """The failing cell's source and its error, read from the executed notebook."""
    lines = [f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', error)}"]
    try:
        nb = json.loads(output.read_text())
    except (OSError, ValueError):
        return lines[0]
    for index, cell in enumerate(nb.get("cells", [])):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            source = "".join(cell.get("source", ""))
            lines.insert(0, f"failing cell #{index} (execution count {cell.get('execution_count')}):\n{source}\n")
            break
    return "\n".join(lines)


def check_parameters(path: Path, *, profile: str, parameters: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check the papermill ``parameters`` of the notebook at ``path`` under ``profile``; return them.

    A notebook declared in :data:`l2o_lib.nbparams.NOTEBOOKS` (00-08) gets every name and value
    checked (:func:`~l2o_lib.nbparams.check_notebook_params`, reading its defaults and ``SETTINGS``
    from the file); any other notebook (one of your own) only gets ``profile`` refused, which the
    ``profile`` argument sets.

    Raises:
        ValueError: an unknown profile, a missing notebook, or a refused parameter.
    """
    check_choice("profile", profile, PROFILES)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"notebook {str(path)!r} does not exist")
    parameters = dict(parameters or {})
    if path.stem in nbparams.NOTEBOOKS:
        return nbparams.check_notebook_params(path.stem, parameters, profile=profile, directory=path.parent)
    if "profile" in parameters:
        raise ValueError(f"profile must not be passed as a parameter of notebook {path.stem}: "
                         f"the profile argument sets it ({sorted(PROFILES)})")
    return parameters


def run_notebook(path: Path, *, profile: str = "ci", parameters: dict[str, Any] | None = None,
                 output_dir: Path | None = None, cwd: Path = REPO_ROOT, progress: bool = False) -> NotebookResult:
    """Execute one notebook with papermill (kernel ``python3``) and ``profile`` injected.

    Returns a :class:`NotebookResult`; a failure of the notebook is reported in ``.error``, not raised.

    Raises:
        ValueError: refused ``parameters`` (see :func:`check_parameters`), before papermill starts.
    """
    import time

    import papermill as pm

    parameters = check_parameters(path, profile=profile, parameters=parameters)
    path = Path(path)
    output_dir = Path(output_dir) if output_dir else Path(cwd) / "runs" / profile / "notebooks"
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / path.name
    # An executed notebook left by an earlier run must not pass for this run's (papermill may fail
    # before it writes one).
    output.unlink(missing_ok=True)
    params = {"profile": profile, **parameters}
    env_before = os.environ.get("L2O_HEADLESS")
    os.environ["L2O_HEADLESS"] = "1"  # inherited by the kernel: quiet progress bars, no widgets
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(output), parameters=params, kernel_name="python3",
                            cwd=str(cwd), progress_bar=progress, log_output=False)
        error = None
    except Exception as exc:  # papermill wraps every kernel-side error; report it, do not raise
        error = _describe_failure(exc, output)
    finally:
        if env_before is None:
            os.environ.pop("L2O_HEADLESS", None)
        else:
            os.environ["L2O_HEADLESS"] = env_before
    return NotebookResult(path.stem, output, time.perf_counter() - start, error)


def run_notebooks(paths: list[Path], *, profile: str, parameters: dict[str, Any] | None = None,
                  jobs: int = 1, cwd: Path = REPO_ROOT, on_done=None) -> list[NotebookResult]:
    """Run several notebooks, ``jobs`` at a time (each in its own kernel process).

    With ``jobs > 1`` a notebook starts once the notebooks it reads (:data:`NEEDS`) that are part of
    this run have finished, and the kernels share the cores (``OMP_NUM_THREADS`` = cores / ``jobs``
    unless set). ``on_done(result)`` is called as each finishes (the CLI advances its progress bar
    there); the results come back in the order of ``paths``.

    Every notebook's ``parameters`` are checked (:func:`check_parameters`) before the first one
    starts, so a parameter one of them refuses, or does not declare, raises ``ValueError`` before any
    work: pass a parameter only to the notebooks that take it.
    """
    check_int("jobs", jobs)
    for p in paths:
        check_parameters(p, profile=profile, parameters=parameters)
    kwargs = dict(profile=profile, parameters=parameters, cwd=cwd)
    if jobs == 1:
        results = []
        for p in paths:
            results.append(run_notebook(p, **kwargs))
            if on_done:
                on_done(results[-1])
        return results
    selected = {Path(p).stem for p in paths}
    pending, finished, running = list(paths), {}, {}
    with ProcessPoolExecutor(max_workers=jobs, initializer=_share_cores, initargs=(jobs,)) as pool:
        while pending or running:
            for p in [p for p in pending if _ready(Path(p).stem, selected, finished)][:jobs - len(running)]:
                pending.remove(p)
                running[pool.submit(run_notebook, p, **kwargs)] = p
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                result = future.result()
                finished[Path(running.pop(future)).stem] = result
                if on_done:
                    on_done(result)
    return [finished[Path(p).stem] for p in paths]


def _ready(stem: str, selected: set[str], finished: Mapping[str, NotebookResult]) -> bool:
    """Whether every notebook ``stem`` needs (:data:`NEEDS`) that is part of this run has finished."""
    return all(need in finished for need in NEEDS.get(stem, ()) if need in selected)


def _share_cores(jobs: int) -> None:
    """Worker start-up: the kernels of ``jobs`` notebooks side by side share the cores instead of each
    taking all of them (inherited by each kernel; an explicit ``OMP_NUM_THREADS`` wins)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))


def _as_of(mtime: float) -> str:
    """A file's modification time as the date of the numbers it holds (UTC, to the minute)."""
    return datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _read_records(path: Path) -> list[dict]:
    """The records of one ``summary.json``: a list of dicts (or one dict). Raises ``ValueError``
    (not JSON, not UTF-8, not records) or ``OSError``."""
    records = json.loads(path.read_text(encoding="utf-8"))
    records = records if isinstance(records, list) else [records]
    if not all(isinstance(r, dict) for r in records):
        raise ValueError("not a list of records (JSON objects)")
    return records


def collect_summaries(profile: str, *, root: Path = REPO_ROOT / "runs", failed: Iterable[str] = (),
                      since: float | None = None) -> pd.DataFrame:
    """All ``summary.json`` records of a profile's runs as one table.

    Columns: ``notebook``, ``status``, ``as_of``, then ``method``, ``metric``, ``value`` and whatever
    else the notebooks recorded. ``as_of`` is when the summary was written (the date of its
    numbers); ``status`` is ``"ok"``, or for a notebook named in ``failed`` (its latest run failed)
    ``"FAILED: numbers from <as_of>, an earlier run"`` (``"FAILED: numbers from this run, written
    before it failed"`` when the summary is newer than ``since``, the time.time() the run started;
    a row ``"FAILED: no numbers"`` when it never wrote a summary), or for a summary that cannot be
    read a single row ``"UNREADABLE: <path> (<why>); rerun the notebook: l2o run <notebook>
    --profile <profile>"`` with no numbers. Never raises on a damaged file: one bad summary must not
    hide the others.
    """
    failed = set(failed)
    rows = []
    seen = set()
    for path in sorted((Path(root) / profile).glob("*/results/summary.json")):
        name = path.parent.parent.name
        seen.add(name)
        try:
            mtime = path.stat().st_mtime
            records = _read_records(path)
        except (OSError, ValueError) as exc:
            rows.append({"notebook": name, "status": f"UNREADABLE: {path} ({type(exc).__name__}: {exc}); rerun the "
                                                     f"notebook: l2o run {name} --profile {profile}"})
            continue
        as_of = _as_of(mtime)
        status = "ok" if name not in failed else (
            "FAILED: numbers from this run, written before it failed" if since is not None and mtime >= since
            else f"FAILED: numbers from {as_of}, an earlier run")
        rows.extend({**rec, "notebook": name, "status": status, "as_of": as_of} for rec in records)
    rows += [{"notebook": name, "status": "FAILED: no numbers", "as_of": None} for name in sorted(failed - seen)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    first = ["notebook", "status", "as_of"]
    return frame[first + [c for c in frame.columns if c not in first]]
