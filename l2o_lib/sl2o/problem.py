"""A task family for meta-training: :class:`Problem` (a model, the space the learned optimizer
acts in, training and validation data), with the batched losses and gradients the inner loop takes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from ..config import check_int
from ..functional import FlatModel
from ..lora import LoRASpace
from ..subspace import Subspace
from ..tasks import Task


@dataclass
class Problem:
    """One task family: a model, the subspace its optimizer acts in, and training data.

    Tasks of the family differ by the order of their batches (the paper samples tasks this way)
    and start at ``theta0`` (the subspace origin when a subspace is given).

    Args:
        model: the flat view of the network.
        train: ``(x, y)`` training tensors on the device.
        batch_size: inner mini-batch size (paper: 128).
        space: a :class:`~l2o_lib.subspace.Subspace`, LoRA coordinates
            (:class:`~l2o_lib.lora.LoRASpace`, for transformers) or ``None`` (all parameters).
        theta0: starting parameters (default: the space's origin, else the module's weights);
            LoRA coordinates always start at the space's own initial ``(A, B)``.
        val: ``(x, y)`` held out of the training data (:meth:`from_task` takes a task's validation
            split), on which the best meta-training epoch is picked; never the test split.
    """

    model: FlatModel
    train: tuple[Tensor, Tensor]
    batch_size: int = 128
    space: Subspace | LoRASpace | None = None
    theta0: Tensor | None = None
    val: tuple[Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, FlatModel):
            raise ValueError(f"model must be a FlatModel, got {type(self.model).__name__}")
        check_int("batch_size", self.batch_size)
        # Shapes, dtypes and devices only: a mismatch would otherwise surface deep in meta-training.
        self.model.check_batch(self.train, name="train")
        if len(self.train[0]) == 0:
            raise ValueError("train must hold at least one example")
        if self.val is not None:
            self.model.check_batch(self.val, name="val")
        if self.theta0 is None:
            self.theta0 = self.space.origin if self.space is not None else self.model.flatten()
        self.model.check_theta(self.theta0, name="theta0")
        if self.space is not None and self.space.ambient_dim != self.model.dim:
            raise ValueError(f"space lives in {self.space.ambient_dim} dimensions, the model has {self.model.dim}")

    @classmethod
    def from_task(cls, task, space: Subspace | LoRASpace | None = None) -> "Problem":
        """The family of ``task`` (a :class:`~l2o_lib.tasks.Task`): its training split, batch size and
        start, with its **validation** split picking the best meta-training epoch."""
        if not isinstance(task, Task):
            raise ValueError(f"task must be a tasks.Task, got {type(task).__name__}")
        val = None if task.val is None else (task.val.x, task.val.y)
        # a space starts at its own origin; without one the task's start is the start
        theta0 = task.theta0 if space is None else None
        return cls(task.model, (task.train.x, task.train.y), task.batch_size, space, theta0=theta0, val=val)

    @property
    def dim(self) -> int:
        """Number of coordinates the learned optimizer acts on."""
        return self.model.dim if self.space is None else self.space.dim

    def start(self, k: int = 1) -> Tensor:
        """Starting coordinates of ``k`` tasks: ``(k, dim)``."""
        if self.space is None:
            z0 = self.theta0
        elif isinstance(self.space, LoRASpace):
            z0 = self.space.init()
        else:
            z0 = self.space.project(self.theta0)
        return z0.expand(k, -1).clone()

    def lift(self, z: Tensor) -> Tensor:
        """Parameters of coordinates ``z``: ``(dim,)`` → ``(D,)``, ``(k, dim)`` → ``(k, D)``."""
        if self.space is None:
            return z
        if isinstance(self.space, LoRASpace):
            return self.space.lift(z) if z.dim() == 1 else torch.stack([self.space.lift(row) for row in z])
        return self.space.lift(z)

    def batches(self, generator: torch.Generator, k: int) -> tuple[Tensor, Tensor]:
        """``k`` independent mini-batches, stacked: ``(k, batch, ...)``."""
        x, y = self.train
        idx = torch.randint(len(x), (k, self.batch_size), generator=generator, device=generator.device)
        return x[idx], y[idx]

    def losses(self, z: Tensor, batches: tuple[Tensor, Tensor]) -> Tensor:
        """Training loss of each of the ``k`` tasks at coordinates ``z`` ``(k, dim)``: shape ``(k,)``.

        One task runs the module directly (BatchNorm in train mode, running statistics left
        alone); several run in one ``vmap`` call, which needs a model without BatchNorm.
        """
        thetas = self.lift(z)
        x, y = batches
        if len(z) == 1:
            return self.model.loss(thetas[0], (x[0], y[0]), train=True)[None]
        return vmap(lambda theta, xb, yb: self.model.loss(theta, (xb, yb), train=True))(thetas, x, y)

    def loss_and_grad(self, z: Tensor, batches: tuple[Tensor, Tensor], *,
                      create_graph: bool = False) -> tuple[Tensor, Tensor]:
        """The summed training loss of the ``k`` tasks at ``z`` and its gradient ``(k, dim)``.

        ``create_graph=False`` (first-order meta-training) returns constants; then one task in a
        linear subspace (or on every parameter) takes :meth:`FlatModel.loss_and_grad` at ``lift(z)``
        and the chain rule ``P g``: the module's own autograd, as fast as a ``torch.optim`` step.
        ``create_graph=True`` keeps the graph through ``z`` and the gradient (second order).
        """
        if not create_graph and len(z) == 1 and not isinstance(self.space, LoRASpace):
            x, y = batches
            loss, g = self.model.loss_and_grad(self.lift(z.detach()[0]), (x[0], y[0]), train=True)
            return loss, (g if self.space is None else self.space.project_grad(g))[None]
        with torch.enable_grad():
            leaf = z if create_graph and z.requires_grad else z.detach().requires_grad_(True)
            loss = self.losses(leaf, batches).sum()
            (g,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
        return (loss if create_graph else loss.detach()), g
