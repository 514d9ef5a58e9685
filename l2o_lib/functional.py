"""A flat-parameter, functional view of any ``nn.Module``.

Every optimizer in l2o-lab, learned or not, works on one flat vector ``theta`` of all trainable
parameters. :class:`FlatModel` maps between that vector and the module:

* ``unflatten(theta)`` returns *views* into ``theta`` (``split`` + ``view``; no copies), so the
  gradient of ``loss(theta, batch)`` with respect to ``theta`` arrives already flat;
* buffers (BatchNorm running statistics) are not part of ``theta``: they travel as a separate
  ``dict`` of tensors that a training step updates in place, exactly as ``nn.BatchNorm`` does;
* ``batched_loss(thetas, batch)`` evaluates a stack ``thetas`` of shape ``(K, D)`` in one
  ``torch.func.vmap`` call (eval mode, so BatchNorm reads its running statistics and nothing is
  written in place), chunked when memory asks for it;
* ``loss_and_grad(theta, batch)`` without a graph to keep runs a private copy of the module whose
  own leaf parameters receive ``theta`` (one copy of D numbers), because module autograd is faster
  than ``functional_call`` over views of one vector (on 2 CPU cores a ResNet-20 step at batch 32
  by about 3 %, an MLP on MNIST-1D at batch 128 by about a sixth; with it ``bench/momentum_step.py``
  is at 0.99× ``torch.optim.SGD``).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .config import check_int

__all__ = ["FlatModel", "Batch"]

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


class _Leaves(NamedTuple):
    module: nn.Module            # a deep copy of the model whose own parameters receive theta
    params: list[Tensor]         # its trainable parameters, in theta's order
    ref: Tensor                  # the original module's first trainable parameter (device, dtype)
    frozen: dict[str, Tensor]    # the original module's parameters outside theta's layout


def _input_shape(module: nn.Module, input_shape) -> tuple[int, ...] | None:
    """The shape of one example: ``input_shape`` when given (validated), else the module's own
    ``input_shape`` attribute when it is a tuple of ints, else ``None`` (not checked)."""
    given = input_shape is not None
    shape = input_shape if given else getattr(module, "input_shape", None)
    ok = isinstance(shape, (tuple, list, torch.Size)) and all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape)
    if given and not ok:
        raise ValueError(f"input_shape must be a tuple of positive ints (no batch dim), got {input_shape!r}")
    return tuple(shape) if ok else None


class FlatModel:
    """Functional access to ``module`` through one flat parameter vector.

    Args:
        module: any ``nn.Module``; its trainable parameters define the layout of ``theta``.
        loss_fn: ``loss_fn(outputs, targets) -> scalar``; cross-entropy by default.
        input_shape: the shape of one example, checked against every batch (default: the
            module's own ``input_shape`` attribute, which every :func:`~l2o_lib.models.build_model`
            architecture has; ``None`` when it has none: the width is then not checked).

    Attributes:
        dim: number of entries of ``theta``.
        names, shapes, numels: the layout, in ``module.named_parameters()`` order.
        input_shape: the shape of one example, or ``None`` when unknown.
    """

    def __init__(self, module: nn.Module, loss_fn: LossFn = F.cross_entropy, *,
                 input_shape: tuple[int, ...] | None = None):
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.module = module
        self.loss_fn = loss_fn
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("module has no trainable parameters")
        # The first trainable parameter carries the dtype and device theta and the data must have
        # (module.to() changes a parameter's data in place, so this stays current).
        self._ref = named[0][1]
        self.input_shape = _input_shape(module, input_shape)
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)
        self.buffer_names = [n for n, _ in module.named_buffers()]
        self._leaf_module: _Leaves | None = None  # loss_and_grad's private copy, made on first use

    # ------------------------------------------------------------------ layout
    def flatten(self) -> Tensor:
        """A fresh flat copy of the module's current parameters."""
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Views of ``theta`` shaped like the module's parameters (no copy). Only the size is
        checked: the layout applies to any vector of ``dim`` entries (e.g. indices)."""
        self._check_size(theta)
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(theta, self.numels), self.shapes)}

    def load(self, theta: Tensor) -> None:
        """Copy ``theta`` into the module's own parameters (for code that wants the module)."""
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for n, v in self.unflatten(theta).items():
                params[n].copy_(v)

    def segments(self) -> list[int]:
        """Sizes of the per-tensor segments of ``theta`` (for layer-wise rules such as LAMB)."""
        return list(self.numels)

    def check_theta(self, theta: Tensor, *, batched: bool = False, name: str = "theta") -> None:
        """Raise ``ValueError`` unless ``theta`` has this model's size (``(K, D)`` if batched), and
        the dtype and device of its parameters. Metadata only: never synchronises."""
        self._check_size(theta, batched=batched, name=name)
        ref = self._ref
        if theta.dtype != ref.dtype or theta.device != ref.device:
            raise ValueError(f"{name} has dtype {theta.dtype} on device {theta.device}; this model's parameters "
                             f"have dtype {ref.dtype} on device {ref.device} (convert it with .to(), or the module)")

    def _check_size(self, theta: Tensor, *, batched: bool = False, name: str = "theta") -> None:
        if not isinstance(theta, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(theta).__name__}")
        want = f"(K, {self.dim})" if batched else f"({self.dim},)"
        ok = theta.dim() == (2 if batched else 1) and theta.shape[-1] == self.dim
        if not ok:
            raise ValueError(f"{name} has shape {tuple(theta.shape)}; this model needs {want}")

    def check_inputs(self, x: Tensor, *, name: str = "x") -> None:
        """Raise ``ValueError`` unless ``x`` is a batch of inputs this model takes: shape
        ``(N, *input_shape)`` (when known), the parameters' floating dtype and device. Metadata only."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of inputs, got {type(x).__name__}")
        want = self.input_shape
        if x.dim() == 0 or (want is not None and tuple(x.shape[1:]) != want):
            shape = "(N, ...)" if want is None else f"(N, {', '.join(map(str, want))})"
            raise ValueError(f"{name}: inputs x have shape {tuple(x.shape)}; this model takes {shape}")
        ref = self._ref
        if (x.is_floating_point() and x.dtype != ref.dtype) or x.device != ref.device:
            raise ValueError(f"{name}: inputs x have dtype {x.dtype} on device {x.device}; this model's parameters "
                             f"have dtype {ref.dtype} on device {ref.device}")

    def check_data(self, x: Tensor, y: Tensor, *, name: str = "batch") -> None:
        """Raise ``ValueError`` unless ``(x, y)`` is data this model can be trained on: inputs as
        :meth:`check_inputs`, as many labels as inputs on the same device, and class indices of
        dtype ``torch.long`` for cross-entropy. Metadata only: never synchronises."""
        self.check_inputs(x, name=name)
        if not isinstance(y, Tensor):
            raise ValueError(f"{name}: labels y must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() == 0 or y.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: x and y must hold the same number of examples, got shapes "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if y.device != x.device:
            raise ValueError(f"{name}: labels y are on device {y.device}, inputs x on {x.device}")
        if self.loss_fn is F.cross_entropy and (y.dtype not in (torch.long, torch.uint8)) and not (
                y.is_floating_point() and y.dim() >= 2):  # floating (N, C) targets are class probabilities
            raise ValueError(f"{name}: labels y have dtype {y.dtype}; cross-entropy needs integer class indices of "
                             f"dtype torch.long (convert them with y.long())")

    def check_batch(self, batch: Batch, *, name: str = "batch") -> None:
        """:meth:`check_data` for a pair ``batch = (x, y)``."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"{name} must be a pair (x, y) of tensors, got {type(batch).__name__}")
        self.check_data(*batch, name=name)

    def init_buffers(self) -> dict[str, Tensor]:
        """A private copy of the module's buffers (BatchNorm statistics) to carry as state."""
        return {n: b.detach().clone() for n, b in self.module.named_buffers()}

    # ------------------------------------------------------------- evaluation
    @contextmanager
    def _mode(self, train: bool) -> Iterator[None]:
        # functional_call honours module.training; restore it so callers see no side effect.
        was = self.module.training
        self.module.train(train)
        try:
            yield
        finally:
            self.module.train(was)

    def apply(self, theta: Tensor, x: Tensor, buffers: dict[str, Tensor] | None = None,
              *, train: bool = False) -> Tensor:
        """Model outputs at ``theta``.

        In ``train`` mode BatchNorm uses batch statistics and updates ``buffers`` in place
        (pass ``init_buffers()`` state; ``None`` uses the module's own buffers).
        """
        self.check_theta(theta)
        self.check_inputs(x)
        return self._apply(theta, x, buffers, train)

    def _apply(self, theta: Tensor, x: Tensor, buffers: dict[str, Tensor] | None, train: bool) -> Tensor:
        params = self.unflatten(theta)
        state = params if buffers is None else {**params, **buffers}
        with self._mode(train):
            return functional_call(self.module, state, (x,), strict=False)

    def loss(self, theta: Tensor, batch: Batch, buffers: dict[str, Tensor] | None = None,
             *, train: bool = True) -> Tensor:
        """Scalar training loss of ``theta`` on ``batch = (x, y)``."""
        self.check_theta(theta)
        self.check_batch(batch)
        return self._loss(theta, batch, buffers, train)

    def _loss(self, theta: Tensor, batch: Batch, buffers: dict[str, Tensor] | None, train: bool) -> Tensor:
        x, y = batch
        return self.loss_fn(self._apply(theta, x, buffers, train), y)

    def loss_and_grad(self, theta: Tensor, batch: Batch, buffers: dict[str, Tensor] | None = None,
                      *, create_graph: bool = False, train: bool = True) -> tuple[Tensor, Tensor]:
        """``(loss, d loss / d theta)``; the gradient is one flat tensor.

        ``create_graph=True`` keeps the graph for meta-gradients through the step. Without it (and
        for a ``theta`` that needs no gradient itself) the module's own autograd runs on a private
        copy whose parameters receive ``theta`` (see the module docstring); same numbers.
        """
        # Metadata checks only (no host synchronisation): this runs every training step.
        self.check_theta(theta)
        self.check_batch(batch)
        if not create_graph and not theta.requires_grad:
            leaves = self._leaves(theta)
            if leaves is not None:
                return self._leaf_loss_and_grad(leaves, theta, batch, buffers, train)
        with torch.enable_grad():
            leaf = theta if theta.requires_grad else theta.detach().requires_grad_(True)
            loss = self._loss(leaf, batch, buffers, train)
            (g,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
        return (loss if create_graph else loss.detach()), g

    def _leaves(self, theta: Tensor) -> _Leaves | None:
        """The private copy of the module for ``loss_and_grad``, made again when the module moved to
        another device or dtype; ``None`` when ``theta`` does not match the module."""
        leaves = self._leaf_module
        stale = leaves is None or (leaves.params[0].device, leaves.params[0].dtype) != (leaves.ref.device,
                                                                                         leaves.ref.dtype)
        if stale:
            named = dict(self.module.named_parameters())
            module = copy.deepcopy(self.module)
            copied = dict(module.named_parameters())
            # the layout decides what is trained, whatever requires_grad says by now
            leaves = self._leaf_module = _Leaves(module, [copied[n].requires_grad_(True) for n in self.names],
                                                 named[self.names[0]],
                                                 {n: p for n, p in named.items() if n not in self.names})
        if theta.device != leaves.ref.device or theta.dtype != leaves.ref.dtype:
            return None
        return leaves

    def _leaf_loss_and_grad(self, leaves: _Leaves, theta: Tensor, batch: Batch, buffers: dict[str, Tensor] | None,
                            train: bool) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            torch._foreach_copy_(leaves.params, [t.view(s) for t, s in zip(torch.split(theta, self.numels), self.shapes)])
        # Buffers and frozen parameters are the caller's state / the original module's, so BatchNorm
        # updates exactly what the functional path would update.
        if buffers is None and self.buffer_names:
            buffers = dict(self.module.named_buffers())
        state = {**leaves.frozen, **buffers} if buffers else leaves.frozen
        if leaves.module.training != train:
            leaves.module.train(train)
        x, y = batch
        with torch.enable_grad():
            out = functional_call(leaves.module, state, (x,), strict=False) if state else leaves.module(x)
            loss = self.loss_fn(out, y)
            grads = torch.autograd.grad(loss, leaves.params)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])

    def batched_apply(self, thetas: Tensor, x: Tensor, buffers: dict[str, Tensor] | None = None,
                      *, chunk_size: int | None = None) -> Tensor:
        """Outputs for every row of ``thetas`` (``(K, D)``) on the same inputs: ``(K, N, ...)``.

        Runs in eval mode under ``vmap`` so no buffer is written; rows are processed
        ``chunk_size`` at a time when given (to bound memory).
        """
        self.check_theta(thetas, batched=True)
        self.check_inputs(x)
        if chunk_size is not None:
            check_int("chunk_size", chunk_size)
        buffers = dict(self.module.named_buffers()) if buffers is None else buffers

        def one(theta: Tensor) -> Tensor:
            return functional_call(self.module, {**self.unflatten(theta), **buffers}, (x,), strict=False)

        with self._mode(False):
            return vmap(one, chunk_size=chunk_size)(thetas)

    def batched_loss(self, thetas: Tensor, batch: Batch, buffers: dict[str, Tensor] | None = None,
                     *, chunk_size: int | None = None) -> Tensor:
        """Loss of every row of ``thetas`` on ``batch`` in one batched call: shape ``(K,)``."""
        self.check_batch(batch)
        x, y = batch
        out = self.batched_apply(thetas, x, buffers, chunk_size=chunk_size)
        return vmap(lambda o: self.loss_fn(o, y))(out)

    @torch.no_grad()
    def batched_evaluate(self, thetas: Tensor, x: Tensor, y: Tensor, buffers: dict[str, Tensor] | None = None,
                         *, batch_size: int = 2048, chunk_size: int | None = None) -> dict[str, Tensor]:
        """Loss and accuracy of every row of ``thetas`` over ``(x, y)``: tensors of shape ``(K,)``.

        One vmapped call per data batch (eval mode), e.g. to score a whole trajectory of
        checkpoints or a landscape grid at once.
        """
        check_int("batch_size", batch_size)
        self.check_theta(thetas, batched=True)
        self.check_data(x, y)
        if len(thetas) == 1:
            # One row gains nothing from vmap, whose batched-weight convolutions cost ~15-20 %
            # more than plain ones (ResNet-20 on the CPU, measured); same eval-mode result.
            return {k: v[None] for k, v in self.evaluate(thetas[0], x, y, buffers, batch_size=batch_size).items()}
        total_loss = torch.zeros(len(thetas), device=x.device)
        correct = torch.zeros(len(thetas), device=x.device)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            out = self.batched_apply(thetas, xb, buffers, chunk_size=chunk_size)  # (K, N, C)
            total_loss += vmap(lambda o: self.loss_fn(o, yb))(out) * len(xb)
            correct += (out.argmax(-1) == yb).sum(-1)
        return {"loss": total_loss / len(x), "accuracy": correct / len(x)}

    @torch.no_grad()
    def evaluate(self, theta: Tensor, x: Tensor, y: Tensor, buffers: dict[str, Tensor] | None = None,
                 *, batch_size: int = 2048) -> dict[str, Tensor]:
        """Mean loss and accuracy of ``theta`` over ``(x, y)`` in eval mode, as 0-d tensors.

        Returns tensors (not floats) so a training loop can log them without a host sync.
        """
        check_int("batch_size", batch_size)
        self.check_theta(theta)
        self.check_data(x, y)
        total_loss = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device)
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            out = self._apply(theta, xb, buffers, False)
            total_loss += self.loss_fn(out, yb) * len(xb)
            correct += (out.argmax(-1) == yb).sum()
        return {"loss": total_loss / len(x), "accuracy": correct / len(x)}
