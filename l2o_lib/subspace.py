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
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .config import check_int
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
        ValueError: ``checkpoints`` not ``(t, D)``, ``d`` not in ``1 … t - 1``, ``origin`` not
            ``(D,)``, ``block`` not a positive integer, non-finite checkpoints, or checkpoints
            that span fewer than ``d`` directions (beyond the rounding of their dtype).
    """
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
                      store: str | Path = "device", include_initial: bool = True, **train_kwargs):
    """Train with ``transform`` and keep a checkpoint every ``every`` steps (DLDR's sampling stage).

    Checkpoints are kept up to step ``sample_until`` (default: the whole run), so one run can both
    feed DLDR with its first epochs and go on to be the full-length baseline.

    Returns ``(history, trajectory)``; ``history`` is :func:`~l2o_lib.training.train_flat`'s,
    ``trajectory`` holds ``sample_until // every`` checkpoints (plus the initial point when
    ``include_initial``). Extra keyword arguments go to ``train_flat`` (``eval_data`` …).
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

    history = train_flat(model, transform, sampler, steps=steps, theta=theta0, on_step=keep, **train_kwargs)
    return history, traj


# ------------------------------------------------------------------------------------- LoRA
__all__ += ["LoRASpace", "LoRAState", "lora_space", "lora_dagger"]


class _LoRATarget(NamedTuple):
    name: str    # parameter name, e.g. "blocks.0.attn.q.weight"
    start: int   # offset of the weight's segment in theta
    out: int     # rows of W
    inp: int     # columns of W
    z_start: int  # offset of this target's [A, B] block in z


class LoRASpace:
    """LoRA coordinates (Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, 2021).

    Every targeted weight ``W`` (``out × in``, a segment of the flat ``theta``) is
    reparameterised as

        ``W(A, B) = W0 + s · B A``,   ``A`` ``(r × in)``, ``B`` ``(out × r)``, ``s = alpha / r``,

    and every other entry of ``theta`` stays frozen at ``origin`` (``θ0``). The coordinates
    ``z`` concatenate, target by target in parameter order, ``A.flatten()`` then
    ``B.flatten()``, so ``dim = Σ r·(in + out)``.

    Unlike :class:`Subspace` this is not a linear (affine) subspace: ``lift`` is bilinear in
    ``(A, B)``, its image is the set of ``θ0 + low-rank`` changes, and there is no projection.
    The chain rule therefore needs the current point: with ``G = ∂L/∂W`` (the gradient segment
    reshaped ``out × in``),

        ``∂L/∂A = s · Bᵀ G``,   ``∂L/∂B = s · G Aᵀ``

    (:meth:`pullback`, i.e. ``J(z)ᵀ g``). Build it with :func:`lora_space`; train in it with
    :func:`lora_dagger`.

    Attributes:
        origin: ``(D,)`` the frozen parameters ``θ0``.
        targets: the targeted weights (name, offsets, shape).
        rank: ``r``.
        alpha: LoRA's ``alpha``; ``scale = alpha / r``.
        seed: seed of :meth:`init`'s random ``A``.
    """

    def __init__(self, origin: Tensor, targets: list[_LoRATarget], rank: int, alpha: float, seed: int = 0):
        if origin.dim() != 1:
            raise ValueError(f"origin must be (D,), got shape {tuple(origin.shape)}")
        self.origin = origin
        self.targets = list(targets)
        self.rank = rank
        self.alpha = float(alpha)
        self.scale = self.alpha / rank
        self.seed = seed
        # Positions in theta of every targeted entry, in the order lift() concatenates the weight
        # changes: one index_add writes all of them (the targets are few, their entries are not).
        self._index = torch.cat([torch.arange(t.start, t.start + t.out * t.inp)
                                 for t in self.targets]).to(origin.device)
        # Sizes of the A and B blocks of z, alternating, for one torch.split.
        self._sizes = [n for t in self.targets for n in (rank * t.inp, t.out * rank)]

    @property
    def dim(self) -> int:
        """Number of LoRA coordinates, ``Σ r·(in + out)`` over the targets."""
        return sum(self._sizes)

    @property
    def ambient_dim(self) -> int:
        """``D``, the size of a full parameter vector."""
        return self.origin.shape[0]

    @property
    def names(self) -> list[str]:
        """Names of the targeted weights, in ``z``'s order."""
        return [t.name for t in self.targets]

    def init(self) -> Tensor:
        """Standard LoRA start ``z0``: ``A`` uniform in ``±1/√in`` (``nn.Linear``'s Kaiming-uniform
        with ``a=√5``), seeded, and ``B = 0``, so that ``lift(z0) == origin`` exactly while the
        gradient with respect to ``B`` (``s·G Aᵀ``) is not zero (with ``A = B = 0`` both partial
        derivatives would vanish and training could not start)."""
        # Drawn on the CPU with its own generator, then moved: the same z0 on every device, and
        # the global RNG is left alone.
        g = torch.Generator().manual_seed(self.seed)
        parts = []
        for t in self.targets:
            bound = 1.0 / float(np.sqrt(t.inp))
            parts.append((torch.rand(self.rank * t.inp, generator=g) * 2 - 1) * bound)
            parts.append(torch.zeros(t.out * self.rank))
        return torch.cat(parts).to(self.origin)

    def factors(self, z: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Views ``(A, B)`` of ``z``, one pair per target: ``A`` ``(r × in)``, ``B`` ``(out × r)``."""
        self._check_z(z)
        blocks = torch.split(z, self._sizes)
        return [(blocks[2 * i].view(self.rank, t.inp), blocks[2 * i + 1].view(t.out, self.rank))
                for i, t in enumerate(self.targets)]

    def weight_deltas(self, z: Tensor) -> dict[str, Tensor]:
        """The change ``s · B A`` (``out × in``, rank ≤ r) of every targeted weight."""
        return {t.name: self.scale * (B @ A) for t, (A, B) in zip(self.targets, self.factors(z))}

    def lift(self, z: Tensor) -> Tensor:
        """``θ(z)``: ``origin`` with each targeted segment replaced by ``W0 + s · B A``.

        Differentiable in ``z`` (and in ``origin``); entries outside the targets are ``origin``'s
        own, bit for bit, and ``lift(init()) == origin`` exactly (``B = 0``).
        """
        delta = torch.cat([d.reshape(-1) for d in self.weight_deltas(z).values()])
        # Out of place: origin is never modified, and the graph reaches z through delta.
        return self.origin.index_add(0, self._index, delta)

    def pullback(self, grad: Tensor, z: Tensor) -> Tensor:
        """Gradient with respect to the coordinates: ``J(z)ᵀ grad`` in closed form.

        For each target, with ``G`` the ``(out × in)`` segment of ``grad``:
        ``∂L/∂A = s · Bᵀ G`` and ``∂L/∂B = s · G Aᵀ``, laid out like ``z``. Gradient entries
        of non-targeted parameters do not matter (they are frozen).
        """
        if grad.dim() != 1 or grad.shape[0] != self.ambient_dim:
            raise ValueError(f"grad has shape {tuple(grad.shape)}; this LoRA space lives in D={self.ambient_dim}")
        parts = []
        for t, (A, B) in zip(self.targets, self.factors(z)):
            G = grad[t.start:t.start + t.out * t.inp].view(t.out, t.inp)
            parts.append((self.scale * (B.T @ G)).reshape(-1))
            parts.append((self.scale * (G @ A.T)).reshape(-1))
        return torch.cat(parts)

    def to(self, device=None, dtype=None) -> "LoRASpace":
        """Move (or cast) the origin."""
        return LoRASpace(self.origin.to(device=device, dtype=dtype), self.targets, self.rank, self.alpha, self.seed)

    def _check_z(self, z: Tensor) -> None:
        if z.dim() != 1 or z.shape[0] != self.dim:
            raise ValueError(f"coordinates have shape {tuple(z.shape)}; this LoRA space has dim={self.dim}")


def lora_space(model, *, rank: int = 16, targets: str | tuple[str, ...] | list[str] = ("q", "v"),
               alpha: float | None = None, origin: Tensor | None = None, seed: int = 0) -> LoRASpace:
    """LoRA coordinates for the 2-D weights of ``model`` (a :class:`~l2o_lib.functional.FlatModel`)
    whose parameter names end with ``.{t}.weight`` for ``t`` in ``targets``.

    The SL2O setting for ViTs is the default: ``rank=16`` on the query and value projections
    (``blocks.{i}.attn.q`` / ``.v`` of :class:`~l2o_lib.models.ViTTiny`).

    Args:
        model: the flat view of the network (its layout locates the weights in ``theta``).
        rank: ``r``, 1 … ``min(out, in)`` of every target.
        targets: module-name suffixes (a single string is one target); each must match at least
            one 2-D weight.
        alpha: LoRA's ``alpha``; ``None`` means ``alpha = r`` (``scale = 1``, Hu et al. set alpha
            to the first r tried and do not tune it).
        origin: the frozen ``θ0``, ``(D,)`` (default: ``model.flatten()``).
        seed: seed of the random ``A`` of :meth:`LoRASpace.init`.

    Raises:
        ValueError: ``rank`` not an integer in 1 … ``min(out, in)``, a target that matches no 2-D
            weight (the message lists the available ones), ``alpha`` not > 0, ``origin`` not
            ``(D,)``.
    """
    check_int("rank", rank)
    check_int("seed", seed, minimum=0)
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, (tuple, list)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}")
    if alpha is None:
        alpha = float(rank)
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 or None, got {alpha!r}")
    if origin is None:
        origin = model.flatten()
    elif not isinstance(origin, Tensor) or tuple(origin.shape) != (model.dim,):
        shape = tuple(origin.shape) if isinstance(origin, Tensor) else type(origin).__name__
        raise ValueError(f"origin must be a tensor of shape ({model.dim},), got {shape}")
    # Offsets of every parameter in theta; "." prefix so that a top-level "q.weight" matches too.
    starts = np.cumsum([0] + list(model.numels[:-1])).tolist()
    linear = [(n, s, tuple(shape)) for n, s, shape in zip(model.names, starts, model.shapes)
              if len(shape) == 2 and n.endswith(".weight")]
    chosen, unmatched = [], []
    for t in targets:
        hits = [w for w in linear if ("." + w[0]).endswith(f".{t}.weight")]
        if hits:
            chosen.extend(hits)
        else:
            unmatched.append(t)
    if unmatched:
        raise ValueError(f"targets {unmatched!r} match no 2-D weight; available Linear weights: "
                         f"{[n for n, _, _ in linear]}")
    # Parameter order (not target order), each weight once even if two targets name it.
    chosen = sorted(set(chosen), key=lambda w: w[1])
    for name, _, (out, inp) in chosen:
        if rank > min(out, inp):
            raise ValueError(f"rank={rank} must be <= min(out, in) = {min(out, inp)} for {name} ({out}×{inp})")
    specs, z_start = [], 0
    for name, start, (out, inp) in chosen:
        specs.append(_LoRATarget(name, start, out, inp, z_start))
        z_start += rank * (out + inp)
    return LoRASpace(origin, specs, rank, alpha, seed)


class LoRAState(NamedTuple):
    z: Tensor        # current LoRA coordinates (all A's and B's)
    inner: object    # the wrapped optimizer's state


def lora_dagger(inner: Transform, space: LoRASpace) -> Transform:
    """Run ``inner`` on the LoRA coordinates of ``space`` (the LoRA analogue of :func:`dagger`).

    A step: ``g_z = J(z)ᵀ g`` (:meth:`LoRASpace.pullback`), ``dz = inner(g_z)`` with ``inner``
    seeing ``z`` as its parameters (so weight decay pulls ``A`` and ``B`` to zero, as in LoRA),
    ``z ← z + dz``, and the returned change is ``delta = lift(z) − theta``. Since ``lift`` is
    not linear, the step in ``theta`` is recomputed from the new point rather than mapped from
    ``dz``; as ``theta + delta`` re-anchors on ``lift(z)`` every step, rounding does not
    accumulate, and frozen entries (where ``lift(z) == origin == theta``) get exactly zero.

    Training starts at ``lift(init()) == space.origin``: ``init(theta)`` raises ``ValueError``
    unless ``theta`` is within 1e-6 of it (build the space with ``origin=theta``).
    """

    def init(theta: Tensor) -> LoRAState:
        z = space.init()
        start = space.lift(z)
        # One host synchronisation, at init only: a mismatch would make the first delta jump.
        if theta.shape != start.shape or not torch.allclose(theta.detach(), start, rtol=0, atol=1e-6):
            raise ValueError("theta must equal the LoRA space's origin (training starts at lift(init()) = origin); "
                             "build the space with origin=theta")
        return LoRAState(z, inner.init(z))

    def update(grad: Tensor, state: LoRAState, theta: Tensor, step: int):
        dz, inner_state = inner.update(space.pullback(grad, state.z), state.inner, state.z, step)
        z = state.z + dz
        return space.lift(z) - theta, LoRAState(z, inner_state)

    return Transform(init, update)
