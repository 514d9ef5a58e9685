"""Crash-safe file writes, JSON of numpy / torch values, and loading torch files that may be damaged.

Files are written atomically (temp file in the same directory, flush + fsync, then
``os.replace``), so a process killed at any moment leaves either the old or the new version of a
file, never half of one: :func:`atomic_write_bytes`, :func:`atomic_write_text`,
:func:`atomic_write_json` (numpy / torch scalars and arrays, dataclasses and paths become plain
JSON, see :func:`to_jsonable`) and :func:`atomic_torch_save`.

:func:`load_torch_file` tells a damaged file (empty, truncated, overwritten) from an intact one
that torch refuses for another reason, and raises :class:`CorruptFileError` naming the file and
what to do. :func:`check_name` guards the file and directory names callers pass in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "CorruptFileError",
    "load_torch_file",
    "check_name",
    "to_jsonable",
]

# New files get the usual rw-r--r-- rather than mkstemp's private 0600; reading the umask
# would mean setting it, which races with other threads.
_NEW_FILE_MODE = 0o644
_TMP_GLOB = ".*.tmp"  # what _atomic_open's temp files look like, for stale-file cleanup


def check_name(param: str, value: Any) -> str:
    """Require a usable file/directory name: a non-empty string without path separators.

    ``"."`` and ``".."`` and names starting with ``"."`` (hidden files, our temp files) are
    refused as well.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{param} must be a non-empty string, got {value!r}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if any(s in value for s in seps):
        raise ValueError(f"{param}={value!r} must not contain path separators ('/' or '\\')")
    if value.startswith(".") or "\x00" in value:
        raise ValueError(f"{param}={value!r} must not start with '.' or contain NUL characters")
    return value


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable after a power loss; directories cannot be opened this
    # way on Windows, where os.replace is durable enough for our purposes.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Yield a temp file next to ``path``; on success fsync it and rename it onto ``path``.

    The temp file lives in the same directory because ``os.replace`` is only atomic within
    one file system. On any exception (including a failing ``os.replace``) the temp file is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            mode_bits = path.stat().st_mode & 0o777  # keep the permissions of the file we replace
        except OSError:
            mode_bits = _NEW_FILE_MODE
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, mode_bits)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating parent directories); return the path."""
    with _atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (creating parent directories); return the path."""
    with _atomic_open(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
    return Path(path)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays and torch tensors all have .tolist(): 0-d ones give a Python
    # number, others nested lists (torch copies from the GPU as needed).
    if hasattr(obj, "tolist") and callable(obj.tolist):
        tensor_detach = getattr(obj, "detach", None)
        if callable(tensor_detach):  # torch: tolist() refuses nothing, but skip the autograd graph
            obj = tensor_detach()
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item):  # other array-likes exposing a scalar
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types (what ``json.load`` of :func:`atomic_write_json`'s file gives).

    numpy / torch scalars become Python numbers, arrays and tensors nested lists, dataclasses
    dicts, tuples lists, paths strings.
    """
    return json.loads(json.dumps(obj, default=_json_default))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON atomically; numpy / torch values become plain numbers/lists."""
    # Serialise first so an unserialisable object raises before any file is touched.
    text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (creating parent directories); return the path."""
    import torch  # lazily: JSON-only users of this module need not pay for importing torch

    with _atomic_open(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


class CorruptFileError(ValueError):
    """A file that exists but whose bytes are damaged (empty, truncated, overwritten).

    The message names the file and what to do. A ``ValueError``, so callers that refuse bad
    inputs need no extra ``except``.
    """


def _is_intact_zip(path: Path) -> bool:
    # torch.save writes a zip archive: one that is empty, truncated or overwritten fails here,
    # while a complete archive that torch refuses for another reason (weights_only, a CUDA
    # map_location without CUDA) passes, so such errors are never mistaken for damage.
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError):
        return False


def load_torch_file(path: str | os.PathLike, *, fix: str, map_location: Any = "cpu",
                    weights_only: bool = True) -> Any:
    """``torch.load(path)``; a damaged file raises :class:`CorruptFileError` naming it and ``fix``.

    Args:
        path: the file written by ``torch.save`` / :func:`atomic_torch_save`.
        fix: what the user should do about a damaged file (ends the error message).
        map_location, weights_only: passed to ``torch.load``.

    A missing file raises ``FileNotFoundError``. Errors of an intact file (``weights_only``
    refusing an object, a device that is not available) are not damage: they propagate
    unchanged, with a note naming the file.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise  # not about the file's bytes (torch reports a truncated file as OSError too)
    except Exception as err:
        if _is_intact_zip(path):
            err.add_note(f"while loading {path}")
            raise
        what = "empty" if path.stat().st_size == 0 else "not a complete torch file (truncated or overwritten)"
        raise CorruptFileError(f"{path} is damaged: it is {what} ({type(err).__name__}); {fix}") from err
