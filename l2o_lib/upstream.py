"""What a later notebook reads from the method notebooks 03-05: their trained optimizers and results.

:func:`ensure_trained` makes sure the optimizers of notebooks 03-05 exist under a runs folder,
running (papermill) the notebooks whose optimizer is missing; :func:`best_hand_designed` returns
notebook 04's best hand-designed LR schedule, at its tuned setting, as a compared method, read from
the results that notebook saved (its table cells are "mean ± std" text, read by
:func:`parse_mean_std`, the inverse of :func:`l2o_lib.metrics.summary_table`'s cells).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

from .artifacts import KINDS, trained_path
from .config import PROFILES, check_choice
from .mlrsnet import HAND_DESIGNED, MethodConfig, baseline_configs
from .results import find_artifact, read_params

__all__ = ["parse_mean_std", "missing_trained", "ensure_trained", "best_hand_designed"]

# "0.8123 ± 0.0100", optionally followed by " (2/3)" (runs counted); "—" when no run counted.
_MEAN_STD = re.compile(r"^\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf)\s*±\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf)"
                       r"\s*(?:\(\d+/\d+\))?\s*$")


def parse_mean_std(cell: Any) -> tuple[float, float]:
    """``(mean, std)`` of a :func:`~l2o_lib.metrics.summary_table` cell (``"0.81 ± 0.02"``, also with a
    trailing ``" (k/n)"``); a plain number is ``(number, nan)``, ``"—"`` / ``None`` ``(nan, nan)``.

    Raises:
        ValueError: text of another shape (named in the message).
    """
    if cell is None or (isinstance(cell, str) and cell.strip() in ("—", "")):
        return math.nan, math.nan
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return float(cell), math.nan
    if not isinstance(cell, str):
        raise ValueError(f"cell={cell!r} is not a number or a 'mean ± std' text")
    match = _MEAN_STD.match(cell)
    if match is None:
        raise ValueError(f"cell={cell!r} is not a 'mean ± std' text such as '0.81 ± 0.02'")
    return float(match.group(1)), float(match.group(2))


def missing_trained(profile: str, *, root: str | os.PathLike = "runs") -> list[str]:
    """The notebooks (``"03_sl2o"`` …) whose trained optimizer is not under ``root/profile``."""
    check_choice("profile", profile, PROFILES)
    return [kind.notebook for kind in KINDS.values() if not trained_path(kind.name, profile, root=root).is_file()]


def ensure_trained(profile: str, *, root: str | os.PathLike = "runs",
                   run: Callable[..., Any] | None = None) -> list[str]:
    """Run the notebooks of :func:`missing_trained` under ``profile`` so that every optimizer of
    notebooks 03-05 exists under ``root``; return the notebooks that ran (``[]``: nothing missing).

    The notebooks write their runs to ``runs/<profile>/`` relative to their working directory, so
    they run in the folder that holds ``root``, whose name must be ``runs``. ``run``: the runner,
    ``run(path, profile=..., cwd=...) -> result`` with ``.ok`` and ``.error`` (default
    :func:`l2o_lib.runner.run_notebook`; tests pass a stub).

    Raises:
        ValueError: ``root`` is not named ``runs`` while something is missing.
        RuntimeError: a notebook failed (its failing cell and error in the message), or ran and
            still saved no optimizer.
    """
    from .runner import find_notebooks, run_notebook  # papermill is imported only when a notebook runs

    missing = missing_trained(profile, root=root)
    if not missing:
        return []
    root = Path(root).resolve()
    if root.name != "runs":
        raise ValueError(f"root={str(root)!r} lacks the optimizers of {missing}; the notebooks write to a folder "
                         "named 'runs', so pass such a folder (or run those notebooks first)")
    run = run_notebook if run is None else run
    for notebook in missing:
        result = run(find_notebooks([notebook])[0], profile=profile, cwd=root.parent)
        if not result.ok:
            raise RuntimeError(f"notebook {notebook} failed under profile {profile!r}:\n{result.error}")
    still = missing_trained(profile, root=root)
    if still:
        raise RuntimeError(f"notebooks {still} ran but saved no optimizer under {root / profile}")
    return missing


def best_hand_designed(profile: str, *, root: str | os.PathLike = "runs") -> MethodConfig:
    """Notebook 04's best hand-designed schedule (highest mean test accuracy in its saved
    ``accuracy_table``) at its tuned setting, as a :class:`~l2o_lib.mlrsnet.MethodConfig` for
    :func:`~l2o_lib.mlrsnet.compare_schedules` rebuilt from the grid notebook 04 ran.

    Raises:
        FileNotFoundError: notebook 04 has not run under ``profile`` (names the file to make).
        ValueError: the table holds no hand-designed schedule, or its tuned setting is not in the grid.
    """
    table = find_artifact(profile, "04_mlrsnet", "results/accuracy_table.json", root=root)
    params = read_params(profile, "04_mlrsnet", root=root)
    if table is None or params is None:
        raise FileNotFoundError(f"notebook 04 has not saved its results under {Path(root) / profile / '04_mlrsnet'}; "
                                f"run it first (l2o run 04 --profile {profile})")
    rows = [r for r in json.loads(Path(table).read_text(encoding="utf-8")) if r.get("method") in HAND_DESIGNED]
    scored = [(parse_mean_std(r["accuracy"])[0], r) for r in rows]
    scored = [(acc, r) for acc, r in scored if math.isfinite(acc)]
    if not scored:
        raise ValueError(f"{table} holds no hand-designed schedule ({', '.join(HAND_DESIGNED)}) with an accuracy")
    best = max(scored, key=lambda pair: pair[0])[1]
    grid = baseline_configs(sgd_lrs=params["sgd_lrs"], adam_lrs=params["adam_lrs"], hd_hyper_lrs=params["hd_hyper_lrs"],
                            methods=HAND_DESIGNED)
    found = [c for c in grid if c.method == best["method"] and c.setting == best["tuned setting"]]
    if not found:
        raise ValueError(f"{best['method']} at {best['tuned setting']!r} (from {table}) is not in notebook 04's grid")
    return found[0]
