"""Run the numbered notebooks headlessly with papermill under a profile.

Executed notebooks land in ``runs/<profile>/notebooks/``; each notebook stores its headline
numbers through :mod:`l2o_lib.results` as ``runs/<profile>/<notebook>/results/summary.json``, and
:func:`collect_summaries` gathers them into one results table.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .config import PROFILES, check_choice, check_int

__all__ = ["REPO_ROOT", "NOTEBOOK_DIR", "NotebookFailure", "NotebookResult", "find_notebooks",
           "run_notebook", "run_notebooks", "collect_summaries"]

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"


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


def run_notebook(path: Path, *, profile: str = "ci", parameters: dict[str, Any] | None = None,
                 output_dir: Path | None = None, cwd: Path = REPO_ROOT, progress: bool = False) -> NotebookResult:
    """Execute one notebook with papermill (kernel ``python3``) and ``profile`` injected.

    Returns a :class:`NotebookResult`; a failure is reported in ``.error``, not raised.
    """
    import time

    import papermill as pm

    check_choice("profile", profile, PROFILES)
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"notebook {str(path)!r} does not exist")
    output_dir = Path(output_dir) if output_dir else Path(cwd) / "runs" / profile / "notebooks"
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / path.name
    params = {"profile": profile, **(parameters or {})}
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

    Notebooks that reuse what an earlier one saved still run correctly in parallel, because each
    trains what it needs when the saved artefact is missing. ``on_done(result)`` is called as
    each finishes (the CLI advances its progress bar there).
    """
    check_int("jobs", jobs)
    results: list[NotebookResult] = []
    kwargs = dict(profile=profile, parameters=parameters, cwd=cwd)
    if jobs == 1:
        for p in paths:
            results.append(run_notebook(p, **kwargs))
            if on_done:
                on_done(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_notebook, p, **kwargs) for p in paths]
        for f in futures:
            results.append(f.result())
            if on_done:
                on_done(results[-1])
    return results


def collect_summaries(profile: str, *, root: Path = REPO_ROOT / "runs") -> pd.DataFrame:
    """All ``summary.json`` records of a profile's runs as one table (columns: notebook, method,
    metric, value, and whatever else the notebooks recorded)."""
    rows = []
    for path in sorted((Path(root) / profile).glob("*/results/summary.json")):
        records = json.loads(path.read_text())
        for rec in records if isinstance(records, list) else [records]:
            rows.append({"notebook": path.parent.parent.name, **rec})
    return pd.DataFrame(rows)
