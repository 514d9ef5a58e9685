"""LoRA coordinates: train low-rank updates ``W = W0 + (alpha / r)·B·A`` of chosen weights.

Unlike a :class:`~l2o_lib.subspace.Subspace` this reparameterisation is not linear (``W``
depends on products of coordinates), so it has its own ``lift`` and a closed-form ``pullback``
of gradients; :func:`lora_dagger` runs any optimizer on the LoRA coordinates, as
:func:`~l2o_lib.subspace.dagger` does for linear subspaces. SL2O uses it on the attention
projections of the tiny ViT (r = 16, targets ``q`` and ``v``).
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from .config import check_int, check_seed
from .optim.base import Transform

__all__ = ["LoRASpace", "LoRAState", "lora_space", "lora_dagger"]



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
        check_seed("seed", seed)
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
            bound = 1.0 / math.sqrt(t.inp)
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
    check_seed("seed", seed)
    if isinstance(targets, str):
        targets = (targets,)
    if not isinstance(targets, (tuple, list)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"targets must be a non-empty sequence of module names, got {targets!r}")
    if alpha is None:
        alpha = float(rank)
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a finite number > 0 or None, got {alpha!r}")
    if origin is None:
        origin = model.flatten()
    elif not isinstance(origin, Tensor) or tuple(origin.shape) != (model.dim,):
        shape = tuple(origin.shape) if isinstance(origin, Tensor) else type(origin).__name__
        raise ValueError(f"origin must be a tensor of shape ({model.dim},), got {shape}")
    # Offsets of every parameter in theta; "." prefix so that a top-level "q.weight" matches too.
    starts = [0, *itertools.accumulate(model.numels[:-1])]
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
