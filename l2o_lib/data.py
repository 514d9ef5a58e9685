"""Datasets held as device tensors, seeded on-device batch sampling and synthetic problems.

Everything here keeps a whole split as two tensors (``x``, ``y``) on the training device;
there is no ``DataLoader``.  Batches are drawn by index sampling with a
``torch.Generator`` that lives on the same device as the data, so a training loop never
waits on the host: no worker processes, no per-step copies, no ``.item()``.

Datasets (see :data:`DATASETS` and :func:`load_dataset`):

* ``mnist1d`` -- generated offline with the ``mnist1d`` package and cached as ``.npz``;
* ``digits`` -- scikit-learn's bundled 8x8 digits;
* ``logistic`` / ``gaussian_mixture`` -- seeded synthetic classification problems;
* ``cifar10`` / ``cifar100`` -- the python-pickle CIFAR folders (optionally downloaded).

Also: the quadratic family :class:`Quadratic` / :func:`random_quadratic`, class subsets for
fine-tuning tasks (:func:`class_subset`, :func:`split_classes`), :class:`BatchSampler`,
the vectorised augmentation :func:`random_crop_flip`, and :func:`make_cifar_folder`, which
writes a tiny CIFAR-format folder for offline tests.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_choice, check_int, check_positive, check_seed, resolve_device

__all__ = [
    "ArrayData",
    "Dataset",
    "DatasetSpec",
    "DATASETS",
    "CIFAR_STATS",
    "load_dataset",
    "Quadratic",
    "random_quadratic",
    "class_subset",
    "split_classes",
    "BatchSampler",
    "random_crop_flip",
    "make_cifar_folder",
]

DeviceLike = str | torch.device


# --------------------------------------------------------------------------------------------
# containers
# --------------------------------------------------------------------------------------------


@dataclass
class ArrayData:
    """One split of a dataset: inputs ``x`` (N, ...) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        # Shape metadata only: checking it never synchronises with the device.
        if self.x.shape[:1] != self.y.shape[:1]:
            raise ValueError(f"x and y must have the same length, got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        """Number of examples."""
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        """The device the split lives on."""
        return self.x.device

    def to(self, device: DeviceLike) -> "ArrayData":
        """A copy on ``device`` (no copy when it is already there)."""
        return ArrayData(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ArrayData":
        """The examples selected by ``index`` (integer indices or a boolean mask)."""
        index = torch.as_tensor(index, device=self.x.device)
        return ArrayData(self.x[index], self.y[index])


@dataclass
class Dataset:
    """A classification dataset: a train and a test split plus their description.

    Attributes:
        name: registry name (``mnist1d``, ``cifar10``, ...).
        train: the training split.
        test: the test split.
        input_shape: shape of one input, e.g. ``(40,)`` or ``(3, 32, 32)``.
        num_classes: number of classes; labels lie in ``0 .. num_classes - 1``.
        info: free-form extras (label names, normalisation, the true weights of a synthetic
            problem, the classes kept by :func:`class_subset`, ...).
    """

    name: str
    train: ArrayData
    test: ArrayData
    input_shape: tuple
    num_classes: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(self.input_shape)
        check_int("num_classes", self.num_classes)

    @property
    def device(self) -> torch.device:
        """The device the training split lives on."""
        return self.train.x.device

    def to(self, device: DeviceLike) -> "Dataset":
        """A copy with both splits on ``device``."""
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.input_shape,
                       self.num_classes, dict(self.info))


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

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


# --- synthetic -------------------------------------------------------------------------------

_SYNTHETIC_SIZES = (4000, 1000)  # default n_train, n_test of generated datasets


def _validate_logistic(kw: dict) -> None:
    check_int("dim", kw["dim"])
    check_positive("weight_scale", kw["weight_scale"])


def _load_logistic(root: Path, seed: int, download: bool, n_train, n_test, *, dim: int,
                   weight_scale: float) -> tuple:
    """Binary labels drawn from ``sigmoid(x . w)`` with ``x ~ N(0, I)`` and a seeded ``w``."""
    n_train = _SYNTHETIC_SIZES[0] if n_train is None else n_train
    n_test = _SYNTHETIC_SIZES[1] if n_test is None else n_test
    # Generated on the CPU so that a seed gives the same data whatever the target device.
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, generator=g)
    w = w * (weight_scale / w.norm())  # logits then have standard deviation weight_scale
    x = torch.randn(n_train + n_test, dim, generator=g)
    y = torch.bernoulli(torch.sigmoid(x @ w), generator=g).long()
    train = ArrayData(x[:n_train].contiguous(), y[:n_train].contiguous())
    test = ArrayData(x[n_train:].contiguous(), y[n_train:].contiguous())
    return train, test, (dim,), 2, {"true_weights": w}


def _validate_mixture(kw: dict) -> None:
    check_int("num_classes", kw["num_classes"], minimum=2)
    check_int("dim", kw["dim"])
    check_positive("separation", kw["separation"])


def _load_mixture(root: Path, seed: int, download: bool, n_train, n_test, *, num_classes: int, dim: int,
                  separation: float) -> tuple:
    """Isotropic unit-variance Gaussian clusters whose means lie at radius ``separation``."""
    n_train = _SYNTHETIC_SIZES[0] if n_train is None else n_train
    n_test = _SYNTHETIC_SIZES[1] if n_test is None else n_test
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, dim, generator=g)
    means = means * (separation / means.norm(dim=1, keepdim=True))
    n = n_train + n_test
    # Balanced classes (round robin), then shuffled, so small splits still see every class.
    y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    x = means[y] + torch.randn(n, dim, generator=g)
    train = ArrayData(x[:n_train].contiguous(), y[:n_train].contiguous())
    test = ArrayData(x[n_train:].contiguous(), y[n_train:].contiguous())
    return train, test, (dim,), num_classes, {"means": means}


# --- CIFAR -----------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# quadratics
# --------------------------------------------------------------------------------------------


@dataclass
class Quadratic:
    """The quadratic ``f(theta) = 0.5 theta^T A theta - b^T theta`` (``A`` symmetric positive definite).

    ``theta`` may carry leading batch dimensions, shape ``(..., d)``: a population of
    optimiser states is evaluated at once.
    """

    A: torch.Tensor
    b: torch.Tensor

    def __post_init__(self) -> None:
        if self.A.dim() != 2 or self.A.shape[0] != self.A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(self.A.shape)}")
        if self.b.shape != self.A.shape[:1]:
            raise ValueError(f"b must have shape ({self.A.shape[0]},), got {tuple(self.b.shape)}")

    @property
    def dim(self) -> int:
        """Number of parameters ``d``."""
        return self.A.shape[0]

    def loss(self, theta: torch.Tensor) -> torch.Tensor:
        """``f(theta)``, shape ``theta.shape[:-1]``."""
        return 0.5 * ((theta @ self.A) * theta).sum(-1) - theta @ self.b

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        """``A theta - b``, the same shape as ``theta`` (``A`` is symmetric, so ``theta A = A theta``)."""
        return theta @ self.A - self.b

    @property
    def minimizer(self) -> torch.Tensor:
        """``A^{-1} b``."""
        return torch.linalg.solve(self.A, self.b)

    @property
    def min_value(self) -> torch.Tensor:
        """``f`` at the minimiser, ``-0.5 b^T A^{-1} b`` (a 0-d tensor)."""
        return -0.5 * (self.b @ self.minimizer)


def random_quadratic(dim: int, *, cond: float = 10.0, seed: int = 0, device: DeviceLike = "cpu",
                     dtype: torch.dtype = torch.float32) -> Quadratic:
    """A seeded random quadratic with condition number ``cond``.

    ``A = Q diag(lambda) Q^T`` with eigenvalues log-spaced in ``[1, cond]`` and ``Q`` a random
    orthogonal basis; ``b ~ N(0, I)``.  Built in float64 on the CPU (the same problem for a seed
    on every device), then cast to ``dtype`` and moved to ``device``.
    """
    check_int("dim", dim)
    check_positive("cond", cond)
    if cond < 1:
        raise ValueError(f"cond must be >= 1, got {cond!r}")
    check_seed("seed", seed)
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # sign fix makes Q Haar-distributed
    eig = torch.logspace(0.0, math.log10(cond), dim, dtype=torch.float64)
    a = (q * eig) @ q.T
    a = 0.5 * (a + a.T)  # exact symmetry despite rounding
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    return Quadratic(a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))


# --------------------------------------------------------------------------------------------
# class subsets (fine-tuning tasks)
# --------------------------------------------------------------------------------------------


def _check_classes(classes: Sequence[int], num_classes: int) -> list[int]:
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    try:
        classes = list(classes)
    except TypeError:
        raise ValueError(f"classes must be a sequence of integers, got {classes!r}") from None
    if not classes:
        raise ValueError("classes must not be empty")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            raise ValueError(f"classes must be integers in [0, {num_classes - 1}], got {c!r}")
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    return classes


def class_subset(dataset: Dataset, classes: Sequence[int], *, relabel: bool = True) -> Dataset:
    """Keep only the examples of ``classes`` in both splits.

    With ``relabel`` the kept labels become ``0 .. k-1`` in the order ``classes`` is given
    (``num_classes`` becomes ``k``); otherwise labels and ``num_classes`` are unchanged.
    The original class ids are recorded in ``info["classes"]``.
    """
    classes = _check_classes(classes, dataset.num_classes)

    def pick(split: ArrayData) -> ArrayData:
        wanted = torch.tensor(classes, device=split.y.device)
        kept = split.subset(torch.isin(split.y, wanted))
        if relabel:
            lut = torch.full((dataset.num_classes,), -1, dtype=torch.long, device=split.y.device)
            lut[wanted] = torch.arange(len(classes), device=split.y.device)
            kept = ArrayData(kept.x, lut[kept.y])
        return kept

    info = dict(dataset.info)
    info["classes"] = classes  # in the label space of the dataset passed in
    if "label_names" in dataset.info and relabel:
        info["label_names"] = [dataset.info["label_names"][c] for c in classes]
    return Dataset(dataset.name, pick(dataset.train), pick(dataset.test), dataset.input_shape,
                   len(classes) if relabel else dataset.num_classes, info)


def split_classes(num_classes: int, n_source: int, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of ``0 .. num_classes-1`` into source and target classes.

    For fine-tuning tasks: pretrain on the ``n_source`` source classes, fine-tune on the
    held-out rest.  Both lists are sorted.
    """
    check_int("num_classes", num_classes, minimum=2)
    check_int("n_source", n_source)
    if n_source >= num_classes:
        raise ValueError(f"n_source must be < num_classes={num_classes}, got {n_source}")
    check_seed("seed", seed)
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:n_source]), sorted(perm[n_source:])


# --------------------------------------------------------------------------------------------
# sampling and augmentation
# --------------------------------------------------------------------------------------------


class BatchSampler:
    """Seeded mini-batches drawn on the data's device.

    Iterating yields ``(x, y)`` for one epoch: a device-side ``randperm`` (or the natural
    order without ``shuffle``) cut into ``batch_size`` slices.  :meth:`sample` draws one
    batch of independent uniform indices instead, for step-based loops.  Both read the same
    device generator, so a run is reproducible from ``seed`` alone and never syncs with the host.

    Args:
        data: the split to sample from.
        batch_size: examples per batch.
        seed: seed of the device generator.
        shuffle: shuffle each epoch.
        drop_last: drop the last incomplete batch of an epoch.
        augment: optional ``augment(x, generator) -> x`` applied to each batch on the
            device, e.g. :func:`random_crop_flip`.
    """

    def __init__(self, data: ArrayData, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        check_int("batch_size", batch_size)
        check_seed("seed", seed)
        if not isinstance(data, ArrayData):
            raise ValueError(f"data must be an ArrayData, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("data must not be empty")
        if drop_last and batch_size > len(data):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} examples, so drop_last=True "
                             f"would yield no batch; lower batch_size or pass drop_last=False")
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be callable or None, got {augment!r}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.device = data.x.device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        """Batches yielded by one pass of iteration."""
        n, bs = len(self.data), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __len__(self) -> int:
        """Same as :attr:`steps_per_epoch`."""
        return self.steps_per_epoch

    def _take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.x[index], self.data.y[index]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches."""
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for step in range(self.steps_per_epoch):
            yield self._take(order[step * self.batch_size:(step + 1) * self.batch_size])

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of ``batch_size`` uniformly drawn indices (with replacement)."""
        index = torch.randint(len(self.data), (self.batch_size,), generator=self.generator, device=self.device)
        return self._take(index)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Random crop and horizontal flip of a batch ``(N, C, H, W)``, vectorised on its device.

    Each image is zero-padded by ``padding`` pixels on every side and cropped back to
    ``H x W`` at its own random offset; with ``flip`` it is also mirrored left-right with
    probability 0.5.  One gather for the whole batch, no loop over samples; ``generator``
    (on ``x``'s device, or ``None`` for the global one) makes it reproducible.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    check_int("padding", padding, minimum=0)
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    rows = oy + torch.arange(h, device=dev)  # (N, H) rows of each crop in the padded image
    cols = ox + torch.arange(w, device=dev)  # (N, W)
    if flip:
        mirror = torch.rand(n, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)  # reading columns backwards mirrors the crop
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


# --------------------------------------------------------------------------------------------
# offline CIFAR fixtures
# --------------------------------------------------------------------------------------------


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
