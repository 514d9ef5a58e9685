"""CIFAR-10 / CIFAR-100 from their python-pickle folders, and tiny fake folders for offline tests.

The loaders (entries of :data:`~l2o_lib.data.DATASETS`) read the original batch files with an
unpickler that rebuilds only NumPy arrays, normalise with :data:`CIFAR_STATS` and optionally fetch
the archive with torchvision (``download=True``). :func:`make_cifar_folder` writes a folder of
random images in the same layout.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import check_choice, check_int, check_seed
from .containers import ArrayData

__all__ = ["CIFAR_STATS", "make_cifar_folder"]

# Standard per-channel statistics of the CIFAR training sets (pixels scaled to [0, 1]).
CIFAR_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_CIFAR_LAYOUT = {
    # folder, training files, test files, label key, number of classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}

_CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds NumPy arrays: a pickle can otherwise run arbitrary code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only the whitelisted NumPy / codecs globals; anything else is refused."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        # The original files name numpy.core, which NumPy 2 renamed (and warns about).
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with ``str`` keys (the files were written by Python 2)."""
    with open(path, "rb") as f:
        d = _CifarUnpickler(f, encoding="bytes").load()
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _cifar_files_missing(folder: Path, files: list[str]) -> list[str]:
    return [name for name in files if not (folder / name).is_file()]


def _read_cifar_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        d = _read_cifar_pickle(folder / name)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64).reshape(-1))
    return np.concatenate(xs), np.concatenate(ys)


def _normalise_cifar(x: np.ndarray, name: str) -> torch.Tensor:
    mean, std = (torch.tensor(s, dtype=torch.float32).view(1, 3, 1, 1) for s in CIFAR_STATS[name])
    return (torch.from_numpy(x).float().div_(255.0) - mean) / std


def _make_cifar_loader(name: str) -> Callable[..., tuple]:
    folder_name, train_files, test_files, label_key, num_classes = _CIFAR_LAYOUT[name]

    def load(root: Path, seed: int, download: bool, n_train, n_test) -> tuple:
        folder = root / folder_name
        missing = _cifar_files_missing(folder, train_files + test_files)
        if missing and download:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            cls(str(root), train=True, download=True)  # fetches and extracts the whole archive
            missing = _cifar_files_missing(folder, train_files + test_files)
        if missing:
            raise FileNotFoundError(
                f"{name}: file(s) {missing} not found in {folder}; pass download=True to fetch them "
                f"into root={str(root)!r}, or point root at a folder holding {folder_name}/")
        x_tr, y_tr = _read_cifar_split(folder, train_files, label_key)
        x_te, y_te = _read_cifar_split(folder, test_files, label_key)
        info: dict[str, Any] = {"mean": CIFAR_STATS[name][0], "std": CIFAR_STATS[name][1], "folder": str(folder)}
        meta_file = folder / ("batches.meta" if name == "cifar10" else "meta")
        if meta_file.is_file():
            meta = _read_cifar_pickle(meta_file)
            names = meta.get("label_names", meta.get("fine_label_names"))
            if names is not None:
                info["label_names"] = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        train = ArrayData(_normalise_cifar(x_tr, name), torch.from_numpy(y_tr))
        test = ArrayData(_normalise_cifar(x_te, name), torch.from_numpy(y_te))
        return train, test, (3, 32, 32), num_classes, info

    load.__doc__ = f"Read {name} from ``root/{folder_name}`` (python-pickle format)."
    return load


def _dump_pickle(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # protocol 2, as the original (Python 2) files


def make_cifar_folder(root: str | os.PathLike, *, n_train: int = 50, n_test: int = 20, classes: int = 10,
                      seed: int = 0) -> Path:
    """Write a tiny CIFAR-format folder of random images under ``root``; return the folder.

    The files follow the python-pickle layout of the real archives, so
    ``load_dataset("cifar10" | "cifar100", root=root)`` reads them like the real data:

    * ``classes=10``: ``root/cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``
      (the training images split among them), ``test_batch`` and ``batches.meta``; each batch
      a dict with ``b"data"`` (N, 3072) uint8 (row-major R, G, B planes of 32x32),
      ``b"labels"``, ``b"filenames"`` and ``b"batch_label"``.
    * ``classes=100``: ``root/cifar-100-python/`` with ``train``, ``test`` and ``meta``;
      labels under ``b"fine_labels"`` (and made-up ``b"coarse_labels"``, fine // 5).

    Pixels are uniform random uint8; labels cycle through the classes (so every class
    appears when ``n >= classes``) in a seeded random order.  Use it to test a pipeline
    offline; torchvision's own CIFAR classes reject these files (their md5 sums differ).
    """
    check_choice("classes", classes, (10, 100))
    check_int("n_train", n_train)
    check_int("n_test", n_test)
    check_seed("seed", seed)
    name = "cifar10" if classes == 10 else "cifar100"
    folder_name, train_files, test_files, label_key, _ = _CIFAR_LAYOUT[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def make_split(n: int) -> tuple[np.ndarray, list[int]]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = (np.arange(n) % classes)[rng.permutation(n)]
        return data, [int(v) for v in labels]

    def batch(data: np.ndarray, labels: list[int], label: str, start: int) -> dict:
        d = {b"batch_label": label.encode(), b"data": data,
             b"filenames": [f"random_{start + i:06d}.png".encode() for i in range(len(labels))]}
        d[label_key.encode()] = labels
        if classes == 100:
            d[b"coarse_labels"] = [v // 5 for v in labels]
        return d

    x_tr, y_tr = make_split(n_train)
    x_te, y_te = make_split(n_test)
    if classes == 10:
        start = 0
        for i, (xs, idx) in enumerate(zip(np.array_split(x_tr, 5), np.array_split(np.arange(n_train), 5))):
            labels = [y_tr[j] for j in idx]
            _dump_pickle(folder / train_files[i], batch(xs, labels, f"training batch {i + 1} of 5", start))
            start += len(labels)
        _dump_pickle(folder / test_files[0], batch(x_te, y_te, "testing batch 1 of 1", 0))
        _dump_pickle(folder / "batches.meta", {b"label_names": [s.encode() for s in _CIFAR10_NAMES],
                                               b"num_cases_per_batch": -(-n_train // 5), b"num_vis": 3072})
    else:
        _dump_pickle(folder / train_files[0], batch(x_tr, y_tr, "training batch 1 of 1", 0))
        _dump_pickle(folder / test_files[0], batch(x_te, y_te, "testing batch 1 of 1", 0))
        _dump_pickle(folder / "meta", {b"fine_label_names": [f"class_{i:02d}".encode() for i in range(100)],
                                       b"coarse_label_names": [f"super_{i:02d}".encode() for i in range(20)]})
    return folder
