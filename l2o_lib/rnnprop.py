"""RNNprop (Lv et al.): a coordinate-wise LSTM rule and the pure transform around it, plus its fused step.

The learned optimizer sees, per coordinate, the RNNprop features (bias-corrected Adam moments,
``m̂ / √(v̂ + ε)`` and ``g / √(v̂ + ε)`` with β1 = 0.9, β2 = 0.99) and outputs the coordinate's step
through ``LSTMCell → Linear (no bias) → tanh × scale``; the reference size is one cell of 8 units
(392 weights). :mod:`~l2o_lib.sl2o` runs it on subspace coordinates (SL2O) and meta-trains it.

* :class:`LSTMRule`: the network, one call for all coordinates (any leading shape, so K tasks
  are one batch of ``K·d`` rows, no vmap needed for the optimizer itself);
* :func:`rnnprop`: the pure :class:`~l2o_lib.optim.Transform` around any :class:`Rule` (the LSTM,
  or a fixed rule such as ``lr · g`` in tests, which then *is* SGD);
* :func:`fused_rnnprop`: the same transform for an :class:`LSTMRule` as one pure function of
  tensors, :func:`rnnprop_lstm_step`, that ``torch.compile`` can fuse.

Why fuse: :func:`rnnprop` around an :class:`LSTMRule` is about thirty small kernels per step over
the ``n`` coordinates (two moments, the RNNprop features, the four gates of each cell, the output
layer), each reading and writing an ``(n, ·)`` tensor. :func:`rnnprop_lstm_step` spells the cell out
(``gates = x W_ihᵀ + b_ih + h W_hhᵀ + b_hh``; ``c' = σ(f) c + σ(i) tanh(g)``; ``h' = σ(o) tanh(c')``, as
``nn.LSTMCell`` computes it), so that ``torch.compile`` can fuse the element-wise work into a few
kernels. That pays where kernels are launched (CUDA: one launch is several µs, the LSTM on 40
coordinates is nothing but launches) and where ``n`` is large (plain L2O on every parameter). On
2 CPU cores the compiled update is 1.5× (meta-test) and 1.1× (meta-training) faster at d = 40 and
1.7× / 1.3× at 269,722 coordinates (``bench/fused_step.py``), but at d = 40 the update is a
millisecond next to a model step of hundreds, which does not repay a compilation of 10–45 s; so
``compile="auto"`` compiles on CUDA only and runs the same function eagerly elsewhere. The module
path stays the readable reference the fused one is tested against (``tests/test_fused.py``).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol, Sequence

import torch
from torch import Tensor, nn

from .config import check_choice, check_int, check_positive, check_seed
from .optim.base import Transform, check_betas

__all__ = ["Rule", "LSTMRule", "RNNpropState", "rnnprop", "COMPILE_MODES", "rnnprop_lstm_step", "lstm_weights",
           "fused_rnnprop"]


class Rule(Protocol):
    """What :func:`rnnprop` needs from a learned (or fixed) rule."""

    def init_carry(self, grad: Tensor) -> Tensor: ...

    def __call__(self, grad: Tensor, features: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]: ...


class LSTMRule(nn.Module):
    """The coordinate-wise network: ``layers`` LSTM cells → ``Linear(hidden, 1, bias=False)`` → ``tanh × scale``.

    Args:
        hidden: units per LSTM cell (reference: 8).
        layers: stacked cells (reference: 1).
        scale: output scale; a coordinate moves at most ``scale`` per step (reference: 1).
        input_size: features per coordinate (RNNprop: 2).
        seed: initialisation seed (PyTorch's default LSTM/Linear initialisation).
    """

    def __init__(self, hidden: int = 8, layers: int = 1, scale: float = 1.0, input_size: int = 2, seed: int = 0):
        super().__init__()
        self.hidden = check_int("hidden", hidden)
        self.layers = check_int("layers", layers)
        self.scale = check_positive("scale", scale)
        self.input_size = check_int("input_size", input_size)
        check_seed("seed", seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.cells = nn.ModuleList(nn.LSTMCell(input_size if i == 0 else hidden, hidden) for i in range(layers))
            self.out = nn.Linear(hidden, 1, bias=False)
            # Untrained steps of at most ~scale/10: the first meta-steps then start from a stable,
            # slow optimizer instead of a random walk of full-size steps (which diverges at scale 1).
            self.out.weight.data.mul_(0.1)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"

    def init_carry(self, grad: Tensor) -> Tensor:
        """Zero LSTM state for every coordinate of ``grad``: ``(2, layers, grad.numel(), hidden)``."""
        return grad.new_zeros(2, self.layers, grad.numel(), self.hidden)

    def forward(self, grad: Tensor, features: Tensor, carry: Tensor) -> tuple[Tensor, Tensor]:
        """The step of every coordinate (shaped like ``grad``) and the new carry."""
        x = features.reshape(-1, self.input_size)
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (carry[0, i], carry[1, i]))
            hs.append(h)
            cs.append(c)
            x = h
        step = torch.tanh(self.out(x)).view_as(grad) * self.scale
        return step, torch.stack([torch.stack(hs), torch.stack(cs)])


class RNNpropState(NamedTuple):
    """The state of :func:`rnnprop` and :func:`fused_rnnprop` (the same for both)."""

    m: Tensor      # first moment of the gradient
    v: Tensor      # second moment
    carry: Tensor  # the rule's recurrent state


def rnnprop(rule: Rule, *, betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8,
            differentiable: bool = False, fused: bool = False, compile: str = "auto") -> Transform:
    """The learned optimizer as a pure transform: ``delta = -rule(g, [m̂/√(v̂+ε), g/√(v̂+ε)], carry)``.

    Args:
        rule: an :class:`LSTMRule` or any object with ``init_carry(grad)`` and
            ``rule(grad, features, carry) -> (step, carry)``.
        betas: the feature moments' decay rates (paper: 0.9, 0.99).
        eps: added to ``v̂`` under the square root (Algorithm 1).
        differentiable: keep the autograd graph through the rule (meta-training); otherwise the
            rule runs under ``no_grad`` so a long meta-test builds no graph.
        fused: run an :class:`LSTMRule` through :func:`fused_rnnprop`, one pure
            function ``torch.compile`` can fuse (same state and numbers); ``compile`` is its mode
            (``"auto"``: compiled on CUDA, eager elsewhere).
    """
    if fused:
        return fused_rnnprop(rule, betas=betas, eps=eps, differentiable=differentiable, compile=compile)
    beta1, beta2 = check_betas(betas)
    check_positive("eps", eps)
    if not callable(rule) or not hasattr(rule, "init_carry"):
        raise ValueError("rule must be callable and have init_carry(grad), e.g. an LSTMRule")

    def init(theta: Tensor) -> RNNpropState:
        return RNNpropState(torch.zeros_like(theta), torch.zeros_like(theta), rule.init_carry(theta))

    def update(grad: Tensor, state: RNNpropState, theta: Tensor, step: int):
        m = beta1 * state.m + (1 - beta1) * grad
        v = beta2 * state.v + (1 - beta2) * grad * grad
        scale = torch.rsqrt(v / (1 - beta2 ** (step + 1)) + eps)
        features = torch.stack([m / (1 - beta1 ** (step + 1)) * scale, grad * scale], dim=-1)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            out, carry = rule(grad, features, state.carry)
        return -out, RNNpropState(m, v, carry)

    return Transform(init, update)


# "auto": compile on CUDA (where fusing the launches pays), eager elsewhere.
COMPILE_MODES = ("auto", "always", "never")


def rnnprop_lstm_step(grad: Tensor, m: Tensor, v: Tensor, carry: Tensor, weights: Sequence[Tensor],
                      correction1: float, correction2: float, *, beta1: float, beta2: float, eps: float,
                      scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One SL2O step over every coordinate: ``(delta, m, v, carry)``.

    Args:
        grad, m, v: the gradient and the RNNprop moments, any (equal) shape.
        carry: ``(2, layers, grad.numel(), hidden)``, as :meth:`LSTMRule.init_carry`.
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


def lstm_weights(rule: LSTMRule) -> tuple[Tensor, ...]:
    """The :class:`LSTMRule`'s parameters in :func:`rnnprop_lstm_step`'s order."""
    out = []
    for cell in rule.cells:
        out += [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    return (*out, rule.out.weight)


def fused_rnnprop(rule: LSTMRule, *, betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8,
                  differentiable: bool = False, compile: str = "auto") -> Transform:
    """:func:`rnnprop` of an :class:`LSTMRule` through :func:`rnnprop_lstm_step`.

    Same arguments, state and numbers (to float rounding); ``compile`` is one of
    :data:`COMPILE_MODES`: ``"auto"`` compiles on CUDA and runs the eager function elsewhere. The
    first compiled step pays the compilation (tens of seconds on a CPU); the step number enters
    only through the bias corrections, so later steps reuse the compiled code.
    """
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
