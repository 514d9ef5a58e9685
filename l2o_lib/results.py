"""Where notebooks keep their runs and artifacts, and the names older code imports from here.

A notebook's :class:`~l2o_lib.rundir.Run` and what it leaves for later notebooks (a trained
optimizer, its ``params.json``, ``results/*.json``) live under ``runs/<profile>/<notebook>/``:
:func:`artifact_path` builds such a path, :func:`find_artifact` finds an existing one (or takes
a path as is), :func:`read_params` reads the params another notebook ran with.

The run directories themselves are :mod:`l2o_lib.rundir` (:class:`~l2o_lib.rundir.Run`,
:func:`~l2o_lib.rundir.resume_or_start`) and the crash-safe writes :mod:`l2o_lib.files`; their
public names are re-exported here, so ``from l2o_lib.results import Run, atomic_write_json``
keeps working.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import check_choice
from .files import (
    CorruptFileError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_name,
    load_torch_file,
    to_jsonable,
)
from .rundir import Run, _read_run_info, resume_or_start

__all__ = [
    "atomic_write_bytes",
    "read_params",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "CorruptFileError",
    "load_torch_file",
    "check_name",
    "to_jsonable",
    "Run",
    "resume_or_start",
    "artifact_path",
    "find_artifact",
]


_PROFILES = ("ci", "quick", "paper")


def artifact_path(profile: str, notebook: str, filename: str, root: str | os.PathLike = "runs") -> Path:
    """Where ``notebook`` keeps an artifact (a trained optimizer …) under ``profile``:
    ``root/profile/notebook/filename``."""
    check_choice("profile", profile, _PROFILES)
    return Path(root) / profile / notebook / filename


def find_artifact(profile_or_path: str | os.PathLike, notebook: str, filename: str,
                  root: str | os.PathLike = "runs") -> Path | None:
    """The artifact of :func:`artifact_path` for a profile name, or ``profile_or_path`` itself
    when it is a path; ``None`` when the file does not exist (the notebook has not run yet)."""
    if isinstance(profile_or_path, str) and profile_or_path in _PROFILES:
        path = artifact_path(profile_or_path, notebook, filename, root)
    else:
        path = Path(profile_or_path)
    return path if path.is_file() else None


def read_params(profile: str, notebook: str, root: str | os.PathLike = "runs") -> dict | None:
    """The parameters a notebook's :class:`Run` recorded under ``profile`` (its ``params.json``),
    so a later notebook can rebuild the same task; ``None`` when that notebook has not run."""
    path = find_artifact(profile, notebook, "params.json", root)
    return None if path is None else _read_run_info(path)["params"]
