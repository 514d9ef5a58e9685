"""One checkpoint / resume scheme for every meta-trainer (SL2O, MLR-SNet, NES).

A meta-checkpoint is a dict: the learned optimizer's ``module`` state, the meta-``optimizer``'s
state, the trainer's ``kind`` (so that a run directory written by another trainer is refused),
the :class:`~l2o_lib.meta.guard.DivergenceGuard`'s ``reference`` loss (so that a resumed run
refuses exactly what the uninterrupted one would) and the trainer's own entries. A trainer calls
:func:`resume_meta` once before its loop and :func:`save_meta` at each checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .guard import DivergenceGuard

__all__ = ["meta_state", "load_meta_state", "check_meta_kind", "check_not_past", "resume_meta", "save_meta"]


def check_not_past(name: str, total: int, done: int) -> None:
    """``ValueError`` when a resumed run already holds ``done`` > ``total`` (``name``) units: it
    cannot be cut back, and returning the longer run would silently ignore ``total``."""
    if done > total:
        raise ValueError(f"{name}={total} is smaller than the {done} the run already holds (its newest checkpoint); "
                         f"pass {name} >= {done} to continue it, or use a new run (or resume=False) to start over")


def _check_kind(kind: Any) -> str | None:
    if kind is not None and (not isinstance(kind, str) or not kind):
        raise ValueError(f"kind must be a non-empty string or None, got {kind!r}")
    return kind


def meta_state(module: nn.Module, optimizer: torch.optim.Optimizer, *, kind: str | None = None,
               **extra: Any) -> dict:
    """A checkpointable dict of a learned optimizer, its meta-optimizer and ``extra`` entries.

    ``kind`` names the trainer (``"sl2o"``, ``"mlrsnet"``, ``"nes"``) so that
    :func:`load_meta_state` can refuse another trainer's checkpoint found in a run directory.
    """
    state = {"module": module.state_dict(), "optimizer": optimizer.state_dict(), **extra}
    if _check_kind(kind) is not None:
        state["kind"] = kind
    return state


def _found_kind(state: dict) -> str | None:
    # MLR-SNet nests its meta_state under "meta" in a larger checkpoint.
    nested = state.get("meta")
    return state.get("kind", nested.get("kind") if isinstance(nested, dict) else None)


def check_meta_kind(state: dict, kind: str | None) -> None:
    """``ValueError`` when the checkpoint ``state`` was recorded by another trainer than ``kind``
    (one without a kind, written before kinds were recorded, is accepted)."""
    found = _found_kind(state) if isinstance(state, dict) else None
    if _check_kind(kind) is not None and found is not None and found != kind:
        raise ValueError(
            f"the checkpoint was written by {found!r} meta-training, not {kind!r}: the run directory belongs to "
            "another trainer; use another run name, or pass resume=False to delete that run and start over"
        )


def load_meta_state(state: dict, module: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    kind: str | None = None) -> dict:
    """Load :func:`meta_state` output into ``module`` (and ``optimizer``); return the extras.

    With ``kind``, a checkpoint recorded with another kind raises ``ValueError`` before anything
    is loaded; one without a kind (written before kinds were recorded) is accepted.
    """
    check_meta_kind(state, kind)
    nested = state.get("meta")
    if "module" not in state and isinstance(nested, dict):  # MLR-SNet's layout before the shared scheme
        state = {**{k: v for k, v in state.items() if k != "meta"}, **nested}
    missing = {"module", "optimizer"} - set(state)
    if missing:
        raise ValueError(f"not a meta-training checkpoint: missing {sorted(missing)}")
    module.load_state_dict(state["module"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return {k: v for k, v in state.items() if k not in ("module", "optimizer", "kind")}


def resume_meta(run: Any, *, kind: str, module: nn.Module, optimizer: torch.optim.Optimizer,
                guard: DivergenceGuard | None = None, total_name: str, total: int,
                map_location: Any = "cpu") -> tuple[int, dict | None]:
    """``(start, extra)``: resume a meta-trainer from the newest checkpoint of ``run``.

    Without a run or a checkpoint: ``(0, None)``, nothing loaded. Otherwise, in this order: a
    checkpoint of another ``kind`` raises ``ValueError`` (before anything else), a run that already
    holds more than ``total`` units (``total_name``, e.g. ``"epochs"``) raises ``ValueError``,
    ``module`` and ``optimizer`` are loaded, ``guard`` takes the checkpoint's reference loss (the
    explosion test compares with the first accepted meta-loss: without it a resumed run would take
    its first step as the reference and accept what the run refused) and commits the loaded state,
    and the run forgets metrics and checkpoints past ``start`` (:meth:`~l2o_lib.rundir.Run.rewind`).
    ``extra`` holds the trainer's own entries (those it passed to :func:`save_meta`).
    """
    if run is None:
        return 0, None
    latest = run.latest_checkpoint(map_location=map_location)
    if latest is None:
        return 0, None
    start, state = latest
    check_meta_kind(state, kind)
    check_not_past(total_name, total, start)
    extra = load_meta_state(state, module, optimizer, kind=kind)
    if guard is not None:
        guard.reference = extra.get("reference")
        guard.commit()
    run.rewind(start)
    return start, extra


def save_meta(run: Any, done: int, *, kind: str, module: nn.Module, optimizer: torch.optim.Optimizer,
              guard: DivergenceGuard | None = None, **extra: Any) -> None:
    """Write the checkpoint :func:`resume_meta` reads after ``done`` units into ``run`` (nothing
    when ``run`` is ``None``): ``module``, ``optimizer``, ``kind``, the guard's reference loss and
    ``extra``."""
    if run is None:
        return
    if guard is not None:
        extra["reference"] = guard.reference
    run.save_checkpoint(meta_state(module, optimizer, kind=kind, **extra), done)
