"""The L3RS update (paper eq. 2): the shared MLP (:func:`policy`), the mix of normalised base
directions (:func:`combine`), the update over all layers at once as a pure transform
(:func:`l3rs`) and as a ``torch.optim`` optimizer (:class:`L3RS`). The private step
``_update`` is shared with the vmapped population (:mod:`l2o_lib.l3rs.fitness`)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..config import check_int
from ..optim import FlatOptimizer, Transform, adamax, lamb, lion, segment_ids
from ..optim.baselines import AdamState, MomentumState
from .phi import L3RSConfig, unpack_phi

__all__ = ["policy", "combine", "L3RSState", "l3rs", "L3RS"]

_TINY = 1e-12  # floor of a norm before a log or a division (a zero direction gives 0, not NaN)


# --------------------------------------------------------------------------- the policy


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
