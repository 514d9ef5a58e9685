"""Seeded synthetic problems: the classification datasets ``logistic`` and ``gaussian_mixture``
(loaders of :data:`~l2o_lib.data.DATASETS`) and the quadratic family :class:`Quadratic` /
:func:`random_quadratic`.

Everything is generated on the CPU from the seed, so a seed gives the same problem on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import check_int, check_positive, check_seed, resolve_device
from .containers import ArrayData, DeviceLike

__all__ = ["Quadratic", "random_quadratic"]

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
