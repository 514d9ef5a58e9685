"""L3RS: a learned per-layer mix of base optimizers for fine-tuning (Narrowing the Focus, Sec. 4).

For every layer ``l`` (one parameter tensor: kernels and biases are separate layers, as in the
paper) and base optimizers ``p`` (SGD and Adam by default)::

    delta_l = lambda_l * sum_p mu_{l,p} * d_{l,p} / ||d_{l,p}||            (paper eq. 2)

where ``d_{l,p}`` is base optimizer ``p``'s update direction on layer ``l`` (its step with LR 1,
e.g. ``-g`` for SGD, ``-m_hat / (sqrt(v_hat) + eps)`` for Adam), ``mu_{l,.}`` is a softmax over
the bases and ``lambda_l > 0`` the length of the layer's update. A two-layer ReLU MLP shared by
all layers maps each layer's feature row to ``(log-scale, mu logits)``. Features (paper 4.1):

* EMAs at three decays of the layer's log weight norm, log gradient norm and of the loss (shared
  by all layers), bias-corrected ``e_t / (1 - beta^t)``: ``3 + 3 + 3`` values;
* relative time ``tanh(s * (t/T - r_i))`` for ``r_i`` evenly spaced in ``[0, 1]``;
* absolute time ``tanh(T / x_j)`` for ``x_j`` log-spaced in ``[10, 10^4]`` (an encoding of the
  run length ``T``, which the optimizer must be told up front, as for a cosine schedule);
* a learned 16-d embedding of the layer;
* ``log ||d_{l,p}||`` of every base direction.

Everything is a tensor program over all layers at once: per-layer norms come from one
``index_add`` over segment ids (:func:`l2o_lib.optim.segment_ids`), the MLP runs on the ``(L, F)``
feature matrix and the mix is gathered back to the flat vector; there is no Python loop over
layers. The meta-parameters are ONE flat vector ``phi`` (:func:`init_phi`, layout
:meth:`L3RSConfig.layout`), so NES (:func:`l2o_lib.meta.nes_train`) perturbs a vector and a
population of optimizers is ``vmap`` over rows of ``phi``.

Choices where the paper is silent (each one is tested in ``tests/test_l3rs.py``):

* ``lambda_l = base_lr * sqrt(n_l) * exp(B * tanh(o_l / B))`` with ``n_l`` the layer's size and
  ``B = max_log_scale`` (5). ``base_lr`` is thus a per-entry RMS step, comparable to an Adam LR
  (Adam's step has RMS about its LR), whatever the layer's size; the bounded exponent keeps any
  ``phi`` NES tries within ``e^{+-B}`` of it (STYLE: bound learned steps).
* Adam's betas are meta-learned as ``sigmoid(phi_beta)`` (initialised at 0.9 / 0.999); the other
  bases keep their defaults: Lion (0.9, 0.99), Adamax and LAMB (0.9, 0.999), built from
  :mod:`l2o_lib.optim` with LR 1. LAMB's per-layer trust ratio is one number per layer, so it
  cancels in ``d / ||d||``: the LAMB direction equals Adam's with eps 1e-6 and fixed betas.
  ``weight_decay`` is the direction ``-theta``.
* EMA decays (0.5, 0.9, 0.99); MLP width 32; 5 relative and 4 absolute time features,
  sharpness 10; the output layer starts small (std 0.01) with zero bias, so an untrained
  ``phi`` is an even mix of the normalised bases with per-entry step ``base_lr``.
* A zero direction (a frozen layer, ``||d|| = 0``) contributes nothing instead of NaN.
* The loss comes in as ``update(..., loss=)``; pass it at every step (the adapter
  :class:`L3RS` takes it from the closure or ``step(loss=...)``). Without it the loss features
  stay 0.
* Past ``step >= T`` the time features stay at their last value (``t/T`` clamped to 1).
* Fitness for NES is minus the mean mini-batch training loss over the inner fine-tuning run:
  it rewards fast descent and a low end, costs nothing extra, and non-finite runs rank last.
  (The paper uses the loss on one evaluation batch after ``K`` steps.)
* The inner loop runs the model in eval mode: BatchNorm statistics of the pretrained backbone
  stay frozen, so nothing is written in place under ``vmap`` (see DESIGN, performance).
* ``phi`` holds one embedding row per layer, so a trained optimizer belongs to one layer layout
  (architecture); other layouts raise ``ValueError`` naming ``segments``.

Fine-tuning tasks (:class:`TaskFamily`): a backbone is pretrained on source classes
(:func:`pretrain_backbone`, cached under ``data/l3rs/``), then fine-tuned with a fresh head on
``k``-class subsets of held-out classes; meta-train and meta-test tasks draw from disjoint class
pools.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from .config import check_choice, check_int, check_positive, check_probability, check_seed, check_seeds
from .data import ArrayData, BatchSampler, Dataset, class_subset
from .finite import check_on_nonfinite
from .functional import FlatModel
from .models import build_model
from .optim import FlatOptimizer, Transform, adam, adamax, lamb, lion, segment_ids
from .optim.baselines import AdamState, MomentumState
from .results import atomic_torch_save
from .training import History, mean_train_loss, progress, run_loop

__all__ = [
    "BASES", "feature_names", "L3RSConfig", "L3RSState", "init_phi", "unpack_phi", "policy", "combine", "l3rs", "L3RS",
    "features_dim", "finetune", "population_losses", "population_fitness",
    "pretrain_backbone", "FinetuneTask", "TaskFamily", "head_only", "baseline_factories",
    "tune_baselines", "compare_methods", "family_from_setup", "speedup_records", "Trained",
]

BASES = ("sgd", "adam", "lion", "lamb", "adamax", "weight_decay")
_TINY = 1e-12  # floor of a norm before a log or a division (a zero direction gives 0, not NaN)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class L3RSConfig:
    """Architecture of the learned optimizer; ``phi``'s layout follows from it.

    Args:
        n_layers: number of parameter tensors ``L`` of the model it optimizes.
        bases: base optimizers, names from :data:`BASES` (paper default ``("sgd", "adam")``).
        hidden: width of the MLP's two hidden layers.
        embed_dim: size of the learned per-layer embedding (paper: 16).
        ema_decays: the three EMA smoothing factors of the norm and loss features.
        n_rel: number of relative-time features; rel_sharpness: their slope ``s``.
        abs_scales: the ``x_j`` of the absolute-time features ``tanh(T / x_j)``.
        base_lr: per-entry RMS step at ``o_l = 0`` (see the module docstring).
        max_log_scale: bound ``B`` on ``|log(lambda_l / (base_lr sqrt(n_l)))|``.
        eps: Adam's epsilon.
    """

    n_layers: int
    bases: tuple = ("sgd", "adam")
    hidden: int = 32
    embed_dim: int = 16
    ema_decays: tuple = (0.5, 0.9, 0.99)
    n_rel: int = 5
    rel_sharpness: float = 10.0
    abs_scales: tuple = (10.0, 100.0, 1000.0, 10000.0)
    base_lr: float = 1e-3
    max_log_scale: float = 5.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_int("n_layers", self.n_layers)
        if not isinstance(self.bases, (tuple, list)) or not self.bases:
            raise ValueError(f"bases must be a non-empty tuple of names from {list(BASES)}, got {self.bases!r}")
        for b in self.bases:
            check_choice("bases", b, BASES)
        if len(set(self.bases)) != len(self.bases):
            raise ValueError(f"bases must be distinct, got {self.bases!r}")
        object.__setattr__(self, "bases", tuple(self.bases))
        check_int("hidden", self.hidden)
        check_int("embed_dim", self.embed_dim, minimum=0)
        if not isinstance(self.ema_decays, (tuple, list)) or not self.ema_decays:
            raise ValueError(f"ema_decays must be a non-empty tuple of decays in [0, 1), got {self.ema_decays!r}")
        for i, d in enumerate(self.ema_decays):
            check_probability(f"ema_decays[{i}]", d)
        object.__setattr__(self, "ema_decays", tuple(float(d) for d in self.ema_decays))
        check_int("n_rel", self.n_rel, minimum=0)
        check_positive("rel_sharpness", self.rel_sharpness)
        if not isinstance(self.abs_scales, (tuple, list)):
            raise ValueError(f"abs_scales must be a tuple of positive numbers, got {self.abs_scales!r}")
        for i, x in enumerate(self.abs_scales):
            check_positive(f"abs_scales[{i}]", x)
        object.__setattr__(self, "abs_scales", tuple(float(x) for x in self.abs_scales))
        check_positive("base_lr", self.base_lr)
        check_positive("max_log_scale", self.max_log_scale)
        check_positive("eps", self.eps)

    @property
    def n_bases(self) -> int:
        """``P``, the number of base optimizers."""
        return len(self.bases)

    @property
    def n_features(self) -> int:
        """Length of one layer's feature row."""
        return 3 * len(self.ema_decays) + self.n_rel + len(self.abs_scales) + self.embed_dim + self.n_bases

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every block of ``phi``, in order."""
        f, h, p = self.n_features, self.hidden, self.n_bases
        blocks = [("w1", (f, h)), ("b1", (h,)), ("w2", (h, h)), ("b2", (h,)), ("w3", (h, 1 + p)), ("b3", (1 + p,)),
                  ("embedding", (self.n_layers, self.embed_dim))]
        if "adam" in self.bases:
            blocks.append(("adam_beta_logits", (2,)))
        return blocks

    @property
    def dim(self) -> int:
        """Number of meta-parameters (entries of ``phi``)."""
        return sum(math.prod(s) for _, s in self.layout())

    def as_dict(self) -> dict:
        """JSON-friendly fields (for checkpoints and :meth:`Trained.state`)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def features_dim(config: L3RSConfig) -> int:
    """Alias of ``config.n_features`` (the MLP's input width)."""
    return config.n_features


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def init_phi(config: L3RSConfig, *, seed: int = 0, betas: Sequence[float] = (0.9, 0.999)) -> Tensor:
    """A starting ``phi``: He-initialised hidden layers, a small output layer with zero bias (an even
    mix of the bases at step ``base_lr``), ``N(0, 1)`` embeddings and Adam betas ``betas``."""
    if not isinstance(config, L3RSConfig):
        raise ValueError(f"config must be an L3RSConfig, got {type(config).__name__}")
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for name, shape in config.layout():
        if name in ("w1", "w2"):
            parts.append(torch.randn(shape, generator=g) * math.sqrt(2.0 / shape[0]))
        elif name == "w3":
            parts.append(torch.randn(shape, generator=g) * 0.01)
        elif name == "embedding":
            parts.append(torch.randn(shape, generator=g))
        elif name == "adam_beta_logits":
            for i, b in enumerate(betas):
                check_probability(f"betas[{i}]", b)
                if b <= 0:
                    raise ValueError(f"betas[{i}] must be > 0 (it is meta-learned through a sigmoid), got {b!r}")
            parts.append(torch.tensor([_logit(float(b)) for b in betas]))
        else:
            parts.append(torch.zeros(shape))
    return torch.cat([p.reshape(-1) for p in parts])


def unpack_phi(phi: Tensor, config: L3RSConfig) -> dict[str, Tensor]:
    """Views of ``phi`` by block name (``w1`` … ``embedding``, ``adam_beta_logits``)."""
    if not isinstance(phi, Tensor) or phi.dim() != 1 or phi.numel() != config.dim:
        shape = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ValueError(f"phi must be a flat tensor of {config.dim} entries for this config, got {shape}")
    layout = config.layout()
    pieces = torch.split(phi, [math.prod(s) for _, s in layout])
    return {name: piece.view(shape) for (name, shape), piece in zip(layout, pieces)}


def policy(params: dict[str, Tensor], features: Tensor, max_log_scale: float) -> tuple[Tensor, Tensor]:
    """The shared MLP on the ``(L, F)`` feature matrix: ``(log_scale (L,), mu (L, P))``.

    ``log_scale = B tanh(o_0 / B)`` (bounded), ``mu = softmax(o_1..P)``.
    """
    h = torch.relu(features @ params["w1"] + params["b1"])
    h = torch.relu(h @ params["w2"] + params["b2"])
    out = h @ params["w3"] + params["b3"]
    log_scale = max_log_scale * torch.tanh(out[:, 0] / max_log_scale)
    return log_scale, torch.softmax(out[:, 1:], dim=-1)


def combine(directions: Tensor, norms: Tensor, lam: Tensor, mu: Tensor, ids: Tensor) -> Tensor:
    """Eq. 2 on a flat vector: ``delta = sum_p (lam_l mu_{l,p} / ||d_{l,p}||)[ids] * d_p``.

    Args:
        directions: ``(P, D)`` base directions; norms: ``(P, L)`` their per-layer norms;
        lam: ``(L,)``; mu: ``(L, P)``; ids: ``(D,)`` layer of every entry.
    """
    coef = lam[None, :] * mu.T / norms.clamp_min(_TINY)  # (P, L): per-layer weight of each direction
    # index_select, not coef[:, ids]: the same gather, ~5x faster under vmap (measured on the CPU).
    return (coef.index_select(1, ids) * directions).sum(0)


# --------------------------------------------------------------------------- the transform


class L3RSState(NamedTuple):
    """State of :func:`l3rs`: base states, EMAs and the last outputs (for plots).

    Attributes:
        base: one tuple of tensors per base optimizer (Adam: ``(m, v)``).
        ema: ``(L, 2, n_decays)`` raw EMAs of log weight norm and log grad norm.
        ema_loss: ``(n_decays,)`` raw EMAs of the loss.
        lam: ``(L,)`` the last update lengths; mu: ``(L, P)`` the last mixing coefficients.
    """

    base: tuple
    ema: Tensor
    ema_loss: Tensor
    lam: Tensor
    mu: Tensor


class _Consts(NamedTuple):
    """Per-layout constants of the update, built once on the device (not meta-parameters)."""

    ids: Tensor          # (D,) layer of every entry
    root_n: Tensor       # (L,) sqrt of layer sizes
    decays: Tensor       # (n_decays,)
    time_table: Tensor   # (T, n_rel + n_abs) time features of steps 0 .. T-1
    segments: tuple


def _time_table(config: L3RSConfig, total_steps: int, device) -> Tensor:
    # Computed once per run on the host and moved once: indexing it per step needs no transfer.
    t = torch.arange(1, total_steps + 1, dtype=torch.float64) / total_steps
    refs = torch.linspace(0, 1, config.n_rel, dtype=torch.float64) if config.n_rel else torch.zeros(0, dtype=torch.float64)
    rel = torch.tanh(config.rel_sharpness * (t[:, None] - refs[None, :]))
    scales = torch.tensor(config.abs_scales, dtype=torch.float64)
    absolute = torch.tanh(total_steps / scales).expand(total_steps, len(config.abs_scales))
    return torch.cat([rel, absolute], 1).to(device=device, dtype=torch.float32)


def _check_segments(segments: Any, config: L3RSConfig) -> tuple[int, ...]:
    if segments is None:
        raise ValueError("segments (the sizes of the model's parameter tensors, FlatModel.segments()) is required")
    segments = tuple(int(s) for s in segments)
    if not segments or min(segments) < 1:
        raise ValueError(f"segments must be a non-empty list of positive sizes, got {segments!r}")
    if len(segments) != config.n_layers:
        raise ValueError(f"segments has {len(segments)} layers but the config (and phi's embedding) has "
                         f"n_layers={config.n_layers}; an L3RS optimizer belongs to one layer layout")
    return segments


def _consts(config: L3RSConfig, segments: tuple, total_steps: int, device) -> _Consts:
    return _Consts(segment_ids(segments, device), torch.tensor(segments, dtype=torch.float32, device=device).sqrt(),
                   torch.tensor(config.ema_decays, dtype=torch.float32, device=device),
                   _time_table(config, total_steps, device), segments)


def _base_transforms(config: L3RSConfig, segments: tuple) -> dict[str, Transform]:
    # Fixed-hyper-parameter bases from the library (LR 1: only their directions matter).
    return {"lion": lion(1.0), "adamax": adamax(1.0), "lamb": lamb(1.0, segments=list(segments))}


_STATE_TYPES = {"lion": MomentumState, "adamax": AdamState, "lamb": AdamState}


def _init_state(config: L3RSConfig, theta: Tensor, bases: dict[str, Transform]) -> L3RSState:
    states = []
    for name in config.bases:
        if name == "adam":
            states.append((torch.zeros_like(theta), torch.zeros_like(theta)))
        elif name in bases:
            states.append(tuple(bases[name].init(theta)))
        else:
            states.append(())
    L, P, n = config.n_layers, config.n_bases, len(config.ema_decays)
    z = theta.new_zeros
    return L3RSState(tuple(states), z(L, 2, n), z(n), z(L), z(L, P))


def _directions(config: L3RSConfig, params: dict, grad: Tensor, state: L3RSState, theta: Tensor, step: int,
                bases: dict[str, Transform]) -> tuple[list[Tensor], tuple]:
    dirs, states = [], []
    for name, s in zip(config.bases, state.base):
        if name == "sgd":
            d, s = grad.neg(), ()
        elif name == "weight_decay":
            d, s = theta.neg(), ()
        elif name == "adam":
            beta = torch.sigmoid(params["adam_beta_logits"])  # tensors: each population member has its own
            b1, b2 = beta[0], beta[1]
            m = s[0] * b1 + grad * (1 - b1)
            v = s[1] * b2 + grad * grad * (1 - b2)
            t = step + 1
            d = -(m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + config.eps)
            s = (m, v)
        else:
            d, new = bases[name].update(grad, _STATE_TYPES[name](*s), theta, step)
            s = tuple(new)
        dirs.append(d)
        states.append(s)
    return dirs, tuple(states)


def feature_names(config: L3RSConfig) -> list[str]:
    """Names of the columns of the ``(L, F)`` feature matrix the policy sees, in order."""
    decays = [f"{d:g}" for d in config.ema_decays]
    return ([f"log_w_ema{d}" for d in decays] + [f"log_g_ema{d}" for d in decays] + [f"loss_ema{d}" for d in decays]
            + [f"rel_time{i}" for i in range(config.n_rel)] + [f"abs_time{i}" for i in range(len(config.abs_scales))]
            + [f"embed{i}" for i in range(config.embed_dim)] + [f"log_norm_{b}" for b in config.bases])


def _update(config: L3RSConfig, consts: _Consts, bases: dict, phi: Tensor, grad: Tensor, state: L3RSState,
            theta: Tensor, step: int, loss: Tensor | float | None, policy_fn=None) -> tuple[Tensor, L3RSState]:
    params = unpack_phi(phi, config)
    L = config.n_layers
    dirs, base_states = _directions(config, params, grad, state, theta, step, bases)
    stacked = torch.stack([theta, grad, *dirs])  # (2 + P, D)
    # One index_add gives every per-layer norm: weights, gradients and each base direction.
    norms = stacked.new_zeros(stacked.shape[0], L).index_add(1, consts.ids, stacked * stacked).sqrt()
    logs = norms.clamp_min(_TINY).log()
    decays, t = consts.decays, step + 1
    ema = state.ema * decays + logs[:2].T[:, :, None] * (1 - decays)  # (L, 2, n)
    if loss is None:
        ema_loss = state.ema_loss
    else:
        loss = loss.to(ema.dtype) if isinstance(loss, Tensor) else torch.tensor(float(loss), device=ema.device)
        ema_loss = state.ema_loss * decays + loss * (1 - decays)
    correction = 1 - decays ** t  # bias correction of EMAs started at 0
    time = consts.time_table[min(step, consts.time_table.shape[0] - 1)]
    feats = torch.cat([
        (ema / correction).reshape(L, -1),
        (ema_loss / correction).expand(L, -1),
        time.expand(L, -1),
        params["embedding"],
        logs[2:].T,
    ], dim=1)
    if policy_fn is None:
        log_scale, mu = policy(params, feats, config.max_log_scale)
    else:
        log_scale, mu = policy_fn(feats, step)
    lam = config.base_lr * consts.root_n * log_scale.exp()
    delta = combine(stacked[2:], norms[2:], lam, mu, consts.ids)
    return delta, L3RSState(base_states, ema, ema_loss, lam, mu)


def l3rs(phi: Tensor, config: L3RSConfig, *, total_steps: int, segments: Sequence[int],
         policy_fn: Callable[[Tensor, int], tuple[Tensor, Tensor]] | None = None) -> Transform:
    """L3RS as a pure transform over the flat vector of a model with ``segments`` tensor sizes.

    ``update(grad, state, theta, step, loss=None) -> (delta, state)``; ``total_steps`` is the
    run length ``T`` of the time features. ``phi`` is used as given (keep it detached).
    ``policy_fn(features, step) -> (log_scale (L,), mu (L, P))`` replaces the MLP (columns of
    ``features`` named by :func:`feature_names`): a probe that records what the MLP does, or a
    distilled formula (:mod:`~l2o_lib.distill`).
    """
    if not isinstance(config, L3RSConfig):
        raise ValueError(f"config must be an L3RSConfig, got {type(config).__name__}")
    check_int("total_steps", total_steps)
    segments = _check_segments(segments, config)
    unpack_phi(phi, config)  # validates the size
    bases = _base_transforms(config, segments)
    cache: dict = {}

    def consts_for(device) -> _Consts:
        if device not in cache:
            cache[device] = _consts(config, segments, total_steps, device)
        return cache[device]

    def init(theta: Tensor) -> L3RSState:
        if theta.shape[-1] != sum(segments):
            raise ValueError(f"theta has {theta.shape[-1]} entries but segments sum to {sum(segments)}")
        return _init_state(config, theta, bases)

    def update(grad, state, theta, step, loss=None):
        return _update(config, consts_for(theta.device), bases, phi, grad, state, theta, step, loss, policy_fn)

    return Transform(init, update)


class L3RS(FlatOptimizer):
    """The trained optimizer as a ``torch.optim.Optimizer`` over an ordinary model.

    Args:
        params: the model's parameters (one group; its tensors are the layers, in order).
        phi: the meta-parameters; config: their :class:`L3RSConfig`.
        total_steps: the run length ``T`` (time features).

    ``step(closure)`` feeds the closure's loss to the loss features; without a closure pass
    ``step(loss=loss)``.
    """

    def __init__(self, params, phi: Tensor, config: L3RSConfig, *, total_steps: int):
        if not isinstance(config, L3RSConfig):
            raise ValueError(f"config must be an L3RSConfig, got {type(config).__name__}")
        check_int("total_steps", total_steps)
        unpack_phi(phi, config)
        phi = phi.detach()
        self._loss: Tensor | None = None

        def factory(total_steps: int = total_steps, segments=None) -> Transform:
            if segments is None:  # FlatOptimizer's validation call, before the layout is known
                check_int("total_steps", total_steps)
                return Transform(lambda theta: None, lambda *a: None)
            return l3rs(phi.to(_device_of(params_list)), config, total_steps=total_steps, segments=segments)

        params_list = [p for p in params] if not isinstance(params, (list, tuple)) else list(params)
        super().__init__(params_list, factory)

    def _transform(self, group: dict, params: list[Tensor]) -> Transform:
        tx = super()._transform(group, params)
        return Transform(tx.init, lambda g, s, th, k: tx.update(g, s, th, k, loss=self._loss))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | float | None = None):
        """One update; the loss features read ``closure()``'s value or ``loss``."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._loss = None if loss is None else torch.as_tensor(loss).detach()
        super().step()
        return loss

    def mixing(self) -> tuple[Tensor, Tensor]:
        """``(lambda (L,), mu (L, P))`` of the last step."""
        params = self.param_groups[0]["params"]
        flat = self.state[params[0]].get("flat")
        if flat is None:
            raise ValueError("no step taken yet")
        return flat["lam"], flat["mu"]


def _device_of(params: list) -> torch.device:
    for p in params:
        if isinstance(p, Tensor):
            return p.device
        if isinstance(p, dict):
            return p["params"][0].device
    return torch.device("cpu")


# --------------------------------------------------------------------------- inner fine-tuning runs


@dataclass
class FinetuneTask:
    """One fine-tuning task: start ``theta0`` (pretrained backbone + fresh head), its data, a seed.

    Attributes:
        theta0: ``(D,)`` starting parameters; train / test: the task's splits; classes: the
        original class ids; seed: seeds the batch order.
    """

    theta0: Tensor
    train: ArrayData
    test: ArrayData
    classes: list
    seed: int


def _check_task(model: FlatModel, task: FinetuneTask) -> None:
    """Refuse a task whose data or start the model cannot take (shapes, dtypes, devices: no sync)."""
    if not isinstance(task, FinetuneTask):
        raise ValueError(f"task must be a FinetuneTask, got {type(task).__name__}")
    for name in ("train", "test"):
        split = getattr(task, name)
        model.check_data(split.x, split.y, name=f"task.{name}")
    model.check_theta(task.theta0, name="task.theta0")


def _loss_fn(model: FlatModel) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    module = model.module

    def loss(theta, x, y):
        return model.loss_fn(functional_call(module, model.unflatten(theta), (x,)), y)

    return loss


def _batch_index(task: FinetuneTask, steps: int, batch_size: int, device) -> Tensor:
    """``(steps, batch_size)`` indices of the task's batches, the same for every population member."""
    g = torch.Generator(device=device).manual_seed(int(task.seed))
    return torch.randint(len(task.train), (steps, batch_size), generator=g, device=device)


def population_losses(model: FlatModel, phis: Tensor, config: L3RSConfig, task: FinetuneTask, *, steps: int,
                      batch_size: int = 64, chunk_size: int | None = None, vectorize: bool = True) -> Tensor:
    """``(n, steps)`` mini-batch losses of ``n`` optimizers (rows of ``phis``) fine-tuning ``task``.

    All members see the same batches (common random numbers: antithetic pairs then differ only
    by their perturbation). ``vectorize`` runs each step of a chunk of ``chunk_size`` members as
    one ``vmap``-ed program (gradient and L3RS update); ``False`` loops over members with the same
    step function (the reference). The model runs in eval mode (frozen BatchNorm statistics).
    """
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    if not isinstance(phis, Tensor) or phis.dim() != 2 or phis.shape[1] != config.dim:
        raise ValueError(f"phis must be an (n, {config.dim}) tensor, got {tuple(getattr(phis, 'shape', ()))}")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    _check_task(model, task)
    segments = _check_segments(model.segments(), config)
    device = task.theta0.device
    consts = _consts(config, segments, steps, device)
    bases = _base_transforms(config, segments)
    index = _batch_index(task, steps, batch_size, device)
    loss_fn = _loss_fn(model)
    phis = phis.detach().to(device)

    def member_step(phi, theta, state, x, y, step):
        grad, loss = grad_and_value(loss_fn)(theta, x, y)
        delta, state = _update(config, consts, bases, phi, grad, state, theta, step, loss)
        return theta + delta, state, loss

    def run(chunk: Tensor) -> Tensor:
        n = chunk.shape[0]
        thetas = task.theta0.detach().expand(n, -1).clone()
        init = _init_state(config, task.theta0, bases)
        states = tuple_map(lambda t: t.expand(n, *t.shape).clone(), init)
        out = torch.empty(n, steps, device=device)
        for k in range(steps):
            x, y = task.train.x[index[k]], task.train.y[index[k]]
            if vectorize:
                fn = vmap(lambda p, th, st: member_step(p, th, st, x, y, k))
                thetas, states, out[:, k] = fn(chunk, thetas, states)
            else:
                rows = [member_step(chunk[i], thetas[i], tuple_map(lambda t: t[i], states), x, y, k) for i in range(n)]
                thetas = torch.stack([r[0] for r in rows])
                states = tuple_map(lambda *ts: torch.stack(ts), *[r[1] for r in rows])
                out[:, k] = torch.stack([r[2] for r in rows])
        return out

    was = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            size = chunk_size or phis.shape[0]
            return torch.cat([run(c) for c in phis.split(size)])
    finally:
        model.module.train(was)


def tuple_map(fn: Callable, *trees: Any) -> Any:
    """Apply ``fn`` leaf-wise to matching (named) tuples of tensors (the L3RS state)."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    mapped = [tuple_map(fn, *parts) for parts in zip(*trees)]
    return type(first)(*mapped) if hasattr(first, "_fields") else type(first)(mapped)


def population_fitness(model: FlatModel, phis: Tensor, config: L3RSConfig, tasks: Sequence[FinetuneTask], *,
                       steps: int, batch_size: int = 64, chunk_size: int | None = None) -> Tensor:
    """NES fitness of every row of ``phis``: minus the mean training loss over the inner runs,
    averaged over ``tasks`` (a meta-batch); NaN where a run diverged (it will rank last)."""
    if not tasks:
        raise ValueError("tasks must not be empty")
    losses = torch.stack([population_losses(model, phis, config, t, steps=steps, batch_size=batch_size,
                                            chunk_size=chunk_size).mean(1) for t in tasks])
    return -losses.mean(0)


def finetune(model: FlatModel, transform: Transform, task: FinetuneTask, *, steps: int, batch_size: int = 64,
             eval_every: int = 10, eval_on: str = "train", record: bool = False, desc: str | None = None,
             on_nonfinite: str = "raise") -> History:
    """One fine-tuning run of ``task`` with any transform (L3RS or a baseline), in eval mode.

    The loss is passed to transforms that take it (L3RS). Evaluated on the task's full
    training split (``eval_on="train"``: the optimisation speed) or test split every
    ``eval_every`` steps; ``history.extra`` gets the final test loss / accuracy and, with
    ``record``, the per-step ``lam`` ``(T, L)`` and ``mu`` ``(T, L, P)`` of an L3RS state.
    The batch order depends on ``task.seed`` only, so every method sees the same batches.
    ``on_nonfinite`` as in :func:`~l2o_lib.training.train_flat`: a run ending with NaN / inf
    weights raises, or with ``"record"`` is kept with ``extra["nonfinite_step"]``.
    """
    check_int("steps", steps)
    check_choice("eval_on", eval_on, ("train", "test"))
    check_on_nonfinite(on_nonfinite)
    _check_task(model, task)
    sampler = BatchSampler(task.train, batch_size, seed=int(task.seed), drop_last=False)
    takes_loss = "loss" in inspect.signature(transform.update).parameters
    box = {"state": transform.init(task.theta0)}
    lams, mus = [], []

    def step_fn(theta, k, batch):
        loss, grad = model.loss_and_grad(theta, batch, train=False)
        if takes_loss:
            delta, box["state"] = transform.update(grad, box["state"], theta, k, loss=loss)
        else:
            delta, box["state"] = transform.update(grad, box["state"], theta, k)
        if record:
            lams.append(box["state"].lam)
            mus.append(box["state"].mu)
        return theta + delta, loss

    split = task.train if eval_on == "train" else task.test
    was = model.module.training
    model.module.eval()
    try:
        hist = run_loop(model, step_fn, sampler, steps=steps, theta=task.theta0.detach().clone(), buffers={},
                        eval_data=(split.x, split.y), eval_every=eval_every, desc=desc,
                        on_nonfinite=on_nonfinite, what="fine-tuning")
        final = model.evaluate(hist.theta, task.test.x, task.test.y)
    finally:
        model.module.train(was)
    hist.extra["test_loss"] = float(final["loss"])
    hist.extra["test_accuracy"] = float(final["accuracy"])
    if record:
        hist.extra["lam"] = torch.stack(lams).cpu().numpy()
        hist.extra["mu"] = torch.stack(mus).cpu().numpy()
    return hist


# --------------------------------------------------------------------------- tasks and backbones


def _last_linear_names(module: nn.Module) -> list[str]:
    """Parameter names of the last ``nn.Linear`` (the classification head)."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError("the model has no nn.Linear head")
    return [f"{last}.{n}" for n, _ in module.get_submodule(last).named_parameters()]


def pretrain_backbone(model_name: str, data: Dataset, source_classes: Sequence[int], *, steps: int = 1000,
                      lr: float = 1e-3, batch_size: int = 128, seed: int = 0, cache_dir: str | os.PathLike = "data/l3rs",
                      model_kwargs: dict | None = None, desc: str | None = "pretrain") -> dict[str, Tensor]:
    """Pretrain ``model_name`` with Adam on ``source_classes`` of ``data``; return its state dict.

    Cached (atomic write) under ``cache_dir`` by a hash of every argument, so notebooks and
    reruns share one pretraining. A damaged cache file is retrained.
    """
    check_int("steps", steps)
    check_positive("lr", lr)
    check_int("batch_size", batch_size)
    check_seed("seed", seed)
    source = class_subset(data, list(source_classes))
    key = json.dumps({"model": model_name, "data": data.name, "n": len(data.train), "classes": source.info["classes"],
                      "steps": steps, "lr": lr, "batch": batch_size, "seed": seed, "kw": model_kwargs or {}},
                     sort_keys=True)
    path = Path(cache_dir) / f"{model_name}_{data.name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=data.device, weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: pretrain again and overwrite it
            pass
    module = build_model(model_name, data.input_shape, source.num_classes, seed=seed, **(model_kwargs or {}))
    module = module.to(data.device)
    flat = FlatModel(module)
    sampler = BatchSampler(source.train, min(batch_size, len(source.train)), seed=seed)
    from .training import train_flat

    hist = train_flat(flat, adam(lr), sampler, steps=steps, eval_every=steps, desc=desc)
    flat.load(hist.theta)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    atomic_torch_save(path, state)
    return state


@dataclass
class TaskFamily:
    """Fine-tuning tasks on class subsets of a dataset, from one pretrained backbone.

    Args:
        data: the whole dataset (on the device).
        model_name, model_kwargs: the architecture (:func:`l2o_lib.models.build_model`).
        backbone: state dict pretrained on the source classes (its head is replaced).
        pools: ``{"train": classes, "test": classes}``: meta-train and meta-test class pools.
        k: classes per task (the head's width, fixed so every task has the same layout).
        n_train: training examples kept per task (a seeded random subset; ``None``: all).

    ``sample(split, seed)`` draws ``k`` classes from the pool in a seeded order, a training
    subset and a freshly initialised head; everything follows from ``(split, seed)``.
    """

    data: Dataset
    model_name: str
    backbone: dict
    pools: dict
    k: int
    n_train: int | None = None
    model_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("k", self.k, minimum=2)
        for split in ("train", "test"):
            if split not in self.pools:
                raise ValueError(f"pools must have 'train' and 'test' class lists, got {sorted(self.pools)}")
            if len(self.pools[split]) < self.k:
                raise ValueError(f"pools[{split!r}] has {len(self.pools[split])} classes, fewer than k={self.k}")
        if self.n_train is not None:
            check_int("n_train", self.n_train)
        module = build_model(self.model_name, self.data.input_shape, self.k, seed=0, **self.model_kwargs)
        self.head = _last_linear_names(module)
        # Pretrained buffers (BatchNorm statistics) live in the module: the flat parameters do not
        # carry them, and fine-tuning keeps them frozen (eval mode).
        module.load_state_dict({k: v for k, v in self.backbone.items()
                                if k not in self.head and k not in dict(module.named_parameters())}, strict=False)
        self.model = FlatModel(module.to(self.data.device))
        shapes = dict(module.named_parameters())
        for name in self.model.names:
            if name not in self.head and (name not in self.backbone or self.backbone[name].shape != shapes[name].shape):
                raise ValueError(f"backbone lacks a matching {name!r}; pretrain the same architecture")

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers (parameter tensors) L3RS mixes over."""
        return list(self.model.names)

    def head_mask(self) -> Tensor:
        """``(D,)`` 1 on the head's entries, 0 on the backbone's (for head-only baselines)."""
        return torch.cat([torch.full((n,), float(name in self.head), device=self.data.device)
                          for name, n in zip(self.model.names, self.model.numels)])

    def sample(self, split: str, seed: int) -> FinetuneTask:
        """The task drawn by ``seed`` from the ``split`` pool (``"train"`` or ``"test"``)."""
        check_choice("split", split, ("train", "test"))
        check_seed("seed", seed)
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        pool = list(self.pools[split])
        classes = [pool[i] for i in torch.randperm(len(pool), generator=g)[: self.k].tolist()]
        sub = class_subset(self.data, classes)
        train = sub.train
        if self.n_train is not None and self.n_train < len(train):
            train = train.subset(torch.randperm(len(train), generator=g)[: self.n_train].to(train.x.device))
        head = build_model(self.model_name, self.data.input_shape, self.k, seed=int(torch.randint(2**31, (1,), generator=g)),
                           **self.model_kwargs)
        fresh = dict(head.named_parameters())
        theta0 = torch.cat([(fresh[n].detach() if n in self.head else self.backbone[n]).reshape(-1).to(self.data.device)
                            for n in self.model.names])
        return FinetuneTask(theta0, train, sub.test, classes, seed)


def family_from_setup(setup: dict, *, device: str = "cpu", cache_dir: str | os.PathLike = "data/l3rs") -> TaskFamily:
    """The :class:`TaskFamily` an optimizer was meta-trained on, rebuilt from the ``setup`` that
    :class:`Trained` stored (notebook 05 records the dataset, model, classes and pretraining);
    the backbone comes from the pretraining cache, or is pretrained again identically."""
    from .data import load_dataset

    needed = ("dataset", "model", "source", "pools", "k", "pretrain_steps", "pretrain_lr", "seed")
    missing = [k for k in needed if k not in setup]
    if missing:
        raise ValueError(f"setup lacks {missing}: it was saved by an older notebook 05; run notebook 05 again")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in setup.get("model_kwargs", {}).items()}
    data = load_dataset(setup["dataset"], device=device, seed=setup["seed"], download=True)
    backbone = pretrain_backbone(setup["model"], data, setup["source"], steps=setup["pretrain_steps"],
                                 lr=setup["pretrain_lr"], seed=setup["seed"], cache_dir=cache_dir, model_kwargs=kwargs)
    return TaskFamily(data, setup["model"], backbone, setup["pools"], k=setup["k"], n_train=setup.get("n_task"),
                      model_kwargs=kwargs)


# --------------------------------------------------------------------------- baselines


def head_only(transform: Transform, mask: Tensor) -> Transform:
    """``transform`` restricted to the entries where ``mask`` is 1 (the rest stay frozen)."""
    def update(grad, state, theta, step):
        delta, state = transform.update(grad * mask, state, theta, step)
        return delta * mask, state

    return Transform(transform.init, update)


def baseline_factories(steps: int, mask: Tensor | None = None) -> dict[str, Callable[[float], Transform]]:
    """The paper's hand-designed baselines as ``lr -> Transform``: Adam cosine / constant,
    SGD-momentum cosine and (with a head ``mask``) the head-only Adam variants."""
    from .optim import cosine, momentum

    check_int("steps", steps)
    out: dict[str, Callable[[float], Transform]] = {
        "Adam (cosine)": lambda lr: adam(cosine(lr, steps)),
        "Adam (const)": lambda lr: adam(lr),
        "SGD-momentum (cosine)": lambda lr: momentum(cosine(lr, steps), 0.9),
    }
    if mask is not None:
        out["Adam (cosine, head)"] = lambda lr: head_only(adam(cosine(lr, steps)), mask)
        out["Adam (const, head)"] = lambda lr: head_only(adam(lr), mask)
    return out


# --------------------------------------------------------------------------- meta-test: tuning and speed-ups


def tune_baselines(family: "TaskFamily", factories: dict[str, Callable[[float], Transform]], lrs: Sequence[float], *,
                   seeds: Sequence[int], steps: int, batch_size: int = 64, split: str = "train",
                   desc: str | None = "tune") -> dict[str, dict]:
    """Grid-search every baseline's LR on tasks ``seeds`` of ``split``.

    Score: the mean training loss over the run, averaged over the tasks (what L3RS is meta-trained
    on, and :func:`l2o_lib.training.mean_train_loss`'s criterion; diverged runs are recorded, not
    raised, and score ``inf``).
    Tuning happens on meta-train tasks by default, so held-out tasks stay unseen by every method.
    (Like :func:`l2o_lib.training.tune_lr`, but averaged over tasks and in the frozen-BatchNorm
    mode of :func:`finetune`.) Returns ``{name: {"lr": best, "scores": {lr: score}}}``.
    """
    if not lrs:
        raise ValueError("lrs must not be empty")
    check_seeds("seeds", seeds)
    tasks = [family.sample(split, s) for s in seeds]
    out = {}
    for name, make in progress(list(factories.items()), desc=desc):
        scores = {}
        for lr in lrs:
            scores[float(lr)] = float(np.mean([mean_train_loss(finetune(family.model, make(lr), t, steps=steps,
                                                                        batch_size=batch_size, eval_every=steps,
                                                                        on_nonfinite="record"))
                                               for t in tasks]))
        out[name] = {"lr": min(scores, key=scores.get), "scores": scores}
    return out


def compare_methods(family: "TaskFamily", methods: dict[str, Callable[[], Transform]], *, seeds: Sequence[int],
                    steps: int, batch_size: int = 64, eval_every: int = 5, split: str = "test",
                    record: Sequence[str] = (), desc: str | None = "meta-test") -> dict[str, list[History]]:
    """Fine-tune tasks ``seeds`` of ``split`` with every method (same batches for all); each
    history's test curve is the loss on the task's full training split every ``eval_every`` steps.
    Methods named in ``record`` keep their per-step ``lam`` / ``mu``. A method that diverges on a
    task is a result: its history is kept with ``extra["nonfinite_step"]`` (its final loss counts
    as ``inf`` in :func:`speedup_records`)."""
    if not methods:
        raise ValueError("methods must not be empty")
    check_seeds("seeds", seeds)
    tasks = [family.sample(split, s) for s in seeds]
    return {name: [finetune(family.model, make(), t, steps=steps, batch_size=batch_size, eval_every=eval_every,
                            record=name in record, on_nonfinite="record") for t in tasks]
            for name, make in progress(list(methods.items()), desc=desc)}


def speedup_records(histories: dict[str, list[History]], *, method: str, baselines: Sequence[str]) -> list[dict]:
    """Per task: the best baseline (lowest final training loss), its final loss as the target,
    the steps each needs to reach it (:func:`l2o_lib.metrics.steps_to_target` on the evaluated
    curve) and ``speedup = baseline steps / method steps`` (``nan`` when the method never gets there)."""
    from .metrics import speedup, steps_to_target

    missing = [m for m in (method, *baselines) if m not in histories]
    if missing:
        raise ValueError(f"histories lack method(s) {missing}")
    rows = []
    for i, ours in enumerate(histories[method]):
        finals = {b: float(histories[b][i].test_loss[-1]) for b in baselines}
        finals = {b: v if math.isfinite(v) else float("inf") for b, v in finals.items()}
        best = min(finals, key=finals.get)
        target = finals[best]

        def steps_of(h: History):
            hit = steps_to_target(h.test_loss, target)
            return None if hit is None else int(h.eval_steps[hit])

        base_steps, our_steps = steps_of(histories[best][i]), steps_of(ours)
        rows.append({"task": i, "best baseline": best, "target loss": target, "baseline steps": base_steps,
                     f"{method} steps": our_steps, "speedup": speedup(base_steps, our_steps),
                     f"{method} final loss": float(ours.test_loss[-1]),
                     f"{method} test accuracy": ours.extra["test_accuracy"],
                     "baseline test accuracy": histories[best][i].extra["test_accuracy"]})
    return rows


# --------------------------------------------------------------------------- save / load


class Trained(NamedTuple):
    """A meta-trained L3RS optimizer: meta-parameters, configuration, layer names and the task setup
    it was meta-trained on (dataset, model, classes, steps: what later notebooks need to rebuild it,
    see :func:`family_from_setup`). Saved and loaded as kind ``"l3rs"`` by :mod:`~l2o_lib.artifacts`."""

    phi: Tensor
    config: L3RSConfig
    layer_names: Sequence[str] = ()
    setup: dict | None = None

    def state(self) -> dict:
        """A ``torch.save``-able dict of plain types (the file loads with ``weights_only=True``)."""
        if not isinstance(self.config, L3RSConfig):
            raise ValueError(f"config must be an L3RSConfig, got {type(self.config).__name__}")
        unpack_phi(self.phi, self.config)  # refuses a phi of the wrong size
        setup = json.loads(json.dumps(self.setup or {}))  # plain types only: tuples become lists
        return {"phi": self.phi.detach().cpu(), "config": self.config.as_dict(),
                "layer_names": list(self.layer_names), "setup": setup}

    @classmethod
    def from_state(cls, state: dict) -> "Trained":
        """Rebuild from :meth:`state` output."""
        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["config"].items()}
        return cls(state["phi"], L3RSConfig(**cfg), list(state["layer_names"]), dict(state.get("setup", {})))
