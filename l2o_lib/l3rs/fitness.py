"""NES fitness of L3RS: many optimizers (rows of ``phis``) fine-tune one task as one vmapped
program with common batches (:func:`population_losses`), averaged over a meta-batch of tasks
(:func:`population_fitness`, what :func:`l2o_lib.meta.nes_train` maximises)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from ..config import check_int
from ..finetuning import FinetuneTask, _check_task
from ..functional import FlatModel
from .phi import L3RSConfig
from .transform import _base_transforms, _check_segments, _consts, _init_state, _update

__all__ = ["population_losses", "population_fitness", "tuple_map"]


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
