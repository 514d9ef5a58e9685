"""Hypergradient descent (Baydin et al., ICLR 2018): SGD(-momentum) that learns its own LR online.

:func:`hypergradient_sgd` is a :class:`~l2o_lib.optim.base.Transform` whose state holds the LR
(:class:`HDState`); MLR-SNet compares against it (:func:`l2o_lib.mlrsnet.baseline_configs`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..config import check_nonnegative, check_positive, check_probability
from .base import Transform
from .kernels import coupled_decay, heavy_ball

__all__ = ["HDState", "hypergradient_sgd"]


class HDState(NamedTuple):
    """Hypergradient descent: the current LR (shape ``theta.shape[:-1] + (1,)``), the momentum
    buffer and the previous step's direction."""

    lr: Tensor
    buf: Tensor
    prev: Tensor


def hypergradient_sgd(lr: float | Tensor = 0.01, hyper_lr: float | Tensor = 1e-4, *, momentum: float = 0.9,
                      weight_decay: float = 0.0) -> Transform:
    """SGD(-momentum) with hypergradient descent on its LR (Baydin et al., ICLR 2018, SGDN-HD).

    With ``g_t = ∇f(θ_t) + wd·θ_t`` and ``θ_t = θ_{t-1} − α_{t-1}·b_{t-1}``, the derivative of
    ``f(θ_t)`` in the last LR is ``−g_t·b_{t-1}``, so::

        α_t = α_{t-1} + β · g_t·b_{t-1}       (β = hyper_lr; b_{-1} = 0)
        b_t = μ·b_{t-1} + g_t  (b_0 = g_0);  delta = −α_t·b_t

    The LR lives in the state as a tensor (no host synchronisation). ``theta`` may carry leading
    batch dimensions ``(K, D)``; ``lr`` and ``hyper_lr`` may then be ``(K, 1)`` tensors (one per
    run). Float arguments are validated.
    """
    for name, value in (("lr", lr), ("hyper_lr", hyper_lr)):
        if not isinstance(value, Tensor):
            check_positive(name, value)
    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)

    def init(theta: Tensor) -> HDState:
        shape = theta.shape[:-1] + (1,)
        rate = (lr.to(theta) if isinstance(lr, Tensor) else torch.tensor(float(lr), dtype=theta.dtype,
                                                                          device=theta.device))
        zero = torch.zeros_like(theta)
        return HDState(rate.expand(shape).clone(), zero, zero.clone())

    def update(grad: Tensor, state: HDState, theta: Tensor, step: int) -> tuple[Tensor, HDState]:
        g = coupled_decay(grad, theta, weight_decay)
        beta = hyper_lr.to(theta) if isinstance(hyper_lr, Tensor) else hyper_lr
        rate = state.lr + beta * (g * state.prev).sum(-1, keepdim=True)
        buf = heavy_ball(state.buf, g, momentum, first=step == 0)
        return buf * -rate, HDState(rate, buf, buf)

    return Transform(init, update)
