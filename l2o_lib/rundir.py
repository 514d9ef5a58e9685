"""Run directories: params, metrics, results and checkpoints, with resume.

Every experiment writes into its own *run directory* (``runs/<name>`` by default)::

    runs/<name>/
        params.json          # the params, plus git commit, torch version, creation time
        metrics.jsonl        # one JSON object per log_metrics() call, append-only
        results/<key>.json   # small JSON summaries (save_result / load_result)
        checkpoints/step_00000100.pt  # the last ``keep`` checkpoints

Files other than ``metrics.jsonl`` are written atomically (temp file in the same directory,
flush + fsync, then ``os.replace``), so a run killed at any moment leaves either the old or the
new version of a file, never half of one. ``metrics.jsonl`` is appended one line per call
(cheap); a line torn by a kill is dropped when the run is reopened.

A training loop that survives being killed and restarted::

    run = Run("mnist1d-adam", params={"lr": 1e-3, "steps": 1000})
    start, state = resume_or_start(run, lambda: {"model": model.state_dict(), "opt": opt.state_dict()})
    model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
    for step in range(start, 1000):          # ``step`` counts completed steps before this one
        loss = train_step()
        run.log_metrics(step, loss=loss)
        if (step + 1) % 100 == 0:
            run.save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict()}, step + 1)

Checkpoint ``step`` is the number of completed steps, so the loop resumes at
``range(step, ...)``; metrics logged at steps ``>= step`` by the killed run are discarded on
resume because the loop logs them again.

Damage done after the fact (a truncated copy, a full disk, a stray edit) is reported, not
guessed around: an unreadable ``params.json`` is a ``ValueError`` naming it, and a damaged
checkpoint is set aside as ``step_*.pt.corrupt`` with a warning while the run resumes from the
newest intact one (see :meth:`Run.latest_checkpoint`). ``Run(resume=False)`` renames the old
directory aside before deleting it, so a kill while clearing leaves either the old run or none.

The atomic writes themselves live in :mod:`l2o_lib.files`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import subprocess
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .config import check_int
from .files import (
    _TMP_GLOB,
    CorruptFileError,
    _fsync_dir,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    check_name,
    load_torch_file,
    to_jsonable,
)

__all__ = ["Run", "resume_or_start"]

_CHECKPOINT_RE = re.compile(r"^step_(\d+)\.pt$")
_CORRUPT_SUFFIX = ".corrupt"  # a damaged checkpoint set aside by Run.latest_checkpoint
_DELETING_GLOB = ".*.deleting-*"  # a run directory renamed aside by Run._clear, being deleted


def _git_commit() -> str | None:
    """The commit of the checkout holding this package, or ``None`` (no git, no repo, no commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _torch_version() -> str | None:
    # Package metadata instead of ``import torch``: opening a run should stay cheap.
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # noqa: BLE001 - metadata missing or broken: the version is just unknown
        return None


def _read_run_info(path: Path) -> dict:
    """The content of a run's ``params.json`` at ``path``; ``ValueError`` naming it when unreadable."""
    fix = "delete the run directory, or pass resume=False to start the run over"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(info, dict) or not isinstance(info.get("params"), dict):
        raise ValueError(f"{path} does not hold a run's params (no 'params' object); {fix}")
    return info


def _remove_deleted_runs(root: Path) -> None:
    # A run directory renamed aside by Run._clear whose deletion was killed: garbage by
    # construction, so whoever opens a run in the same root finishes the job.
    if root.is_dir():
        for leftover in root.glob(_DELETING_GLOB):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)


def _is_temp_file(path: Path) -> bool:
    return path.is_file() and path.match(_TMP_GLOB)


# What each subdirectory of a run may hold (besides temp files), for _holds_only_run_files.
_RUN_SUBDIRS: dict[str, Callable[[str], bool]] = {
    "checkpoints": lambda n: bool(_CHECKPOINT_RE.match(n.removesuffix(_CORRUPT_SUFFIX))),
    "results": lambda n: n.endswith(".json"),
}


def _holds_only_run_files(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but what a :class:`Run` writes (so it may be deleted)."""
    for entry in directory.iterdir():
        if entry.is_symlink():
            return False
        if _is_temp_file(entry) or (entry.name in ("params.json", "metrics.jsonl") and entry.is_file()):
            continue
        allowed = _RUN_SUBDIRS.get(entry.name)
        if allowed is None or not entry.is_dir():
            return False
        for item in entry.iterdir():
            if not (_is_temp_file(item) or (item.is_file() and not item.is_symlink() and allowed(item.name))):
                return False
    return True


def _describe_diff(old: Any, new: Any) -> str:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return f"{old!r} -> {new!r}"
    parts = []
    for key in sorted(set(old) | set(new), key=str):
        if key not in new:
            parts.append(f"{key}: {old[key]!r} -> (missing)")
        elif key not in old:
            parts.append(f"{key}: (missing) -> {new[key]!r}")
        elif old[key] != new[key]:
            parts.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    shown = "; ".join(parts[:8])
    return shown + (f"; ... ({len(parts) - 8} more)" if len(parts) > 8 else "")


class Run:
    """One experiment's directory ``root/name``: params, metrics, results and checkpoints.

    Args:
        name: the run's directory name (non-empty, no path separators).
        root: the directory holding runs.
        params: the experiment's settings (JSON-serialisable; numpy/torch scalars, tuples and
            dataclasses such as :class:`~l2o_lib.config.Profile` are converted). Stored in
            ``params.json`` together with the git commit (``None`` when not obtainable), the
            torch version and the creation time.
        resume: when the directory already exists, ``True`` reopens it (metrics are reloaded and
            checkpoints stay available) provided the params match, and raises ``ValueError``
            if they differ; ``params=None`` reopens whatever params are stored (for analysis).
            ``"auto"`` reopens a run with the same params and starts over when they differ (what
            a notebook wants: re-running it resumes, changing a setting recomputes).
            ``False`` deletes the existing run and starts fresh. The old directory is first
            renamed aside (``root/.<name>.deleting-*``, deleted next; leftovers of a killed
            deletion are removed by the next ``Run`` opened in ``root``), so a kill leaves either
            the old run or none.

            A directory without a valid ``params.json`` is never resumed: with ``True`` or
            ``"auto"`` a non-empty one (other than the temp files of a creation that was killed)
            raises ``ValueError``. ``False`` deletes it only when it holds nothing but a run's
            files (``params.json``, ``metrics.jsonl``, ``checkpoints/``, ``results/``, temp files:
            a run killed while being deleted by an older version); other directories are refused.

    Attributes:
        path: the run directory.
        params: the params as stored (plain JSON types).
        info: the whole ``params.json`` content (params, git_commit, torch_version, created).
        resumed: whether an existing run was reopened.
    """

    def __init__(self, name: str, root: str | os.PathLike = "runs", params: dict | None = None,
                 resume: bool | str = True) -> None:
        self.name = check_name("name", name)
        if params is not None and not isinstance(params, dict) and not dataclasses.is_dataclass(params):
            raise ValueError(f"params must be a dict (or a dataclass) or None, got {type(params).__name__}")
        if not isinstance(resume, bool) and resume != "auto":
            raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
        self.path = Path(root) / name
        self._params_file = self.path / "params.json"
        self._metrics_file = self.path / "metrics.jsonl"
        self._checkpoint_dir = self.path / "checkpoints"
        self._results_dir = self.path / "results"
        self._metrics: list[dict] = []
        new_params = to_jsonable(params) if params is not None else None

        _remove_deleted_runs(self.path.parent)
        stored_info = None
        if resume is False:
            if self.path.exists() or self.path.is_symlink():
                self._clear()
        else:
            stored_info = self._stored_info()
            if (resume == "auto" and stored_info is not None and new_params is not None
                    and stored_info["params"] != new_params):
                self._clear()
                stored_info = None
        existing = stored_info is not None
        if existing:
            self.info = stored_info
            stored = self.info["params"]
            if new_params is not None and stored != new_params:
                raise ValueError(
                    f"run {str(self.path)!r} already exists with different params "
                    f"({_describe_diff(stored, new_params)}); pass resume=False to delete it and "
                    "start over, or choose another name"
                )
            self.params = stored
        else:
            self.params = new_params if new_params is not None else {}
            self.info = {
                "params": self.params,
                "git_commit": _git_commit(),
                "torch_version": _torch_version(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            atomic_write_json(self._params_file, self.info)
        self.resumed = existing
        self._remove_stale_temp_files()
        self._metrics = self._read_metrics()

    def __repr__(self) -> str:
        return f"Run({self.name!r}, root={str(self.path.parent)!r}, steps_logged={len(self._metrics)})"

    # ----------------------------------------------------------------- lifecycle helpers

    def _check_is_directory(self) -> None:
        if self.path.is_symlink() or not self.path.is_dir():
            raise ValueError(f"run path {str(self.path)!r} exists and is not a directory; "
                             "choose another name or root")

    def _stored_info(self) -> dict | None:
        """The existing run's ``params.json`` content; ``None`` when there is no run yet (no
        directory, or one holding at most the temp files of a killed creation)."""
        if not (self.path.exists() or self.path.is_symlink()):
            return None
        self._check_is_directory()
        if self._params_file.exists():
            return _read_run_info(self._params_file)
        if all(_is_temp_file(entry) for entry in self.path.iterdir()):
            return None
        if _holds_only_run_files(self.path):
            raise ValueError(
                f"{str(self.path)!r} holds run files but no params.json (a run whose deletion was "
                "killed), so it cannot be resumed; pass resume=False to delete it"
            )
        raise ValueError(
            f"{str(self.path)!r} is not empty and has no params.json, so it is not a run directory "
            "and cannot be resumed; choose another name or root (or move the directory away)"
        )

    def _clear(self) -> None:
        """Delete the run directory: rename it aside (atomic), then delete the renamed copy."""
        self._check_is_directory()
        if not self._params_file.exists() and not _holds_only_run_files(self.path):
            # A safety net for a mistyped root: only delete what looks like one of our runs.
            raise ValueError(
                f"refusing to delete {str(self.path)!r} for resume=False: it has no params.json and "
                "holds files a run does not write, so it does not look like a run directory"
            )
        aside = self.path.with_name(f".{self.name}.deleting-{os.getpid()}-{secrets.token_hex(4)}")
        os.rename(self.path, aside)
        _fsync_dir(self.path.parent)  # the rename must be on disk before anything new is written
        shutil.rmtree(aside, ignore_errors=True)  # a leftover is retried by the next Run in this root

    def _remove_stale_temp_files(self) -> None:
        # Left only when a process was SIGKILLed between creating a temp file and renaming it.
        for directory in (self.path, self._checkpoint_dir, self._results_dir):
            if directory.is_dir():
                for tmp in directory.glob(_TMP_GLOB):
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    # ----------------------------------------------------------------- metrics

    def _read_metrics(self) -> list[dict]:
        if not self._metrics_file.exists():
            return []
        raw = self._metrics_file.read_text(encoding="utf-8")
        rows, bad = [], 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
            else:
                bad += 1
        if bad or (raw and not raw.endswith("\n")):
            # Rewrite without the torn line(s): appending after a line with no newline would
            # glue the next record onto it.
            if bad:
                warnings.warn(
                    f"dropped {bad} unreadable line(s) from {self._metrics_file} "
                    "(the previous process was probably killed while writing)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            self._write_metrics(rows)
        return rows

    def _write_metrics(self, rows: list[dict]) -> None:
        atomic_write_text(self._metrics_file, "".join(json.dumps(r) + "\n" for r in rows))

    def log_metrics(self, step: int, **metrics: Any) -> dict:
        """Record ``metrics`` (numbers, numpy/torch scalars) at ``step``; returns the stored row.

        The row is kept in memory and appended as one line to ``metrics.jsonl`` (one small
        write per call, no rewrite of the file), so logging every step stays cheap.
        """
        check_int("step", step, minimum=0)
        row = {"step": step, **to_jsonable(metrics)}
        line = json.dumps(row) + "\n"
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self._metrics_file, "a", encoding="utf-8") as f:
            f.write(line)
        self._metrics.append(row)
        return row

    @property
    def metrics(self) -> list[dict]:
        """All logged rows in logging order, each ``{"step": ..., <metric>: ...}`` (a copy)."""
        return [dict(r) for r in self._metrics]

    def metrics_frame(self):
        """The metrics as a ``pandas.DataFrame`` with a ``step`` column first (one row per call)."""
        import pandas as pd

        if not self._metrics:
            return pd.DataFrame(columns=["step"])
        frame = pd.DataFrame(self._metrics)
        return frame[["step"] + [c for c in frame.columns if c != "step"]]

    def rewind(self, step: int) -> None:
        """Forget what happened at or after ``step``: metrics with step >= ``step`` and
        checkpoints with step > ``step``. Used when resuming from the checkpoint at ``step``."""
        check_int("step", step, minimum=0)
        kept = [r for r in self._metrics if r["step"] < step]
        if len(kept) != len(self._metrics):
            self._write_metrics(kept)
            self._metrics = kept
        for s, path in self._checkpoints():
            if s > step:
                path.unlink()

    # ----------------------------------------------------------------- results

    def _result_path(self, name: str) -> Path:
        return self._results_dir / f"{check_name('name', name)}.json"

    def save_result(self, name: str, obj: Any) -> Path:
        """Store a JSON summary as ``results/<name>.json`` (atomically); returns the path."""
        return atomic_write_json(self._result_path(name), obj)

    def load_result(self, name: str) -> Any:
        """Load ``results/<name>.json``; raises ``FileNotFoundError`` when it was never saved."""
        path = self._result_path(name)
        if not path.exists():
            saved = sorted(p.stem for p in self._results_dir.glob("*.json")) if self._results_dir.is_dir() else []
            raise FileNotFoundError(f"run {self.name!r} has no result {name!r}; saved results: {saved}")
        return json.loads(path.read_text(encoding="utf-8"))

    def has_result(self, name: str) -> bool:
        """Whether ``results/<name>.json`` exists (lets a notebook skip finished work)."""
        return self._result_path(name).exists()

    # ----------------------------------------------------------------- checkpoints

    def _checkpoints(self) -> list[tuple[int, Path]]:
        if not self._checkpoint_dir.is_dir():
            return []
        found = []
        for path in self._checkpoint_dir.iterdir():
            match = _CHECKPOINT_RE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return sorted(found)

    @property
    def checkpoint_steps(self) -> list[int]:
        """Steps of the checkpoints on disk, oldest first."""
        return [s for s, _ in self._checkpoints()]

    def save_checkpoint(self, state: dict, step: int, keep: int = 2) -> Path:
        """Write ``checkpoints/step_{step:08d}.pt`` atomically, then delete all but the newest ``keep``.

        ``step`` should be the number of completed steps (the loop resumes at ``range(step, ...)``).
        The new file is complete on disk before any older one is deleted, so a kill at any point
        leaves at least one usable checkpoint.
        """
        if not isinstance(state, dict):
            raise ValueError(f"state must be a dict, got {type(state).__name__}")
        check_int("step", step, minimum=0)
        check_int("keep", keep, minimum=1)
        path = atomic_torch_save(self._checkpoint_dir / f"step_{step:08d}.pt", state)
        checkpoints = self._checkpoints()
        for _, old in checkpoints[: max(0, len(checkpoints) - keep)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return path

    def load_checkpoint(self, step: int | None = None, *, map_location: Any = "cpu", weights_only: bool = True) -> dict:
        """The state saved at ``step`` (the newest when ``None``).

        ``weights_only=True`` (torch's safe loader) accepts tensors, numbers, strings and
        containers of them, which covers model and optimizer state dicts; pass ``False`` for
        states holding other objects (e.g. numpy RNG state) from runs you trust.
        Raises ``FileNotFoundError`` when there is no such checkpoint and
        :class:`CorruptFileError` (a ``ValueError``) naming the file when it is damaged; unlike
        :meth:`latest_checkpoint`, this never falls back to another checkpoint.
        """
        checkpoints = dict(self._checkpoints())
        if step is None:
            if not checkpoints:
                raise FileNotFoundError(f"run {self.name!r} has no checkpoints")
            step = max(checkpoints)
        check_int("step", step, minimum=0)
        if step not in checkpoints:
            raise FileNotFoundError(f"run {self.name!r} has no checkpoint at step {step}; available: {sorted(checkpoints)}")
        return load_torch_file(checkpoints[step], map_location=map_location, weights_only=weights_only,
                               fix="delete it to resume from an older checkpoint, or pass resume=False to start over")

    def latest_checkpoint(self, *, map_location: Any = "cpu", weights_only: bool = True) -> tuple[int, dict] | None:
        """``(step, state)`` of the newest intact checkpoint, or ``None`` when there is none.

        Checkpoints are written atomically, so a damaged one was damaged afterwards (a partial
        copy, a full disk): it is renamed to ``step_*.pt.corrupt`` (kept for inspection, never
        tried or counted again) with a ``RuntimeWarning`` naming it, and the next older one is
        tried. When none is intact the result is ``None``, with a warning, so
        :func:`resume_or_start` starts the run from the beginning: its params are intact, so
        recomputing is what ``resume=False`` would do too.
        """
        checkpoints = self._checkpoints()
        for step, path in reversed(checkpoints):
            aside = path.with_name(path.name + _CORRUPT_SUFFIX)
            try:
                return step, load_torch_file(path, map_location=map_location, weights_only=weights_only,
                                             fix=f"moved it to {aside.name} and trying an older checkpoint")
            except CorruptFileError as err:
                with contextlib.suppress(FileNotFoundError):  # another process set it aside first
                    os.replace(path, aside)
                warnings.warn(str(err), RuntimeWarning, stacklevel=2)
        if checkpoints:
            warnings.warn(f"run {str(self.path)!r} has no intact checkpoint left: starting from the beginning",
                          RuntimeWarning, stacklevel=2)
        return None


def resume_or_start(
    run: Run,
    init_fn: Callable[[], Any],
    *,
    map_location: Any = "cpu",
    weights_only: bool = True,
) -> tuple[int, Any]:
    """``(start_step, state)``: the newest intact checkpoint of ``run``, else ``(0, init_fn())``.

    Damaged checkpoints are set aside with a warning (see :meth:`Run.latest_checkpoint`).

    Metrics the interrupted process logged at steps ``>= start_step`` are discarded (see
    :meth:`Run.rewind`) because the loop, running ``range(start_step, ...)``, logs them again.
    """
    if not isinstance(run, Run):
        raise ValueError(f"run must be a Run, got {type(run).__name__}")
    if not callable(init_fn):
        raise ValueError(f"init_fn must be callable, got {init_fn!r}")
    latest = run.latest_checkpoint(map_location=map_location, weights_only=weights_only)
    start, state = latest if latest is not None else (0, init_fn())
    run.rewind(start)
    return start, state
