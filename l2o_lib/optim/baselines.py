"""Hand-designed baselines as pure transforms over flat vectors.

Each update replays the arithmetic of the matching ``torch.optim`` kernel in the same order
(the tests check SGD, Momentum, Nesterov, Adam, AdamW, RMSProp and Adamax step for step against
``torch.optim`` on a real model). Lion (Chen et al., 2023) and LAMB (You et al., 2020) have no
``torch.optim`` counterpart and follow their papers; LAMB's trust ratio is per parameter tensor,
given as ``segments`` (the sizes of the tensors in ``theta``; one segment when omitted).

``lr`` may be a float or a schedule from :mod:`l2o_lib.optim.schedules`.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..config import check_nonnegative, check_positive, check_probability
from .base import LR, EmptyState, Transform, check_betas, check_lr, lr_at, segment_ids, segment_norms
from .kernels import adam_moments, coupled_decay, heavy_ball

__all__ = ["sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adamax", "lion", "lamb",
           "MomentumState", "AdamState", "RMSPropState"]


class MomentumState(NamedTuple):
    buf: Tensor


class AdamState(NamedTuple):
    exp_avg: Tensor
    exp_avg_sq: Tensor


class RMSPropState(NamedTuple):
    square_avg: Tensor
    grad_avg: Tensor
    buf: Tensor


def sgd(lr: LR = 0.1, *, weight_decay: float = 0.0) -> Transform:
    """Plain SGD: ``delta = -lr · (g + wd · theta)``."""
    check_lr(lr)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        return coupled_decay(grad, theta, weight_decay).mul(-lr_at(lr, step)), state

    return Transform(lambda theta: EmptyState(), update)


def momentum(lr: LR = 0.1, momentum: float = 0.9, *, nesterov: bool = False, dampening: float = 0.0,
             weight_decay: float = 0.0) -> Transform:
    """Heavy-ball (or Nesterov) momentum in torch.optim.SGD's form.

    ``b_0 = g_0``, ``b_t = mu·b_{t-1} + (1 - dampening)·g_t``; ``delta = -lr·b_t`` (heavy ball) or
    ``-lr·(g_t + mu·b_t)`` (Nesterov). With a constant ``lr`` this equals the textbook
    ``v = mu·v - lr·g; theta += v``.
    """
    check_lr(lr)
    check_probability("momentum", momentum)
    check_probability("dampening", dampening)
    check_nonnegative("weight_decay", weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov=True needs momentum > 0 and dampening = 0")

    def update(grad, state, theta, step):
        g = coupled_decay(grad, theta, weight_decay)
        buf = heavy_ball(state.buf, g, momentum, dampening=dampening, first=step == 0)
        d = g.add(buf, alpha=momentum) if nesterov else buf
        return d.mul(-lr_at(lr, step)), MomentumState(buf)

    return Transform(lambda theta: MomentumState(torch.zeros_like(theta)), update)


_heavy_ball = momentum  # `nesterov`'s own `momentum` argument shadows the function name


def nesterov(lr: LR = 0.1, momentum: float = 0.9, *, weight_decay: float = 0.0) -> Transform:
    """Nesterov momentum (``momentum(..., nesterov=True)``)."""
    return _heavy_ball(lr, momentum, nesterov=True, weight_decay=weight_decay)


def _adam_direction(grad: Tensor, state: AdamState, step: int, lr: float, beta1: float, beta2: float,
                    eps: float) -> tuple[Tensor, AdamState]:
    exp_avg, exp_avg_sq = adam_moments(state.exp_avg, state.exp_avg_sq, grad, beta1, beta2)
    t = step + 1
    step_size = lr / (1 - beta1 ** t)
    denom = (exp_avg_sq.sqrt() / (1 - beta2 ** t) ** 0.5).add(eps)
    # (value · m) / denom: the operation order of torch's addcdiv, so float32 runs agree.
    return exp_avg.mul(-step_size).div(denom), AdamState(exp_avg, exp_avg_sq)


def _adam_init(theta: Tensor) -> AdamState:
    return AdamState(torch.zeros_like(theta), torch.zeros_like(theta))


def adam(lr: LR = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, *,
         weight_decay: float = 0.0) -> Transform:
    """Adam (Kingma & Ba, 2015) with bias correction; ``weight_decay`` is coupled (L2)."""
    check_lr(lr)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        g = coupled_decay(grad, theta, weight_decay)
        return _adam_direction(g, state, step, lr_at(lr, step), beta1, beta2, eps)

    return Transform(_adam_init, update)


def adamw(lr: LR = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, *,
          weight_decay: float = 1e-2) -> Transform:
    """AdamW (Loshchilov & Hutter, 2019): decoupled decay ``theta·(1 - lr·wd)`` then Adam."""
    check_lr(lr)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        rate = lr_at(lr, step)
        d, state = _adam_direction(grad, state, step, rate, beta1, beta2, eps)
        return d.sub(theta, alpha=rate * weight_decay), state

    return Transform(_adam_init, update)


def rmsprop(lr: LR = 1e-2, alpha: float = 0.99, eps: float = 1e-8, *, momentum: float = 0.0,
            centered: bool = False, weight_decay: float = 0.0) -> Transform:
    """RMSProp (Tieleman & Hinton, 2012) in torch.optim.RMSprop's form (optionally centred, with momentum)."""
    check_lr(lr)
    check_probability("alpha", alpha)
    check_positive("eps", eps)
    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        g = coupled_decay(grad, theta, weight_decay)
        square_avg = state.square_avg.mul(alpha).addcmul(g, g, value=1 - alpha)
        grad_avg = state.grad_avg
        if centered:
            grad_avg = grad_avg.lerp(g, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt()
        else:
            avg = square_avg.sqrt()
        avg = avg.add(eps)
        rate = lr_at(lr, step)
        if momentum > 0:
            buf = state.buf.mul(momentum).addcdiv(g, avg)
            return buf.mul(-rate), RMSPropState(square_avg, grad_avg, buf)
        return g.mul(-rate).div(avg), RMSPropState(square_avg, grad_avg, state.buf)

    def init(theta):
        z = torch.zeros_like(theta)
        return RMSPropState(z, z.clone() if centered else z, z.clone() if momentum > 0 else z)

    return Transform(init, update)


def adamax(lr: LR = 2e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, *,
           weight_decay: float = 0.0) -> Transform:
    """Adamax (Kingma & Ba, 2015): Adam with the infinity norm, ``u_t = max(beta2·u, |g| + eps)``."""
    check_lr(lr)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        g = coupled_decay(grad, theta, weight_decay)
        exp_avg = state.exp_avg.lerp(g, 1 - beta1)
        exp_inf = torch.maximum(state.exp_avg_sq.mul(beta2), g.abs().add(eps))
        clr = lr_at(lr, step) / (1 - beta1 ** (step + 1))
        return exp_avg.mul(-clr).div(exp_inf), AdamState(exp_avg, exp_inf)

    return Transform(_adam_init, update)


def lion(lr: LR = 1e-4, betas: Sequence[float] = (0.9, 0.99), *, weight_decay: float = 0.0) -> Transform:
    """Lion (Chen et al., 2023): ``delta = -lr·(sign(b1·m + (1-b1)·g) + wd·theta)``, ``m ← b2·m + (1-b2)·g``."""
    check_lr(lr)
    beta1, beta2 = check_betas(betas)
    check_nonnegative("weight_decay", weight_decay)

    def update(grad, state, theta, step):
        direction = state.buf.lerp(grad, 1 - beta1).sign()
        if weight_decay:
            direction = direction.add(theta, alpha=weight_decay)
        return direction.mul(-lr_at(lr, step)), MomentumState(state.buf.lerp(grad, 1 - beta2))

    return Transform(lambda theta: MomentumState(torch.zeros_like(theta)), update)


def lamb(lr: LR = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-6, *,
         weight_decay: float = 0.0, segments: Sequence[int] | None = None) -> Transform:
    """LAMB (You et al., 2020): the bias-corrected Adam ratio plus decoupled decay,
    ``r = m̂/(√v̂ + eps) + wd·theta``, scaled per tensor by the trust ratio ``‖theta‖ / ‖r‖``
    (1 where either norm is 0)."""
    check_lr(lr)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    check_nonnegative("weight_decay", weight_decay)
    if segments is not None:
        segments = [int(s) for s in segments]
        if not segments or min(segments) < 1:
            raise ValueError(f"segments must be a non-empty list of positive sizes, got {segments!r}")
    cache: dict = {}

    def ids_for(theta: Tensor) -> tuple[Tensor, int]:
        sizes = segments if segments is not None else [theta.numel()]
        if sum(sizes) != theta.numel():
            raise ValueError(f"segments sum to {sum(sizes)} but theta has {theta.numel()} entries")
        key = theta.device
        if key not in cache:
            cache[key] = segment_ids(sizes, theta.device)
        return cache[key], len(sizes)

    def update(grad, state, theta, step):
        exp_avg, exp_avg_sq = adam_moments(state.exp_avg, state.exp_avg_sq, grad, beta1, beta2)
        t = step + 1
        r = (exp_avg / (1 - beta1 ** t)).div((exp_avg_sq / (1 - beta2 ** t)).sqrt().add(eps))
        if weight_decay:
            r = r.add(theta, alpha=weight_decay)
        ids, n = ids_for(theta)
        w_norm, r_norm = segment_norms(theta, ids, n), segment_norms(r, ids, n)
        trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
        return r.mul(trust[ids]).mul(-lr_at(lr, step)), AdamState(exp_avg, exp_avg_sq)

    return Transform(_adam_init, update)
