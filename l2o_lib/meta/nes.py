"""Natural Evolution Strategies (Salimans et al., 2017), the meta-trainer of L3RS.

NES maximises a fitness F(phi) of a flat meta-parameter vector without gradients through the
inner runs: each generation draws ``pairs`` Gaussian directions eps_i, evaluates the antithetic
population phi +- sigma eps_i, replaces the fitnesses by centred ranks (invariant to any
monotone transform of F, robust to outliers and to diverged runs) and steps along

    g = 1 / (n sigma) * sum_i (s(phi + sigma eps_i) - s(phi - sigma eps_i)) eps_i,   n = 2 pairs

with Adam or SGD. Step size and sigma decay smoothly by 0.5 every ``halve_every`` generations
(the paper: every 500). The noise of generation ``t`` depends on ``(seed, t)`` only, so every
process of a sharded run and a resumed run draw the same population.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..config import check_int, check_positive, check_seed
from ..finite import check_finite_data
from .checkpoint import resume_meta, save_meta
from .guard import DivergenceGuard

__all__ = ["centered_ranks", "antithetic_noise", "nes_members", "nes_gradient", "nes_estimate", "NESResult",
           "nes_train"]


def centered_ranks(fitness: Tensor) -> Tensor:
    """Rank-based fitness shaping: ranks scaled to ``[-0.5, 0.5]``, best = 0.5.

    Ties share their mean rank; a non-finite fitness (NaN, +-inf: a diverged run) counts as
    the worst. Only the order of ``fitness`` matters, so the result is invariant to any strictly
    increasing transform of it.
    """
    if not isinstance(fitness, Tensor) or fitness.dim() != 1 or fitness.numel() == 0:
        raise ValueError(f"fitness must be a non-empty 1-d tensor, got {getattr(fitness, 'shape', fitness)!r}")
    f = fitness.detach().double()
    f = torch.where(torch.isfinite(f), f, torch.full_like(f, -math.inf))
    n = f.numel()
    if n == 1:
        return torch.zeros(1, dtype=torch.float64, device=f.device)
    # rank_i = #{j: f_j < f_i} + (#{j: f_j == f_i} - 1) / 2: O(n^2) comparisons, trivial for populations.
    less = (f[None, :] < f[:, None]).sum(1).double()
    equal = (f[None, :] == f[:, None]).sum(1).double()
    ranks = less + (equal - 1) / 2
    return ranks / (n - 1) - 0.5


def antithetic_noise(pairs: int, dim: int, *, seed: int, generation: int, device=None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """``(pairs, dim)`` standard normal directions of one generation, a function of ``(seed, generation)``."""
    check_int("pairs", pairs)
    check_int("dim", dim)
    check_seed("seed", seed)
    check_int("generation", generation, minimum=0)
    # Drawn on the CPU so that a seed gives the same population on every device and process.
    g = torch.Generator().manual_seed((seed * 1_000_003 + generation) % (2**63 - 1))
    return torch.randn(pairs, dim, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def nes_members(phi: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """The antithetic population ``[phi + sigma eps_1 .. phi + sigma eps_h, phi - sigma eps_1 ..]``: ``(2h, D)``."""
    return phi.detach()[None, :] + sigma * torch.cat([noise, -noise])


def nes_gradient(noise: Tensor, fitness: Tensor, sigma: float) -> Tensor:
    """The NES ascent direction from the ``(h, D)`` noise and the ``(2h,)`` fitnesses of
    :func:`nes_members` (rank-shaped with :func:`centered_ranks`)."""
    check_positive("sigma", sigma)
    h = noise.shape[0]
    if fitness.shape != (2 * h,):
        raise ValueError(f"fitness must have shape ({2 * h},) for {h} antithetic pairs, got {tuple(fitness.shape)}")
    shaped = centered_ranks(fitness).to(noise.dtype).to(noise.device)
    return (shaped[:h] - shaped[h:]) @ noise / (2 * h * sigma)


def nes_estimate(phi: Tensor, fitness_fn: Callable[[Tensor], Tensor], *, pairs: int, sigma: float, seed: int = 0,
                 generation: int = 0) -> tuple[Tensor, Tensor]:
    """``(gradient estimate, fitnesses)`` of one generation around ``phi``, single process."""
    noise = antithetic_noise(pairs, phi.numel(), seed=seed, generation=generation, device=phi.device, dtype=phi.dtype)
    fitness = fitness_fn(nes_members(phi, noise, sigma))
    return nes_gradient(noise, fitness, sigma), fitness


class _Vector(nn.Module):
    """``phi`` as the single parameter of a module, so torch optimizers and the guard apply."""

    def __init__(self, phi: Tensor):
        super().__init__()
        self.phi = nn.Parameter(phi.detach().clone())


@dataclass
class NESResult:
    """What :func:`nes_train` returns.

    Attributes:
        phi: the final meta-parameters.
        history: per generation ``generation``, ``fitness_mean`` / ``fitness_median`` / ``fitness_max``
            (over finite members), ``finite`` (fraction), ``lr``, ``sigma``, ``accepted``, ``seconds``.
        events: guard events (refused generations) as dicts.
        start: the generation this process started at (> 0 after a resume).
    """

    phi: Tensor
    history: dict
    events: list = field(default_factory=list)
    start: int = 0


def _shard(n: int, distributed: bool) -> tuple[int, int, int]:
    if not distributed:
        return 0, 1, n
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("distributed=True needs torch.distributed initialised (torchrun, or init_process_group)")
    world = dist.get_world_size()
    if n % world:
        raise ValueError(f"pairs: the population of {n} members must split evenly over {world} processes")
    return dist.get_rank(), world, n // world


def _gather(local: Tensor, world: int) -> Tensor:
    if world == 1:
        return local
    import torch.distributed as dist

    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def nes_train(phi0: Tensor, fitness_fn: Callable[[Tensor, int], Tensor], *, generations: int, pairs: int,
              sigma: float = 0.05, lr: float = 0.01, halve_every: int = 500, optimizer: str = "adam",
              seed: int = 0, run: Any = None, checkpoint_every: int = 50, patience: int = 10,
              explode: float = 1e3, distributed: bool = False, desc: str | None = "NES",
              on_generation: Callable[[int, Tensor, dict], None] | None = None) -> NESResult:
    """Maximise ``fitness_fn`` over a flat vector with antithetic NES and centred-rank shaping.

    Args:
        phi0: starting meta-parameters ``(D,)``.
        fitness_fn: ``fitness_fn(members (m, D), generation) -> (m,)`` fitness (higher is better;
            NaN / inf allowed: such members rank last). It should evaluate the members together
            (e.g. :func:`l2o_lib.l3rs.population_fitness`, one vmapped program) and draw the
            generation's tasks from ``generation`` so that all members (and processes) share them.
        generations: number of generations (in total, counting those of a resumed run; fewer
            than the run already holds raises ``ValueError``).
        pairs: antithetic pairs per generation (population ``2 * pairs``).
        sigma, lr: noise scale and meta step size, both multiplied by ``0.5 ** (t / halve_every)``.
        optimizer: ``"adam"`` or ``"sgd"`` on the (negated) estimate.
        run: a :class:`~l2o_lib.results.Run`: checkpoint every ``checkpoint_every`` generations and
            at the end, and resume from its newest checkpoint.
        patience, explode: :class:`DivergenceGuard` settings. A generation is refused (no step)
            when the estimate is not finite, no member is finite, or the median loss
            ``-median(fitness)`` exceeds ``explode`` x the first one.
        distributed: shard the population over the processes of the initialised
            ``torch.distributed`` group (each evaluates ``2 pairs / world`` members, fitnesses are
            all-gathered, every process takes the same step; only rank 0 writes checkpoints).
        on_generation: ``on_generation(t, phi, record)`` after every generation.
    """
    _check_nes_args(phi0, fitness_fn, generations=generations, pairs=pairs, sigma=sigma, lr=lr,
                    halve_every=halve_every, optimizer=optimizer, seed=seed, checkpoint_every=checkpoint_every)
    rank, world, local_n = _shard(2 * pairs, distributed)
    holder = _Vector(phi0)
    opt = (torch.optim.Adam(holder.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(holder.parameters(), lr=lr))
    guard = DivergenceGuard(holder, opt, explode=explode, patience=patience)
    keys = ("generation", "fitness_mean", "fitness_median", "fitness_max", "finite", "lr", "sigma", "accepted", "seconds")
    history: dict = {k: [] for k in keys}
    events: list = []
    start, extra = resume_meta(run, kind="nes", module=holder, optimizer=opt, guard=guard,
                               total_name="generations", total=generations)
    if extra is not None:
        history = {k: list(v) for k, v in extra["history"].items()}
        events = list(extra["events"])
    from ..training import progress

    def checkpoint(done: int) -> None:
        if rank == 0:
            save_meta(run, done, kind="nes", module=holder, optimizer=opt, guard=guard, history=history,
                      events=events)

    for t in progress(range(start, generations), desc=desc, initial=start, total=generations):
        clock = time.perf_counter()
        decay = 0.5 ** (t / halve_every)
        lr_t, sigma_t = lr * decay, sigma * decay
        phi = holder.phi.detach()
        noise = antithetic_noise(pairs, phi.numel(), seed=seed, generation=t, device=phi.device, dtype=phi.dtype)
        local = fitness_fn(nes_members(phi, noise, sigma_t)[rank * local_n:(rank + 1) * local_n], t)
        if not isinstance(local, Tensor) or local.shape != (local_n,):
            raise ValueError(f"fitness_fn must return a ({local_n},) tensor, got {getattr(local, 'shape', local)!r}")
        fitness = _gather(local.detach().double().to(phi.device), world)
        accepted, median_loss = _guarded_step(guard, noise, fitness, t, lr_t, sigma_t)
        if not accepted:
            events.append({"generation": t, "reason": guard.events[-1].reason, "value": guard.events[-1].value})
        record = _record(t, fitness, median_loss, lr_t, sigma_t, accepted, time.perf_counter() - clock)
        for k in keys:
            history[k].append(record[k])
        if on_generation is not None:
            on_generation(t, holder.phi.detach(), record)
        if (t + 1) % checkpoint_every == 0 and t + 1 < generations:
            checkpoint(t + 1)
    checkpoint(generations)
    return NESResult(holder.phi.detach().clone(), history, events, start)


def _check_nes_args(phi0: Tensor, fitness_fn: Callable, *, generations: int, pairs: int, sigma: float, lr: float,
                    halve_every: int, optimizer: str, seed: int, checkpoint_every: int) -> None:
    """:func:`nes_train`'s argument checks, all before any work."""
    if not isinstance(phi0, Tensor) or phi0.dim() != 1:
        raise ValueError(f"phi0 must be a flat tensor, got {getattr(phi0, 'shape', phi0)!r}")
    if not callable(fitness_fn):
        raise ValueError(f"fitness_fn must be callable, got {fitness_fn!r}")
    check_finite_data("phi0", phi0)
    check_int("generations", generations)
    check_int("pairs", pairs)
    check_positive("sigma", sigma)
    check_positive("lr", lr)
    check_int("halve_every", halve_every)
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer={optimizer!r} is not allowed; choose one of ['adam', 'sgd']")
    check_seed("seed", seed)
    check_int("checkpoint_every", checkpoint_every)


def _guarded_step(guard: DivergenceGuard, noise: Tensor, fitness: Tensor, t: int, lr_t: float,
                  sigma_t: float) -> tuple[bool, float]:
    """``(accepted, median loss)``: one optimizer step of ``phi`` (the guard's module) along the NES
    estimate of generation ``t`` at learning rate ``lr_t``, refused by the guard when the estimate
    is not finite, no member is finite or the median loss explodes."""
    finite = fitness[torch.isfinite(fitness)]
    guard.module.phi.grad = -nes_gradient(noise, fitness, sigma_t)  # torch optimizers minimise; NES ascends
    median_loss = -float(finite.median()) if finite.numel() else math.nan
    accepted = guard.check(t, median_loss)
    if accepted:
        for group in guard.optimizer.param_groups:
            group["lr"] = lr_t
        accepted = guard.advance(t)
    return accepted, median_loss


def _record(t: int, fitness: Tensor, median_loss: float, lr_t: float, sigma_t: float, accepted: bool,
            seconds: float) -> dict:
    """Generation ``t``'s entry of :attr:`NESResult.history` (statistics over the finite members)."""
    finite = fitness[torch.isfinite(fitness)]
    return {"generation": t,
            "fitness_mean": float(finite.mean()) if finite.numel() else math.nan,
            "fitness_median": -median_loss,
            "fitness_max": float(finite.max()) if finite.numel() else math.nan,
            "finite": finite.numel() / fitness.numel(), "lr": lr_t, "sigma": sigma_t,
            "accepted": bool(accepted), "seconds": seconds}
