"""Directions and planes through parameter space (filter-normalised random, PCA of a trajectory,
through three points) and the least-squares projection of a trajectory onto a plane."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import check_seed
from ..functional import FlatModel
from ..subspace import dldr
from .checks import check_model, check_vector

__all__ = ["Plane", "Projection", "filter_normalized_direction", "random_plane", "pca_plane", "plane_through", "project"]

# Rows of a trajectory projected at a time: about this many bytes of float64 per block.
PROJECT_BLOCK_BYTES = 1 << 26


def _filter_normalize(model: FlatModel, theta: Tensor, direction: Tensor, ignore_bias_and_bn: bool) -> Tensor:
    """Rescale ``direction`` filter-wise to ``theta``'s filter norms (see the module docstring)."""
    out = torch.empty_like(direction)
    parts = zip(torch.split(theta, model.numels), torch.split(direction, model.numels),
                torch.split(out, model.numels), model.shapes)
    for w, d, o, shape in parts:  # one iteration per parameter tensor, never per filter
        if len(shape) >= 2:
            rows = (shape[0], -1)
            w2, d2 = w.view(rows), d.view(rows)
            # Rows of a Gaussian matrix are never zero in practice; the clamp only keeps a
            # degenerate zero row at zero instead of NaN.
            d_norm = torch.linalg.vector_norm(d2, dim=1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
            o.view(rows).copy_(d2 * (torch.linalg.vector_norm(w2, dim=1, keepdim=True) / d_norm))
        elif ignore_bias_and_bn:
            o.zero_()
        else:
            # Each entry is a filter of one element: its norm |w_k|, the direction's own sign.
            o.copy_(torch.where(d < 0, -w.abs(), w.abs()))
    return out


def _gaussian(generator: torch.Generator, theta: Tensor) -> Tensor:
    # Drawn on the CPU in float32, then cast, so that a seed gives the same direction on every
    # device and for every dtype of theta.
    return torch.randn(theta.shape[0], generator=generator).to(device=theta.device, dtype=theta.dtype)


def filter_normalized_direction(model: FlatModel, theta: Tensor, *, seed: int = 0,
                                ignore_bias_and_bn: bool = True) -> Tensor:
    """A random filter-normalised direction at ``theta`` (Li et al., 2018), shape ``(D,)``.

    A Gaussian vector (float32 from a CPU ``torch.Generator`` seeded with ``seed``, then moved to
    ``theta``'s device and dtype) is split like the model's parameters; for every parameter with at least two
    dimensions each filter (slice along dim 0, e.g. one output channel of a convolution or one
    output row of a linear layer) is rescaled to the Frobenius norm of the same filter of
    ``theta``. One-dimensional parameters (biases, BatchNorm weights and biases) are zero when
    ``ignore_bias_and_bn`` (the paper's choice); otherwise every entry is a filter of size one,
    so ``|d_k| = |theta_k|`` with a random sign.

    Raises:
        ValueError: ``model`` not a ``FlatModel``, ``theta`` not a float tensor of shape ``(D,)``,
            ``seed`` not an integer >= 0.
    """
    check_model(model)
    check_vector("theta", theta, model.dim)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    return _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)


@dataclass
class Plane:
    """The affine plane ``θ(α, β) = origin + α d1 + β d2`` (directions need not be orthogonal).

    Attributes:
        origin, d1, d2: ``(D,)`` tensors on one device, of one floating dtype.
        explained_variance_ratio: ``(2,)`` share of a trajectory's variance along ``d1`` and
            ``d2`` (:func:`pca_plane` only), e.g. for axis labels.
    """

    origin: Tensor
    d1: Tensor
    d2: Tensor
    explained_variance_ratio: Tensor | None = None

    def __post_init__(self) -> None:
        check_vector("origin", self.origin)
        for name in ("d1", "d2"):
            v = check_vector(name, getattr(self, name), self.origin.shape[0])
            if v.device != self.origin.device or v.dtype != self.origin.dtype:
                raise ValueError(f"{name} is a {v.dtype} tensor on {v.device}; origin is {self.origin.dtype} "
                                 f"on {self.origin.device}")

    @property
    def dim(self) -> int:
        """``D``, the size of a parameter vector."""
        return self.origin.shape[0]

    def points(self, alphas: Tensor | Sequence[float], betas: Tensor | Sequence[float]) -> Tensor:
        """The points ``origin + alphas[k] d1 + betas[k] d2`` stacked as ``(K, D)``."""
        coeffs = torch.stack([torch.as_tensor(alphas, dtype=torch.float64).reshape(-1),
                              torch.as_tensor(betas, dtype=torch.float64).reshape(-1)], 1)
        return self._points(coeffs.to(device=self.origin.device, dtype=self.origin.dtype))

    def _points(self, coeffs: Tensor) -> Tensor:
        # One GEMM for the chunk: origin + coeffs @ [d1; d2]. At (0, 0) this is origin exactly.
        return torch.addmm(self.origin, coeffs, torch.stack([self.d1, self.d2]))

    def to(self, device=None, dtype=None) -> "Plane":
        """Move (or cast) every tensor."""
        mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        return Plane(mv(self.origin), mv(self.d1), mv(self.d2), self.explained_variance_ratio)


def random_plane(model: FlatModel, theta: Tensor, seed: int = 0, *, ignore_bias_and_bn: bool = True) -> Plane:
    """The plane through ``theta`` spanned by two filter-normalised random directions.

    Both directions come from one generator seeded with ``seed``, so ``d1`` equals
    ``filter_normalized_direction(model, theta, seed=seed)`` and different seeds share no draw.
    """
    check_model(model)
    check_vector("theta", theta, model.dim)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    d1 = _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)
    d2 = _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)
    return Plane(theta.detach().clone(), d1, d2)


def _checkpoints(trajectory: Any):
    """A ``(T, D)`` tensor or array from a tensor, a numpy array or a ``Trajectory``."""
    if hasattr(trajectory, "checkpoints"):
        trajectory = trajectory.checkpoints
    if not isinstance(trajectory, (Tensor, np.ndarray)) or trajectory.ndim != 2 or trajectory.shape[0] < 1:
        shape = tuple(trajectory.shape) if hasattr(trajectory, "shape") else type(trajectory).__name__
        raise ValueError(f"trajectory must be a (T, D) tensor or array with T >= 1, got {shape}")
    return trajectory


def pca_plane(trajectory: Tensor | np.ndarray, origin: Tensor | None = None) -> Plane:
    """The plane of the top two principal directions of a trajectory (``(T, D)``, ``T >= 3``).

    As in Li et al. (2018, Section 7) and the SL2O figures, the plane passes through the
    trajectory's *last* point by default, so the end of training sits at ``(0, 0)``. The PCA is
    :func:`~l2o_lib.subspace.dldr` with ``d = 2`` (mean-centred, which is the same as the
    paper's PCA of ``θ_i - θ_T`` after centring); ``d1`` and ``d2`` are orthonormal and the
    plane records their ``explained_variance_ratio``. Accepts a tensor, a numpy memmap or a
    :class:`~l2o_lib.subspace.Trajectory`.
    """
    traj = _checkpoints(trajectory)
    sub = dldr(traj, 2)
    if origin is None:
        last = traj[-1]
        origin = torch.as_tensor(np.array(last)) if isinstance(last, np.ndarray) else last
    else:
        check_vector("origin", origin, traj.shape[1])
    origin = origin.detach().to(device=sub.basis.device, dtype=sub.basis.dtype).clone()
    return Plane(origin, sub.basis[0].clone(), sub.basis[1].clone(), sub.explained_variance_ratio)


def plane_through(a: Tensor, b: Tensor, c: Tensor) -> Plane:
    """The plane through three points: origin ``a``, directions ``b - a`` and ``c - a``.

    ``a``, ``b`` and ``c`` sit at coordinates ``(0, 0)``, ``(1, 0)`` and ``(0, 1)``; the
    directions are not orthogonal in general (use :func:`project` for coordinates).
    """
    check_vector("a", a)
    check_vector("b", b, a.shape[0])
    check_vector("c", c, a.shape[0])
    a = a.detach()
    return Plane(a.clone(), b.detach() - a, c.detach() - a)


class Projection(NamedTuple):
    """Coordinates of trajectory points in a plane and their distance from it.

    Attributes:
        coords: ``(T, 2)`` float64 ``(α, β)`` with ``origin + α d1 + β d2`` the closest point.
        residual: ``(T,)`` float64 Euclidean distance from the plane (absolute, in parameter
            units; divide by ``‖θ_t - origin‖`` for the relative residual).
    """

    coords: Tensor
    residual: Tensor


def project(trajectory: Tensor | np.ndarray, plane: Plane) -> Projection:
    """Least-squares coordinates of every row of ``trajectory`` (``(T, D)``) in ``plane``.

    With ``B = [d1; d2]`` and ``x_t = θ_t - origin``, ``c_t`` solves ``(B Bᵀ) c_t = B x_t`` (the
    2 × 2 normal equations, so non-orthogonal directions such as those of
    :func:`plane_through` are handled), and ``residual_t = ‖x_t - Bᵀ c_t‖``. Computed in float64
    on the plane's device, a block of rows at a time (so a ``numpy.memmap`` or a
    :class:`~l2o_lib.subspace.Trajectory` works too); returned there as float64 tensors.

    Raises:
        ValueError: ``trajectory`` not ``(T, D)`` with the plane's ``D``, or ``d1`` and ``d2``
            linearly dependent (no unique coordinates).
    """
    if not isinstance(plane, Plane):
        raise ValueError(f"plane must be a Plane, got {type(plane).__name__}")
    traj = _checkpoints(trajectory)
    if traj.shape[1] != plane.dim:
        raise ValueError(f"trajectory has rows of size {traj.shape[1]}; the plane lives in D={plane.dim}")
    device = plane.origin.device
    dirs = torch.stack([plane.d1, plane.d2]).to(torch.float64)          # (2, D)
    origin = plane.origin.to(torch.float64)
    gram = dirs @ dirs.T
    # Rounding of the directions' own dtype bounds how well the Gram matrix is known.
    if float(torch.linalg.det(gram)) <= 64 * torch.finfo(plane.origin.dtype).eps * float(gram[0, 0] * gram[1, 1]):
        raise ValueError("plane directions d1 and d2 are zero or linearly dependent; no unique coordinates")
    rows = max(1, PROJECT_BLOCK_BYTES // (8 * plane.dim))
    coords, residual = [], []
    for lo in range(0, traj.shape[0], rows):
        part = traj[lo:lo + rows]
        part = torch.from_numpy(np.array(part)) if isinstance(part, np.ndarray) else part.detach()
        xs = part.to(device=device, dtype=torch.float64) - origin    # (t, D)
        c = torch.linalg.solve(gram, (xs @ dirs.T).T).T                # (t, 2)
        coords.append(c)
        residual.append(torch.linalg.vector_norm(xs - c @ dirs, dim=1))
    return Projection(torch.cat(coords), torch.cat(residual))
