"""NES fitness of L3RS: many optimizers (rows of ``phis``) fine-tune one task as one vmapped
program with common batches (:func:`population_losses`, :func:`population_run`), averaged over a
meta-batch of tasks (:func:`population_fitness`, what :func:`l2o_lib.meta.nes_train` maximises), in
two definitions (:data:`FITNESSES`: ours and the paper's), with the tasks and run lengths of each
generation (:func:`generation_tasks`, :func:`make_fitness`)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from ..config import check_choice, check_int
from ..finetuning import FinetuneTask, TaskFamily, _check_task
from ..functional import FlatModel
from .phi import L3RSConfig
from .transform import _base_transforms, _check_segments, _consts, _init_state, _update

__all__ = ["FITNESSES", "population_losses", "population_run", "population_fitness", "eval_batch", "generation_tasks",
           "make_fitness", "tuple_map"]

#: NES fitness definitions: ours (mean training loss over the run) and the paper's (evaluation-batch loss at the end).
FITNESSES = ("train_mean", "eval_final")


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
    return population_run(model, phis, config, task, steps=steps, batch_size=batch_size, chunk_size=chunk_size,
                          vectorize=vectorize)[0]


def population_run(model: FlatModel, phis: Tensor, config: L3RSConfig, task: FinetuneTask, *, steps: int,
                   batch_size: int = 64, chunk_size: int | None = None, vectorize: bool = True,
                   eval_batch: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """``(losses (n, steps), eval_losses (n,) or None)``: :func:`population_losses`, and with
    ``eval_batch = (x, y)`` each member's loss on it after the last step (the paper's task meta-loss).
    The run is told its length: the time features use ``T = steps``."""
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    if not isinstance(phis, Tensor) or phis.dim() != 2 or phis.shape[1] != config.dim:
        raise ValueError(f"phis must be an (n, {config.dim}) tensor, got {tuple(getattr(phis, 'shape', ()))}")
    check_int("steps", steps)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    _check_task(model, task)
    if eval_batch is not None:
        model.check_batch(eval_batch, name="eval_batch")
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

    def run(chunk: Tensor) -> tuple[Tensor, Tensor]:
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
        return out, None if eval_batch is None else vmap(lambda th: loss_fn(th, *eval_batch))(thetas)

    was = model.module.training
    model.module.eval()
    try:
        with torch.no_grad():
            size = chunk_size or phis.shape[0]
            parts = [run(c) for c in phis.split(size)]
    finally:
        model.module.train(was)
    losses = torch.cat([p[0] for p in parts])
    return losses, (None if eval_batch is None else torch.cat([p[1] for p in parts]))


def tuple_map(fn: Callable, *trees: Any) -> Any:
    """Apply ``fn`` leaf-wise to matching (named) tuples of tensors (the L3RS state)."""
    first = trees[0]
    if isinstance(first, Tensor):
        return fn(*trees)
    mapped = [tuple_map(fn, *parts) for parts in zip(*trees)]
    return type(first)(*mapped) if hasattr(first, "_fields") else type(first)(mapped)


def eval_batch(task: FinetuneTask, size: int) -> tuple[Tensor, Tensor]:
    """The task's evaluation batch: ``size`` examples of its test split in a seeded order (all of
    them when it has fewer), the paper's held-apart batch on which a run is scored."""
    check_int("size", size)
    g = torch.Generator().manual_seed(int(task.seed) + 7)
    pick = torch.randperm(len(task.test), generator=g)[:size].to(task.test.x.device)
    return task.test.x[pick], task.test.y[pick]


def population_fitness(model: FlatModel, phis: Tensor, config: L3RSConfig, tasks: Sequence[FinetuneTask], *,
                       steps: int | Sequence[int], batch_size: int = 64, chunk_size: int | None = None,
                       fitness: str = "train_mean", eval_size: int = 256) -> Tensor:
    """NES fitness of every row of ``phis``, averaged over ``tasks`` (a meta-batch); NaN where a run
    diverged (it will rank last).

    ``fitness`` (:data:`FITNESSES`): ``"train_mean"``, minus the mean mini-batch training loss over
    the run (rewards fast descent and a low end; our default); ``"eval_final"``, minus the loss on
    the task's evaluation batch (:func:`eval_batch`, ``eval_size`` examples) after the last step
    (the paper's task meta-loss). ``steps``: one run length for all tasks, or one per task (the
    paper samples it per task; each run is told its own length).
    """
    if not tasks:
        raise ValueError("tasks must not be empty")
    check_choice("fitness", fitness, FITNESSES)
    lengths = [steps] * len(tasks) if isinstance(steps, int) else list(steps)
    if len(lengths) != len(tasks):
        raise ValueError(f"steps must be an int or one length per task ({len(tasks)}), got {len(lengths)}")
    scores = []
    for task, k in zip(tasks, lengths):
        batch = eval_batch(task, eval_size) if fitness == "eval_final" else None
        losses, evals = population_run(model, phis, config, task, steps=k, batch_size=batch_size,
                                       chunk_size=chunk_size, eval_batch=batch)
        scores.append(losses.mean(1) if evals is None else evals)
    return -torch.stack(scores).mean(0)


def generation_tasks(family: TaskFamily, generation: int, *, count: int, stream: int, steps: int,
                     min_steps: int | None = None) -> tuple[list[FinetuneTask], list[int]]:
    """``(tasks, lengths)`` of one NES generation: ``count`` meta-train tasks of stream ``stream`` (one
    per meta-training seed, so seeds see different tasks) and each run's length, ``steps`` or, with
    ``min_steps``, drawn uniformly from ``[min_steps, steps]`` (the paper's sampled horizon K)."""
    check_int("generation", generation, minimum=0)
    _check_generations(count=count, stream=stream, steps=steps, min_steps=min_steps)
    first = 10_000 + stream * 1_000_000 + generation * count
    tasks = [family.sample("train", first + j) for j in range(count)]
    if min_steps is None:
        return tasks, [steps] * count
    g = torch.Generator().manual_seed(first)
    return tasks, torch.randint(min_steps, steps + 1, (count,), generator=g).tolist()


def _check_generations(*, count: int, stream: int, steps: int, min_steps: int | None) -> None:
    """:func:`generation_tasks`'s checks of what every generation shares."""
    check_int("count", count)
    check_int("stream", stream, minimum=0)
    check_int("steps", steps)
    if min_steps is not None:
        check_int("min_steps", min_steps)
        if min_steps > steps:
            raise ValueError(f"min_steps={min_steps} must be <= steps={steps}")


def make_fitness(family: TaskFamily, config: L3RSConfig, *, fitness: str, steps: int, min_steps: int | None = None,
                 tasks_per_gen: int = 1, stream: int = 0, batch_size: int = 64, chunk_size: int | None = None,
                 eval_size: int = 256) -> Callable[[Tensor, int], Tensor]:
    """``fitness_fn(members, generation)`` for :func:`l2o_lib.meta.nes_train`: the generation's tasks
    (:func:`generation_tasks`) scored by :func:`population_fitness`. The paper's protocol is
    ``fitness="eval_final"`` with ``min_steps`` set (K sampled); ours ``"train_mean"`` at ``steps``."""
    check_choice("fitness", fitness, FITNESSES)
    _check_generations(count=tasks_per_gen, stream=stream, steps=steps, min_steps=min_steps)  # before any work

    def fitness_fn(members: Tensor, generation: int) -> Tensor:
        tasks, lengths = generation_tasks(family, generation, count=tasks_per_gen, stream=stream, steps=steps,
                                          min_steps=min_steps)
        return population_fitness(family.model, members, config, tasks, steps=lengths, batch_size=batch_size,
                                  chunk_size=chunk_size, fitness=fitness, eval_size=eval_size)

    return fitness_fn
