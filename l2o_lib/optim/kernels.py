"""The arithmetic several optimizers share, written once as pure functions over tensors.

Each follows the operation order of the matching ``torch.optim`` kernel, so that a transform built
on them agrees with ``torch.optim`` bit for bit (tests/test_optim.py checks it step for step).
Learned rules whose coefficients are tensors (L3RS's per-member Adam betas) cannot use
:func:`adam_moments`: ``addcmul``'s ``value`` must be a Python number.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["coupled_decay", "heavy_ball", "adam_moments"]


def coupled_decay(grad: Tensor, theta: Tensor, weight_decay: float) -> Tensor:
    """Coupled (L2) weight decay as torch.optim adds it to the gradient: ``g + wd·θ`` (``g`` itself at 0)."""
    return grad.add(theta, alpha=weight_decay) if weight_decay else grad


def heavy_ball(buf: Tensor, grad: Tensor, momentum: float, *, dampening: float = 0.0, first: bool = False) -> Tensor:
    """torch.optim.SGD's momentum buffer: ``b_t = μ·b_{t-1} + (1 - dampening)·g_t``, and ``b_0 = g_0``
    at the ``first`` step (a zero ``buf`` with ``first=False`` gives the same ``b_0``)."""
    return grad.clone() if first else buf.mul(momentum).add(grad, alpha=1 - dampening)


def adam_moments(exp_avg: Tensor, exp_avg_sq: Tensor, grad: Tensor, beta1: float,
                 beta2: float) -> tuple[Tensor, Tensor]:
    """Adam's moment estimates: ``m ← β1·m + (1-β1)·g`` (as ``lerp``) and ``v ← β2·v + (1-β2)·g²``."""
    return exp_avg.lerp(grad, 1 - beta1), exp_avg_sq.mul(beta2).addcmul(grad, grad, value=1 - beta2)
