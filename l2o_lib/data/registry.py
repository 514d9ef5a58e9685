"""The dataset registry :data:`DATASETS` and :func:`load_dataset`, with the MNIST-1D and digits loaders.

Datasets (see :data:`DATASETS` and :func:`load_dataset`):

* ``mnist1d`` -- generated offline with the ``mnist1d`` package and cached as ``.npz``;
* ``digits`` -- scikit-learn's bundled 8x8 digits;
* ``logistic`` / ``gaussian_mixture`` -- seeded synthetic classification problems
  (:mod:`~l2o_lib.data.synthetic`);
* ``cifar10`` / ``cifar100`` -- the python-pickle CIFAR folders, optionally downloaded
  (:mod:`~l2o_lib.data.cifar`).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import check_choice, check_int, check_positive, check_seed, resolve_device
from .cifar import _make_cifar_loader
from .containers import ArrayData, Dataset, DeviceLike
from .synthetic import _load_logistic, _load_mixture, _validate_logistic, _validate_mixture

__all__ = ["DatasetSpec", "DATASETS", "load_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """A registry entry of :data:`DATASETS`.

    Attributes:
        loader: ``loader(root, seed, download, n_train, n_test, **kwargs)`` returning
            ``(train, test, input_shape, num_classes, info)`` as CPU tensors.
        defaults: the dataset-specific keyword arguments and their defaults.
        validate: checks those keyword arguments (raises ``ValueError``) before any work.
        synthetic: the loader generates exactly ``n_train`` / ``n_test`` examples itself.
        description: one line for listings.
    """

    loader: Callable[..., tuple]
    defaults: dict
    validate: Callable[[dict], None]
    synthetic: bool
    description: str


def _no_checks(kwargs: dict) -> None:
    """Datasets without extra keyword arguments have nothing to validate."""


# --- mnist1d ---------------------------------------------------------------------------------


def _load_mnist1d(root: Path, seed: int, download: bool, n_train, n_test) -> tuple:
    """Generate MNIST-1D with the ``mnist1d`` package (never downloaded) and cache it."""
    path = root / f"mnist1d_seed{seed}.npz"
    arrays = None
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError):
            arrays = None  # a damaged cache is regenerated below rather than failing the run
    if arrays is None:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.seed = seed
        # make_dataset reseeds Python's and NumPy's global generators; restore them so that
        # loading data never changes the randomness of the caller's code.
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            d = make_dataset(args)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        arrays = {
            "x": np.asarray(d["x"], dtype=np.float32),
            "y": np.asarray(d["y"], dtype=np.int64),
            "x_test": np.asarray(d["x_test"], dtype=np.float32),
            "y_test": np.asarray(d["y_test"], dtype=np.int64),
        }
        _atomic_savez(path, arrays)
    train = ArrayData(torch.from_numpy(arrays["x"]).float(), torch.from_numpy(arrays["y"]).long())
    test = ArrayData(torch.from_numpy(arrays["x_test"]).float(), torch.from_numpy(arrays["y_test"]).long())
    return train, test, (train.x.shape[1],), 10, {"cache": str(path)}


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``.npz`` so that a reader never sees a half-written file (parallel runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --- digits ----------------------------------------------------------------------------------


def _validate_digits(kw: dict) -> None:
    frac = kw["test_fraction"]
    check_positive("test_fraction", frac)
    if frac >= 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {frac!r}")


def _load_digits(root: Path, seed: int, download: bool, n_train, n_test, *, test_fraction: float) -> tuple:
    """scikit-learn's bundled 8x8 digits, scaled to [0, 1], split stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    train = ArrayData(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr))
    test = ArrayData(torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te))
    return train, test, (1, 8, 8), 10, {}



DATASETS: dict[str, DatasetSpec] = {
    "mnist1d": DatasetSpec(_load_mnist1d, {}, _no_checks, False,
                           "MNIST-1D (40-long signals, 10 classes), generated offline and cached"),
    "digits": DatasetSpec(_load_digits, {"test_fraction": 0.2}, _validate_digits, False,
                          "scikit-learn 8x8 digits (1797 images, 10 classes), bundled"),
    "logistic": DatasetSpec(_load_logistic, {"dim": 20, "weight_scale": 4.0}, _validate_logistic, True,
                            "synthetic binary logistic regression"),
    "gaussian_mixture": DatasetSpec(_load_mixture, {"num_classes": 4, "dim": 10, "separation": 3.0},
                                    _validate_mixture, True, "synthetic Gaussian clusters"),
    "cifar10": DatasetSpec(_make_cifar_loader("cifar10"), {}, _no_checks, False,
                           "CIFAR-10 (python-pickle folder; download=True fetches it)"),
    "cifar100": DatasetSpec(_make_cifar_loader("cifar100"), {}, _no_checks, False,
                            "CIFAR-100 fine labels (python-pickle folder; download=True fetches it)"),
}


def _seeded_head(split: ArrayData, n: int | None, generator: torch.Generator) -> ArrayData:
    """At most ``n`` examples, picked by a seeded shuffle (all of them, unshuffled, if None)."""
    if n is None or n >= len(split):
        return split
    return split.subset(torch.randperm(len(split), generator=generator)[:n])


def load_dataset(name: str, *, root: str | os.PathLike = "data", device: DeviceLike = "cpu", seed: int = 0,
                 n_train: int | None = None, n_test: int | None = None, download: bool = False,
                 **kwargs: Any) -> Dataset:
    """Load a registered dataset with both splits on ``device``.

    Args:
        name: one of :data:`DATASETS` (``mnist1d``, ``digits``, ``logistic``,
            ``gaussian_mixture``, ``cifar10``, ``cifar100``).
        root: folder holding (or receiving) files: the MNIST-1D cache, the CIFAR folders.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``.
        seed: seeds generation (mnist1d, synthetic), the digits split and the shuffle
            that picks the kept examples when ``n_train`` / ``n_test`` truncate.
        n_train: keep at most this many training examples (a seeded random subset;
            datasets with fewer examples are kept whole).  Synthetic datasets generate
            exactly this many (default 4000).
        n_test: the same for the test split (synthetic default 1000).
        download: CIFAR only: fetch the archive with torchvision when the folder is missing.
        **kwargs: dataset-specific options: ``digits``: ``test_fraction`` (0.2);
            ``logistic``: ``dim`` (20), ``weight_scale`` (4.0, the norm of the true
            weights); ``gaussian_mixture``: ``num_classes`` (4), ``dim`` (10),
            ``separation`` (3.0, the distance of each class mean from the origin).

    Returns:
        a :class:`Dataset`; inputs are float32, labels int64.

    Raises:
        ValueError: an unknown name, option or bad value (before anything is loaded).
        FileNotFoundError: CIFAR files are missing and ``download`` is False.
    """
    check_choice("dataset", name, DATASETS)
    spec = DATASETS[name]
    check_seed("seed", seed)
    if n_train is not None:
        check_int("n_train", n_train)
    if n_test is not None:
        check_int("n_test", n_test)
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    unknown = sorted(set(kwargs) - set(spec.defaults))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; allowed: {sorted(spec.defaults)}")
    options = {**spec.defaults, **kwargs}
    spec.validate(options)
    device = resolve_device(device) if isinstance(device, str) or device is None else torch.device(device)

    train, test, input_shape, num_classes, info = spec.loader(Path(root), seed, download, n_train, n_test,
                                                              **options)
    if not spec.synthetic:
        # A separate generator from the data's own seed use keeps truncation independent of it.
        g = torch.Generator().manual_seed(seed)
        train = _seeded_head(train, n_train, g)
        test = _seeded_head(test, n_test, g)
    return Dataset(name, train.to(device), test.to(device), input_shape, num_classes, info)
