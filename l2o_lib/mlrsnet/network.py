"""The MLR-SNet schedule network: the guarded LR ceiling γ (:func:`gamma_bound`, with ``f0`` from
:func:`initial_loss`), the functional LSTM step :func:`mlrsnet_lr` (and its gate-by-gate reference)
and :class:`MLRSNet`, the module holding ``φ``. See :mod:`l2o_lib.mlrsnet` for the equations."""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check_int, check_positive, check_seed
from ..data import ArrayData
from ..functional import FlatModel

__all__ = ["gamma_bound", "LRCarry", "mlrsnet_lr", "mlrsnet_lr_reference", "MLRSNet", "initial_loss"]


# ------------------------------------------------------------------------------------- γ bound


def gamma_bound(f0: float | Tensor, num_classes: int, *, min_log: float = 1.0) -> float | Tensor:
    """The LR ceiling ``γ = √f0 · max(log(f0·C), min_log) / (4·C^¼)`` (paper Sec. 3.2.1, guarded).

    The paper's ``log|f0·C|`` is 0 when ``f0 = 1/C`` (every LR becomes 0: training stops) and
    negative for ``f0 < 1/C`` (negative LRs: ascent); ``f0 <= 0`` makes ``√f0`` NaN. Guards:

    * the log factor is floored at ``min_log`` (default 1), so ``γ >= min_log·√f0/(4·C^¼) > 0``.
      This leaves the paper's value unchanged whenever ``f0·C >= e^min_log``, which holds for
      every randomly initialised cross-entropy model with ``C >= 3`` classes (``f0 ≈ log C``);
      it raises ``γ`` for binary problems and for starts already below ``e/C`` (fine-tuning);
    * a non-finite or non-positive ``f0`` is replaced by ``log C``, the loss of a uniform
      prediction, i.e. the value ``f0`` takes at a typical random initialisation.

    ``f0`` may be a float (returns a float) or a tensor of any shape (returns a tensor, computed
    on its device without a host synchronisation).
    """
    check_int("num_classes", num_classes, minimum=2)
    check_positive("min_log", min_log)
    scale = 4.0 * num_classes ** 0.25
    if isinstance(f0, Tensor):
        fallback = torch.full_like(f0, math.log(num_classes))
        f = torch.where(torch.isfinite(f0) & (f0 > 0), f0, fallback)
        return f.sqrt() * torch.log(f * num_classes).clamp_min(min_log) / scale
    if isinstance(f0, bool) or not isinstance(f0, (int, float)):
        raise ValueError(f"f0 must be a real number or a tensor, got {f0!r}")
    f = float(f0) if math.isfinite(f0) and f0 > 0 else math.log(num_classes)
    return math.sqrt(f) * max(math.log(f * num_classes), min_log) / scale


# --------------------------------------------------------------------------- the schedule net


class LRCarry(NamedTuple):
    """The LSTM state ``(h, c)``, each ``(..., hidden)``."""

    h: Tensor
    c: Tensor


def mlrsnet_lr(params: Mapping[str, Tensor], loss: Tensor, carry: LRCarry,
               gamma: float | Tensor) -> tuple[Tensor, LRCarry]:
    """One step of the schedule network: ``(lr, carry')`` from the training ``loss`` (paper Eq. 8).

    Args:
        params: the network's parameters by name (``dict(net.named_parameters())``).
        loss: training loss(es), shape ``batch_shape`` (``()`` for one run, ``(K,)`` for K runs).
        carry: the LSTM state, each ``batch_shape + (hidden,)``.
        gamma: the LR ceiling (:func:`gamma_bound`), a float or a tensor broadcastable to ``loss``.

    Returns:
        the learning rate(s) ``γ·σ(W3 h + b3)`` of shape ``batch_shape``, and the new carry.
        Differentiable in ``params`` (and ``loss``, ``carry``).
    """
    hidden = carry.h.shape[-1]
    a = torch.relu(torch.addcmul(params["inp.bias"], loss.unsqueeze(-1), params["inp.weight"].squeeze(-1)))
    b = torch.relu(F.linear(carry.h, params["rec.weight"], params["rec.bias"]))
    z = F.linear(torch.cat([a, b], -1), params["gates.weight"], params["gates.bias"])
    # Gate layout (I, F, O, G), as the public code: the three sigmoid gates are one slice, so
    # the cell is a handful of kernels (this runs every training step; per-op overhead is the cost).
    ifo = torch.sigmoid(z[..., :3 * hidden])
    c = torch.addcmul(ifo[..., hidden:2 * hidden] * carry.c, ifo[..., :hidden], torch.tanh(z[..., 3 * hidden:]))
    h = ifo[..., 2 * hidden:] * torch.tanh(c)
    p = torch.sigmoid(F.linear(h, params["out.weight"], params["out.bias"])).squeeze(-1)
    return gamma * p, LRCarry(h, c)


def mlrsnet_lr_reference(params: Mapping[str, Tensor], loss: Tensor, carry: LRCarry,
                         gamma: float | Tensor) -> tuple[Tensor, LRCarry]:
    """:func:`mlrsnet_lr` spelled out gate by gate (the readable test reference)."""
    f = loss.unsqueeze(-1)
    a = torch.relu(f @ params["inp.weight"].T + params["inp.bias"])
    b = torch.relu(carry.h @ params["rec.weight"].T + params["rec.bias"])
    z = torch.cat([a, b], -1) @ params["gates.weight"].T + params["gates.bias"]
    i, fg, o, g = z.chunk(4, -1)
    c = torch.sigmoid(fg) * carry.c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    p = torch.sigmoid(h @ params["out.weight"].T + params["out.bias"]).squeeze(-1)
    return gamma * p, LRCarry(h, c)


class MLRSNet(nn.Module):
    """The parameters ``φ`` of the schedule network and a module front-end to :func:`mlrsnet_lr`.

    Layers: ``inp`` (1 → d', W1 on the loss), ``rec`` (d' → d', W1 on ``h``), ``gates``
    (2d' → 4d', W2), ``out`` (d' → 1, W3). Initialisation as the public code: the first three
    weight matrices uniform in ``[-init_range, init_range]``, PyTorch defaults elsewhere, plus a
    forget-gate bias of ``forget_bias`` (the public code subtracts 1 inside the cell; as an
    initial bias it has the same effect and keeps Eq. 8 exact). The initial LR is then close
    to ``γ/2``.

    Args:
        hidden: ``d'``, the LSTM width (the paper's 50).
        init_range: half-width of the uniform initialisation.
        forget_bias: initial bias of the forget gate.
        seed: seeds the initialisation (the global RNG is left alone); ``None`` uses it.
    """

    def __init__(self, hidden: int = 50, *, init_range: float = 0.1, forget_bias: float = -1.0,
                 seed: int | None = None):
        super().__init__()
        check_int("hidden", hidden)
        check_positive("init_range", init_range)
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number, got {forget_bias!r}")
        if seed is not None:
            check_seed("seed", seed)
        self.hidden = hidden
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.inp = nn.Linear(1, hidden)
            self.rec = nn.Linear(hidden, hidden)
            self.gates = nn.Linear(2 * hidden, 4 * hidden)
            self.out = nn.Linear(hidden, 1)
            with torch.no_grad():
                for layer in (self.inp, self.rec, self.gates):
                    layer.weight.uniform_(-init_range, init_range)
                self.gates.bias[hidden:2 * hidden].add_(forget_bias)

    def init_carry(self, batch_shape: Sequence[int] = (), *, device=None, dtype=None) -> LRCarry:
        """A zero LSTM state for runs of shape ``batch_shape``."""
        ref = self.out.weight
        shape = (*tuple(batch_shape), self.hidden)
        z = torch.zeros(shape, device=device or ref.device, dtype=dtype or ref.dtype)
        return LRCarry(z, z.clone())

    def params(self) -> dict[str, Tensor]:
        """``φ`` by name, the form :func:`mlrsnet_lr` takes."""
        return dict(self.named_parameters())

    def forward(self, loss: Tensor, carry: LRCarry, gamma: float | Tensor = 1.0) -> tuple[Tensor, LRCarry]:
        """``mlrsnet_lr(self.params(), loss, carry, gamma)``."""
        return mlrsnet_lr(self.params(), loss, carry, gamma)


# ----------------------------------------------------------------------------- f0


def initial_loss(model: FlatModel, theta: Tensor, data: ArrayData, *, max_examples: int = 2048) -> Tensor:
    """``f0``: the eval-mode loss of ``theta`` on the first ``max_examples`` training examples
    (the public code uses the whole training set), as a 0-d tensor (no host synchronisation)."""
    check_int("max_examples", max_examples)
    n = min(len(data), max_examples)
    return model.evaluate(theta, data.x[:n], data.y[:n])["loss"]
