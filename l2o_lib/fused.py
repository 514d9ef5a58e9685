"""Fused per-step update of SL2O's coordinate-wise LSTM optimizer.

:func:`~l2o_lib.sl2o.rnnprop` around an :class:`~l2o_lib.sl2o.LSTMRule` is about thirty small
kernels per step over the ``n`` coordinates (two moments, the RNNprop features, the four gates of
each cell, the output layer), each reading and writing an ``(n, ·)`` tensor. :func:`rnnprop_lstm_step`
is the same computation written as one pure function of tensors, with the cell spelled out
(``gates = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh``; ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(c')``, as
``nn.LSTMCell`` computes it), so that ``torch.compile`` can fuse the element-wise work into a few
kernels. That pays where kernels are launched (CUDA: one launch is several µs, the LSTM on 40
coordinates is nothing but launches) and where ``n`` is large (plain L2O on every parameter). On
2 CPU cores the compiled update is 1.5× (meta-test) and 1.1× (meta-training) faster at d = 40 and
1.7× / 1.3× at 269,722 coordinates (``bench/fused_step.py``), but at d = 40 the update is a
millisecond next to a model step of hundreds, which does not repay a compilation of 10–45 s; so
``compile="auto"`` compiles on CUDA only and runs the same function eagerly elsewhere.

:func:`fused_rnnprop` is a drop-in :class:`~l2o_lib.optim.Transform` with the state of
:func:`~l2o_lib.sl2o.rnnprop` (:class:`~l2o_lib.sl2o.RNNpropState`), so the module path stays the
readable reference it is tested against (``tests/test_fused.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .config import check_choice, check_positive
from .optim.base import Transform, check_betas

__all__ = ["COMPILE_MODES", "rnnprop_lstm_step", "lstm_weights", "fused_rnnprop"]

# "auto": compile on CUDA (where fusing the launches pays), eager elsewhere.
COMPILE_MODES = ("auto", "always", "never")


def rnnprop_lstm_step(grad: Tensor, m: Tensor, v: Tensor, carry: Tensor, weights: Sequence[Tensor],
                      correction1: float, correction2: float, *, beta1: float, beta2: float, eps: float,
                      scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SL2O step over every coordinate: ``(delta, m, v, carry)``.

    Args:
        grad, m, v: the gradient and the RNNprop moments, any (equal) shape.
        carry: ``(2, layers, grad.numel(), hidden)``, as :meth:`~l2o_lib.sl2o.LSTMRule.init_carry`.
        weights: :func:`lstm_weights` of the rule: per layer ``W_ih, W_hh, b_ih, b_hh``, then the
            output layer's weight.
        correction1, correction2: the bias corrections ``1 - β₁ᵗ`` and ``1 - β₂ᵗ`` of this step.
    """
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    rs = torch.rsqrt(v / correction2 + eps)
    x = torch.stack([m / correction1 * rs, grad * rs], dim=-1).reshape(grad.numel(), 2)
    hs, cs = [], []
    for i in range(carry.shape[1]):
        w_ih, w_hh, b_ih, b_hh = weights[4 * i: 4 * i + 4]
        gates = x @ w_ih.t() + b_ih + carry[0, i] @ w_hh.t() + b_hh
        gi, gf, gg, go = gates.chunk(4, dim=1)
        c = torch.sigmoid(gf) * carry[1, i] + torch.sigmoid(gi) * torch.tanh(gg)
        x = torch.sigmoid(go) * torch.tanh(c)
        hs.append(x)
        cs.append(c)
    delta = -torch.tanh(x @ weights[-1].t()).view_as(grad) * scale
    return delta, m, v, torch.stack([torch.stack(hs), torch.stack(cs)])


def lstm_weights(rule) -> tuple[Tensor, ...]:
    """The :class:`~l2o_lib.sl2o.LSTMRule`'s parameters in :func:`rnnprop_lstm_step`'s order."""
    out = []
    for cell in rule.cells:
        out += [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    return (*out, rule.out.weight)


def fused_rnnprop(rule, *, betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8, differentiable: bool = False,
                  compile: str = "auto") -> Transform:
    """:func:`~l2o_lib.sl2o.rnnprop` of an :class:`~l2o_lib.sl2o.LSTMRule` through :func:`rnnprop_lstm_step`.

    Same arguments, state and numbers (to float rounding); ``compile`` is one of
    :data:`COMPILE_MODES`: ``"auto"`` compiles on CUDA and runs the eager function elsewhere. The
    first compiled step pays the compilation (tens of seconds on a CPU); the step number enters
    only through the bias corrections, so later steps reuse the compiled code.
    """
    from .sl2o import LSTMRule, RNNpropState  # sl2o imports this module for rnnprop(fused=True)

    if not isinstance(rule, LSTMRule):
        raise ValueError(f"fused_rnnprop needs an LSTMRule, got {type(rule).__name__}")
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    check_choice("compile", compile, COMPILE_MODES)
    # torch.compile wraps lazily, but importing dynamo for it is not free: only when it may be used.
    compiled = None if compile == "never" else torch.compile(rnnprop_lstm_step, dynamic=None)

    def init(theta: Tensor) -> RNNpropState:
        return RNNpropState(torch.zeros_like(theta), torch.zeros_like(theta), rule.init_carry(theta))

    def update(grad: Tensor, state: RNNpropState, theta: Tensor, step: int):
        fn = compiled if compile == "always" or (compile == "auto" and grad.is_cuda) else rnnprop_lstm_step
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            delta, m, v, carry = fn(grad, state.m, state.v, state.carry, lstm_weights(rule),
                                    1 - beta1 ** (step + 1), 1 - beta2 ** (step + 1),
                                    beta1=beta1, beta2=beta2, eps=eps, scale=rule.scale)
        return delta, RNNpropState(m, v, carry)

    return Transform(init, update)
