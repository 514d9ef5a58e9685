"""Save and load trained optimizers: one registry of kinds, one pair of functions.

Each method's notebook meta-trains an optimizer and saves it for later notebooks; the registry
says, per *kind*, which notebook writes it, under which file name, and which type holds it:

=============  ==============  ================  ===============================================
kind           notebook        file              object
=============  ==============  ================  ===============================================
``sl2o``       ``03_sl2o``     ``sl2o.pt``       :class:`l2o_lib.sl2o.Trained` (rule, subspace)
``mlrsnet``    ``04_mlrsnet``  ``mlrsnet.pt``    :class:`l2o_lib.mlrsnet.TrainedSchedule`
``l3rs``       ``05_l3rs``     ``l3rs.pt``       :class:`l2o_lib.l3rs.Trained` (φ, config, setup)
=============  ==============  ================  ===============================================

A file is ``runs/<profile>/<notebook>/<file>`` (:func:`trained_path`) and holds the object's
``state()`` plus ``"kind"``; each type rebuilds itself with ``from_state``. The method modules
know their own state, not where notebooks keep it::

    save_trained(Trained(rule, space), trained_path("sl2o", profile))   # notebook 03
    trained = load_trained("sl2o", profile)                             # notebooks 06-08; None: run 03

Files written before the kind was recorded load too: their kind is recognised from their keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import l3rs, mlrsnet, sl2o
from .config import check_choice
from .files import atomic_torch_save, load_torch_file
from .results import artifact_path, find_artifact

__all__ = ["Kind", "KINDS", "kind_of", "save_trained", "load_trained", "trained_path"]


@dataclass(frozen=True)
class Kind:
    """One kind of trained optimizer.

    Attributes:
        name: the registry key (``"sl2o"`` …), stored in the file.
        notebook: the notebook that writes it (and that a user reruns to write it again).
        filename: its file in that notebook's run directory.
        type: the class saved; it has ``state() -> dict`` and ``from_state(dict)``.
        keys: top-level keys every state of this kind holds (recognise files without a kind).
    """

    name: str
    notebook: str
    filename: str
    type: type
    keys: frozenset

    def rebuild(self, state: dict) -> Any:
        """The object of this kind from ``state`` (a loaded file, its ``"kind"`` removed)."""
        return self.type.from_state(state)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("sl2o", "03_sl2o", "sl2o.pt", sl2o.Trained, frozenset({"config", "weights"})),
    Kind("mlrsnet", "04_mlrsnet", "mlrsnet.pt", mlrsnet.TrainedSchedule, frozenset({"format", "snapshots"})),
    Kind("l3rs", "05_l3rs", "l3rs.pt", l3rs.Trained, frozenset({"phi", "config", "layer_names"})),
)}


def _kind(name: str) -> Kind:
    check_choice("kind", name, KINDS)
    return KINDS[name]


def kind_of(obj: Any) -> Kind:
    """The :class:`Kind` of a trained object, found from its type; ``ValueError`` for other objects."""
    for kind in KINDS.values():
        if isinstance(obj, kind.type):
            return kind
    known = ", ".join(f"{k.type.__module__}.{k.type.__qualname__}" for k in KINDS.values())
    raise ValueError(f"obj must be a trained optimizer ({known}), got {type(obj).__name__}")


def trained_path(kind: str, profile: str, root: str | os.PathLike = "runs") -> Path:
    """Where the notebook of ``kind`` keeps it under ``profile``: ``root/profile/notebook/file``."""
    spec = _kind(kind)
    return artifact_path(profile, spec.notebook, spec.filename, root)


def save_trained(obj: Any, path: str | os.PathLike) -> Path:
    """Write a trained optimizer (kind found from its type) atomically to ``path``; return the path."""
    kind = kind_of(obj)
    return atomic_torch_save(path, {**obj.state(), "kind": kind.name})


def _stored_kind(blob: Any) -> str | None:
    # A file without "kind" predates it: recognise it by the keys only its kind writes.
    if not isinstance(blob, dict):
        return None
    if "kind" in blob:
        return blob["kind"] if isinstance(blob["kind"], str) else None
    return next((k.name for k in KINDS.values() if k.keys <= blob.keys()), None)


def load_trained(kind: str, profile_or_path: str | os.PathLike, *, root: str | os.PathLike = "runs",
                 map_location: Any = "cpu") -> Any:
    """The optimizer of ``kind`` saved under a profile (``"ci"``, ``"quick"``, ``"paper"``) or at a path.

    Returns ``None`` when there is none yet (run the kind's notebook first). A damaged file raises
    :class:`~l2o_lib.files.CorruptFileError` naming it and the notebook to rerun; a file of
    another kind raises ``ValueError`` naming both kinds.
    """
    spec = _kind(kind)
    path = find_artifact(profile_or_path, spec.notebook, spec.filename, root)
    if path is None:
        return None
    fix = f"rerun notebook {spec.notebook} to write it again, or delete it"
    blob = load_torch_file(path, map_location=map_location, fix=fix)
    stored = _stored_kind(blob)
    if stored != kind:
        what = f"holds a trained {stored!r} optimizer" if stored in KINDS else "is not a trained optimizer file"
        raise ValueError(f"{path} {what}, not the {kind!r} one asked for (notebook {spec.notebook} writes that)")
    return spec.rebuild({k: v for k, v in blob.items() if k != "kind"})
