"""Affine subspaces of parameter space: DLDR (PCA of a training trajectory), random, and the
"†" optimizers that run in subspace coordinates.

A :class:`Subspace` is ``theta = origin + basisᵀ z`` with ``basis`` of shape ``(d, D)`` and
orthonormal rows (the paper's ``P = [e_1 … e_d]`` is ``basisᵀ``). Rows, not columns, so that both
``basis @ g`` (project a gradient) and ``z @ basis`` (lift a step) read memory contiguously.

DLDR (Li et al., *Low dimensional trajectory hypothesis is true: DNNs can be trained in tiny
subspaces*, Algorithm 1): with ``t`` sampled parameter vectors ``w_1 … w_t`` centred at their
mean, ``W = [w_i - w̄]``, eigendecompose the ``t × t`` Gram matrix ``WᵀW = V Σ² Vᵀ`` and set
``u_i = W v_i / σ_i``. Everything is computed in column blocks of ``W``, so checkpoints may live
on the device or in a memory-mapped file on disk (:class:`Trajectory` with ``store=path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .config import check_int, check_seed
from .optim.base import Transform

__all__ = ["Subspace", "dldr", "random_subspace", "dagger", "DaggerState", "Trajectory", "sample_trajectory"]

# Columns of W handled at a time (``block=None``): on accelerators at most BLOCK, which bounds the
# temporary memory to t × BLOCK floats; on the CPU a float64 block of about CPU_BLOCK_BYTES, so
# that it stays in cache between the conversion, the centring and the Gram update (measured:
# about half the time of one big block for ResNet-20's size).
BLOCK = 1 << 20
CPU_BLOCK_BYTES = 1 << 23


@dataclass
class Subspace:
    """``theta = origin + basisᵀ z``.

    Attributes:
        origin: ``(D,)`` point the coordinates are measured from.
        basis: ``(d, D)`` with orthonormal rows.
        explained_variance_ratio: ``(d,)`` share of the trajectory's variance along each row
            (DLDR only; of the *whole* variance, so the entries sum to at most 1).
        singular_values: ``(d,)`` the ``σ_i`` of DLDR.
    """

    origin: Tensor
    basis: Tensor
    explained_variance_ratio: Tensor | None = None
    singular_values: Tensor | None = None

    def __post_init__(self) -> None:
        if self.basis.dim() != 2 or self.origin.dim() != 1 or self.basis.shape[1] != self.origin.shape[0]:
            raise ValueError(f"basis must be (d, D) and origin (D,); got {tuple(self.basis.shape)} "
                             f"and {tuple(self.origin.shape)}")

    @property
    def dim(self) -> int:
        """``d``, the number of coordinates."""
        return self.basis.shape[0]

    @property
    def ambient_dim(self) -> int:
        """``D``, the size of a full parameter vector."""
        return self.basis.shape[1]

    def project(self, theta: Tensor) -> Tensor:
        """Coordinates ``z = basis (theta - origin)``; ``theta`` may carry leading batch dims."""
        self._check(theta)
        return (theta - self.origin) @ self.basis.T

    def lift(self, z: Tensor) -> Tensor:
        """The point ``origin + basisᵀ z`` (``z`` may carry leading batch dims)."""
        return self.origin + self.lift_delta(z)

    def project_grad(self, grad: Tensor) -> Tensor:
        """Gradient with respect to the coordinates: ``basis grad`` (the chain rule)."""
        self._check(grad)
        return grad @ self.basis.T

    def lift_delta(self, dz: Tensor) -> Tensor:
        """A step in coordinates as a step in parameter space: ``basisᵀ dz``."""
        if dz.shape[-1] != self.dim:
            raise ValueError(f"coordinates have size {dz.shape[-1]}; this subspace has d={self.dim}")
        return dz @ self.basis

    def orthogonal_part(self, v: Tensor) -> Tensor:
        """``v - basisᵀ basis v``: the component of ``v`` outside the subspace."""
        return v - self.lift_delta(self.project_grad(v))

    def reconstruct(self, theta: Tensor) -> Tensor:
        """The closest point of the subspace: ``lift(project(theta))``."""
        return self.lift(self.project(theta))

    def top(self, d: int) -> "Subspace":
        """The first ``d`` directions (for DLDR the ``d`` of largest variance) through the same origin."""
        check_int("d", d)
        if d > self.dim:
            raise ValueError(f"d={d} must be <= {self.dim}, the directions this subspace has")
        cut = lambda t: None if t is None else t[:d]
        return Subspace(self.origin, self.basis[:d], cut(self.explained_variance_ratio), cut(self.singular_values))

    def relative_error(self, theta: Tensor) -> Tensor:
        """``‖reconstruct(θ) − θ‖ / ‖θ − origin‖`` per row of ``theta``: 0 for a point of the subspace,
        1 for one orthogonal to it (a point at the origin counts as 0, not 0 / 0)."""
        gap = (self.reconstruct(theta) - theta).norm(dim=-1)
        return gap / (theta - self.origin).norm(dim=-1).clamp_min(1e-12)

    def with_origin(self, origin: Tensor) -> "Subspace":
        """The same directions through another point (P-BFGS restarts from the initial weights)."""
        return Subspace(origin.to(self.basis), self.basis, self.explained_variance_ratio, self.singular_values)

    def to(self, device=None, dtype=None) -> "Subspace":
        """Move (or cast) every tensor."""
        mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        return Subspace(mv(self.origin), mv(self.basis), mv(self.explained_variance_ratio), mv(self.singular_values))

    def _check(self, v: Tensor) -> None:
        if v.shape[-1] != self.ambient_dim:
            raise ValueError(f"vector has size {v.shape[-1]}; this subspace lives in D={self.ambient_dim}")


def _blocks(n: int, block: int):
    for start in range(0, n, block):
        yield start, min(start + block, n)


def _rows(checkpoints, start: int, stop: int, device, dtype, *, copy: bool = False) -> Tensor:
    """Columns ``start:stop`` of the checkpoints as a tensor; ``copy=True`` guarantees fresh memory
    (never a view of the caller's tensor or of the memmap), for in-place work."""
    part = checkpoints[:, start:stop]
    if isinstance(part, np.ndarray):
        part = torch.from_numpy(np.ascontiguousarray(part))
    return part.to(device=device, dtype=dtype, copy=copy)


def _auto_block(t: int, device: torch.device) -> int:
    if device.type == "cpu":
        return max(256, CPU_BLOCK_BYTES // (8 * t))
    return BLOCK


def _storage_eps(checkpoints) -> float:
    """Machine epsilon of the checkpoints' own dtype (float32 for anything not floating)."""
    try:
        if isinstance(checkpoints, Tensor):
            return float(torch.finfo(checkpoints.dtype).eps)
        return float(np.finfo(checkpoints.dtype).eps)
    except (TypeError, ValueError):
        return float(torch.finfo(torch.float32).eps)


def dldr(checkpoints: Tensor | np.ndarray, d: int, *, origin: Tensor | None = None,
         device: str | torch.device | None = None, block: int | None = None) -> Subspace:
    """DLDR: the top-``d`` PCA subspace of ``t`` checkpoints (rows of ``checkpoints``, ``(t, D)``).

    The mean and the ``t × t`` Gram matrix of the centred checkpoints are accumulated in float64
    (exact centring, so float32 rounding of the mean adds no spurious direction); the basis rows
    ``u_i = W v_i / σ_i`` are formed in float32.

    Args:
        checkpoints: a tensor, or a ``numpy.memmap`` from :class:`Trajectory` for models whose
            checkpoints do not fit in memory (read one column block at a time).
        d: number of directions; at most ``t - 1`` (centring removes one dimension).
        origin: the subspace's origin, ``(D,)`` (default: the checkpoints' mean ``w̄``).
        device: where the basis is computed and returned (default: the checkpoints' device).
        block: columns of ``W`` read at a time (default: cache-sized on the CPU, ``BLOCK`` on
            accelerators). The result does not depend on it beyond rounding.

    Returns:
        a :class:`Subspace` whose ``explained_variance_ratio`` are ``σ_i² / Σ_j σ_j²``.

    Raises:
        ValueError: ``checkpoints`` not a ``(t, D)`` tensor or array, ``d`` not in ``1 … t - 1``,
            ``origin`` not ``(D,)``, ``block`` not a positive integer, non-finite checkpoints, or checkpoints
            that span fewer than ``d`` directions (beyond the rounding of their dtype).
    """
    if not isinstance(checkpoints, (Tensor, np.ndarray)):
        raise ValueError(f"checkpoints must be a (t, D) tensor or numpy array, got {type(checkpoints).__name__}; "
                         "stack a list with torch.stack")
    if checkpoints.ndim != 2:
        raise ValueError(f"checkpoints must be (t, D), got shape {tuple(checkpoints.shape)}")
    t, D = checkpoints.shape
    check_int("d", d)
    if d > t - 1:
        raise ValueError(f"d={d} must be <= t - 1 = {t - 1} (t={t} checkpoints, centred)")
    if origin is not None and (not isinstance(origin, Tensor) or tuple(origin.shape) != (D,)):
        shape = tuple(origin.shape) if isinstance(origin, Tensor) else type(origin).__name__
        raise ValueError(f"origin must be a tensor of shape ({D},), got {shape}")
    device = torch.device(device) if device is not None else (
        checkpoints.device if isinstance(checkpoints, Tensor) else torch.device("cpu"))
    block = _auto_block(t, device) if block is None else check_int("block", block)
    dtype = torch.float32
    # Pass 1: mean and Gram matrix of the centred checkpoints, block by block, in float64.
    mean = torch.empty(D, device=device, dtype=torch.float64)
    gram = torch.zeros(t, t, device=device, dtype=torch.float64)
    for a, b in _blocks(D, block):
        W = _rows(checkpoints, a, b, device, torch.float64, copy=True)  # centred in place below
        mean[a:b] = W.mean(0)
        W -= mean[a:b]
        gram.addmm_(W, W.T)
    if not bool(torch.isfinite(gram).all()):
        raise ValueError("checkpoints contain NaN or inf")
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    # Directions no larger than the rounding of the stored checkpoints (‖E‖₂ ≤ eps/2 · ‖W_raw‖_F
    # for the raw, uncentred checkpoints) are noise, not trajectory.
    raw_sq = gram.trace() + t * mean.square().sum()
    noise = max(float(evals[0]) * 1e-12, _storage_eps(checkpoints) ** 2 * float(raw_sq))
    if float(evals[d - 1]) <= noise:
        raise ValueError(f"the checkpoints span fewer than d={d} directions; use a smaller d or more checkpoints")
    sigma = evals[:d].sqrt()
    coeff = (evecs[:, :d] / sigma).T.to(dtype)  # (d, t): u_i = W v_i / σ_i
    mean = mean.to(dtype)
    # Pass 2: the basis rows, block by block.
    basis = torch.empty(d, D, device=device, dtype=dtype)
    for a, b in _blocks(D, block):
        torch.mm(coeff, _rows(checkpoints, a, b, device, dtype) - mean[a:b], out=basis[:, a:b])
    ratio = (evals[:d] / evals.sum()).to(dtype)
    return Subspace(mean if origin is None else origin.to(device=device, dtype=dtype), basis, ratio, sigma.to(dtype))


def random_subspace(ambient_dim: int, d: int, *, origin: Tensor | None = None, seed: int = 0,
                    device: str | torch.device = "cpu") -> Subspace:
    """A uniformly random ``d``-dimensional subspace (QR of a Gaussian matrix), through ``origin``
    (zeros by default)."""
    check_int("ambient_dim", ambient_dim)
    check_int("d", d)
    check_seed("seed", seed)
    if d > ambient_dim:
        raise ValueError(f"d={d} must be <= ambient_dim={ambient_dim}")
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(ambient_dim, d, generator=g, dtype=torch.float64))
    basis = q.T.to(device=device, dtype=torch.float32).contiguous()
    # The origin takes the basis's device and dtype (as in Subspace.with_origin), so that
    # project() works for a float64 origin too.
    origin = torch.zeros_like(basis[0]) if origin is None else origin.to(basis)
    return Subspace(origin, basis)


class DaggerState(NamedTuple):
    z: Tensor        # current coordinates
    inner: object    # the wrapped optimizer's state


def dagger(inner: Transform, subspace: Subspace) -> Transform:
    """``optimizer†``: run ``inner`` on the subspace coordinates of the parameters.

    The gradient is projected (``g_z = basis g``), ``inner`` updates the coordinates, and the step
    is lifted back (``delta = basisᵀ dz``). The coordinates are tracked in the state, so a step
    costs one projection and one lift. With a full-dimensional subspace and an identity basis
    this is exactly ``inner`` (tested).
    """

    def init(theta: Tensor) -> DaggerState:
        z = subspace.project(theta)
        return DaggerState(z, inner.init(z))

    def update(grad: Tensor, state: DaggerState, theta: Tensor, step: int):
        dz, inner_state = inner.update(subspace.project_grad(grad), state.inner, state.z, step)
        return subspace.lift_delta(dz), DaggerState(state.z + dz, inner_state)

    return Transform(init, update)


class Trajectory:
    """Parameter checkpoints of a training run, for DLDR.

    ``store="device"`` keeps a ``(t, D)`` tensor on the parameters' device; a path streams each
    checkpoint into a float32 ``numpy.memmap`` there, for models whose checkpoints do not fit
    (``dldr`` reads it back one column block at a time).

    Args:
        capacity: maximum number of checkpoints ``t``.
        dim: ``D``.
        store: ``"device"`` or a file path.
        device: device of the in-memory store.
    """

    def __init__(self, capacity: int, dim: int, *, store: str | Path = "device",
                 device: str | torch.device = "cpu"):
        check_int("capacity", capacity)
        check_int("dim", dim)
        self.count = 0
        self.steps: list[int] = []
        if store == "device":
            self._data = torch.empty(capacity, dim, device=device)
        else:
            path = Path(store)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(capacity, dim))

    def append(self, theta: Tensor, step: int) -> None:
        """Store a copy of ``theta`` taken after ``step`` updates."""
        if self.count >= len(self._data):
            raise ValueError(f"trajectory is full (capacity {len(self._data)})")
        if isinstance(self._data, Tensor):
            self._data[self.count].copy_(theta.detach())
        else:
            self._data[self.count] = theta.detach().cpu().numpy()
        self.steps.append(step)
        self.count += 1

    @property
    def checkpoints(self) -> Tensor | np.ndarray:
        """The ``(count, D)`` checkpoints stored so far (a view, not a copy)."""
        if not isinstance(self._data, Tensor):
            self._data.flush()
        return self._data[: self.count]

    def __len__(self) -> int:
        return self.count


def sample_trajectory(model, transform: Transform, sampler, *, steps: int, every: int,
                      sample_until: int | None = None, theta: Tensor | None = None,
                      store: str | Path = "device", include_initial: bool = True,
                      on_step: Callable[[int, Tensor], None] | None = None, **train_kwargs):
    """Train with ``transform`` and keep a checkpoint every ``every`` steps (DLDR's sampling stage).

    Checkpoints are kept up to step ``sample_until`` (default: the whole run), so one run can both
    feed DLDR with its first epochs and go on to be the full-length baseline.

    Returns ``(history, trajectory)``; ``history`` is :func:`~l2o_lib.training.train_flat`'s,
    ``trajectory`` holds ``sample_until // every`` checkpoints (plus the initial point when
    ``include_initial``). ``on_step(k, theta)``, if given, runs after each step's checkpointing (e.g.
    a wall clock per phase). Extra keyword arguments go to ``train_flat`` (``eval_data`` …).
    """
    from .training import train_flat

    check_int("steps", steps)
    check_int("every", every)
    sample_until = steps if sample_until is None else check_int("sample_until", sample_until)
    if sample_until > steps:
        raise ValueError(f"sample_until={sample_until} must be <= steps={steps}")
    if every > sample_until:
        raise ValueError(f"every={every} must be <= sample_until={sample_until} (the sampled steps)")
    theta0 = model.flatten() if theta is None else theta
    traj = Trajectory(sample_until // every + int(include_initial), model.dim, store=store, device=theta0.device)
    if include_initial:
        traj.append(theta0, 0)

    def keep(k: int, th: Tensor) -> None:
        if k % every == 0 and k <= sample_until:
            traj.append(th, k)
        if on_step is not None:
            on_step(k, th)

    history = train_flat(model, transform, sampler, steps=steps, theta=theta0, on_step=keep, **train_kwargs)
    return history, traj
