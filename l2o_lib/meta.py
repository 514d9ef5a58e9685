"""Machinery shared by the meta-trainers: divergence guard, meta-checkpoints and NES.

Meta-training a learned optimizer can blow up: one unlucky unroll produces a NaN or a loss
thousands of times larger than where it started, and one Adam step on that meta-gradient ruins
the optimizer's weights. :class:`DivergenceGuard` keeps the last good copy of the meta-parameters
and the meta-optimizer, refuses a bad meta-step, rolls back, records the event and gives up with
a clear error when it keeps happening. ``meta_state`` / ``load_meta_state`` put the same objects
into a :class:`~l2o_lib.results.Run` checkpoint so that long runs resume where they stopped.

The method modules (:mod:`~l2o_lib.sl2o`, :mod:`~l2o_lib.mlrsnet`, :mod:`~l2o_lib.l3rs`) build
their own loops on these pieces; L3RS trains with :func:`nes_train` (below).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .config import check_int, check_positive, check_seed
from .finite import NonFiniteError, all_finite, check_finite_data

__all__ = ["GuardEvent", "DivergenceGuard", "meta_state", "load_meta_state", "check_meta_kind", "check_not_past"]


@dataclass
class GuardEvent:
    """One refused meta-step: when, why, and the offending meta-loss."""

    step: int
    reason: str
    value: float


class DivergenceGuard:
    """Refuse and roll back meta-steps whose loss or gradient is not finite or explodes.

    Call :meth:`step` after ``backward()`` (or :meth:`check`, then :meth:`advance`, to change the
    optimizer between them). It costs two host synchronisations per meta-step (a meta-step is a
    whole unroll, so this is cheap). A meta-step is bad when the meta-loss or any meta-gradient is
    NaN/inf, when the meta-loss exceeds ``explode`` times the first accepted one, or when the
    optimizer's step itself leaves non-finite parameters (an overflow). A bad step restores the
    parameters and optimizer state saved at the last :meth:`commit`, clears the gradients, records
    a :class:`GuardEvent` and returns ``False``; the caller should then restart its inner task,
    whose state came from the bad trajectory.

    Args:
        module: the learned optimizer (its parameters are checked and restored).
        optimizer: the meta-optimizer (its state is restored too).
        explode: ratio to the first accepted meta-loss that counts as an explosion.
        patience: consecutive bad meta-steps tolerated before giving up with
            :class:`~l2o_lib.finite.NonFiniteError` (the last one non-finite) or ``RuntimeError``.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, *,
                 explode: float = 1e3, patience: int = 10):
        if not isinstance(module, nn.Module):
            raise ValueError(f"module must be an nn.Module, got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.module = module
        self.optimizer = optimizer
        self.explode = check_positive("explode", explode)
        self.patience = check_int("patience", patience)
        self.events: list[GuardEvent] = []
        self.reference: float | None = None
        self._last_loss = math.nan
        self.commit()

    def commit(self) -> None:
        """Remember the current parameters and optimizer state as the last good ones (which also
        ends a streak of bad steps)."""
        self._good = (_clone(self.module.state_dict()), _clone(self.optimizer.state_dict()))
        self._bad_in_a_row = 0

    def _reason(self, loss: float) -> str | None:
        if not math.isfinite(loss):
            return "non-finite meta-loss"
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack([g.abs().sum() for g in grads]).sum())):
            return "non-finite meta-gradient"
        if self.reference is not None and abs(loss) > self.explode * max(abs(self.reference), 1e-12):
            return f"meta-loss exploded (> {self.explode:g} x the first, {self.reference:.4g})"
        return None

    def _refuse(self, step: int, reason: str, value: float) -> None:
        """Record a bad step, restore the last committed state; give up after ``patience`` in a row."""
        self.events.append(GuardEvent(int(step), reason, value))
        self._bad_in_a_row += 1
        params, opt = self._good
        self.module.load_state_dict(params)
        self.optimizer.load_state_dict(_clone(opt))
        self.optimizer.zero_grad(set_to_none=True)
        if self._bad_in_a_row >= self.patience:
            error = NonFiniteError if reason.startswith("non-finite") else RuntimeError
            raise error(
                f"meta-training diverged: {self._bad_in_a_row} bad meta-steps in a row (last at step {step}: "
                f"{reason}); lower the meta learning rate or the learned optimizer's output scale")

    def check(self, step: int, meta_loss: Tensor | float) -> bool:
        """``True`` when the meta-step may go ahead; otherwise roll back and return ``False``."""
        loss = float(meta_loss)
        reason = self._reason(loss)
        if reason is None:
            if self.reference is None:
                self.reference = loss
            self._last_loss = loss
            return True
        self._refuse(step, reason, loss)
        return False

    def advance(self, step: int) -> bool:
        """``optimizer.step()`` after a passed :meth:`check`; ``commit`` when the parameters it
        leaves are finite, otherwise (an overflowing update) roll back and return ``False``."""
        self.optimizer.step()
        if all_finite(self.module.parameters()):
            self.commit()
            return True
        self._refuse(step, "non-finite meta-parameters after the update (it overflowed)", self._last_loss)
        return False

    def step(self, step: int, meta_loss: Tensor | float) -> bool:
        """:meth:`check`, then :meth:`advance` when the step is good."""
        return self.check(step, meta_loss) and self.advance(step)


def check_not_past(name: str, total: int, done: int) -> None:
    """``ValueError`` when a resumed run already holds ``done`` > ``total`` (``name``) units: it
    cannot be cut back, and returning the longer run would silently ignore ``total``."""
    if done > total:
        raise ValueError(f"{name}={total} is smaller than the {done} the run already holds (its newest checkpoint); "
                         f"pass {name} >= {done} to continue it, or use a new run (or resume=False) to start over")


def _clone(obj: Any) -> Any:
    # Tensors cloned, containers rebuilt, the rest shared: a fraction of deepcopy's cost, which
    # matters because a snapshot is taken after every meta-step.
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _clone(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_clone(v) for v in obj)
    return obj


def _check_kind(kind: Any) -> str | None:
    if kind is not None and (not isinstance(kind, str) or not kind):
        raise ValueError(f"kind must be a non-empty string or None, got {kind!r}")
    return kind


def meta_state(module: nn.Module, optimizer: torch.optim.Optimizer, *, kind: str | None = None,
               **extra: Any) -> dict:
    """A checkpointable dict of a learned optimizer, its meta-optimizer and ``extra`` entries.

    ``kind`` names the trainer (``"sl2o"``, ``"mlrsnet"``, ``"nes"``) so that
    :func:`load_meta_state` can refuse another trainer's checkpoint found in a run directory.
    """
    state = {"module": module.state_dict(), "optimizer": optimizer.state_dict(), **extra}
    if _check_kind(kind) is not None:
        state["kind"] = kind
    return state


def _found_kind(state: dict) -> str | None:
    # MLR-SNet nests its meta_state under "meta" in a larger checkpoint.
    nested = state.get("meta")
    return state.get("kind", nested.get("kind") if isinstance(nested, dict) else None)


def check_meta_kind(state: dict, kind: str | None) -> None:
    """``ValueError`` when the checkpoint ``state`` was recorded by another trainer than ``kind``
    (one without a kind, written before kinds were recorded, is accepted)."""
    found = _found_kind(state) if isinstance(state, dict) else None
    if _check_kind(kind) is not None and found is not None and found != kind:
        raise ValueError(
            f"the checkpoint was written by {found!r} meta-training, not {kind!r}: the run directory belongs to "
            "another trainer; use another run name, or pass resume=False to delete that run and start over"
        )


def load_meta_state(state: dict, module: nn.Module, optimizer: torch.optim.Optimizer | None = None, *,
                    kind: str | None = None) -> dict:
    """Load :func:`meta_state` output into ``module`` (and ``optimizer``); return the extras.

    With ``kind``, a checkpoint recorded with another kind raises ``ValueError`` before anything
    is loaded; one without a kind (written before kinds were recorded) is accepted.
    """
    check_meta_kind(state, kind)
    missing = {"module", "optimizer"} - set(state)
    if missing:
        raise ValueError(f"not a meta-training checkpoint: missing {sorted(missing)}")
    module.load_state_dict(state["module"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return {k: v for k, v in state.items() if k not in ("module", "optimizer", "kind")}


# --------------------------------------------------------------------------------------------
# Natural Evolution Strategies (Salimans et al., 2017), used by L3RS
# --------------------------------------------------------------------------------------------
#
# NES maximises a fitness F(phi) of a flat meta-parameter vector without gradients through the
# inner runs: each generation draws ``pairs`` Gaussian directions eps_i, evaluates the antithetic
# population phi +- sigma eps_i, replaces the fitnesses by centred ranks (invariant to any
# monotone transform of F, robust to outliers and to diverged runs) and steps along
#
#     g = 1 / (n sigma) * sum_i (s(phi + sigma eps_i) - s(phi - sigma eps_i)) eps_i,   n = 2 pairs
#
# with Adam or SGD. Step size and sigma decay smoothly by 0.5 every ``halve_every`` generations
# (the paper: every 500). The noise of generation ``t`` depends on ``(seed, t)`` only, so every
# process of a sharded run and a resumed run draw the same population.

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
    rank, world, local_n = _shard(2 * pairs, distributed)
    holder = _Vector(phi0)
    opt = (torch.optim.Adam(holder.parameters(), lr=lr) if optimizer == "adam"
           else torch.optim.SGD(holder.parameters(), lr=lr))
    guard = DivergenceGuard(holder, opt, explode=explode, patience=patience)
    keys = ("generation", "fitness_mean", "fitness_median", "fitness_max", "finite", "lr", "sigma", "accepted", "seconds")
    history: dict = {k: [] for k in keys}
    events: list = []
    start = 0
    if run is not None:
        latest = run.latest_checkpoint()
        if latest is not None:
            start, state = latest
            check_meta_kind(state, "nes")  # another trainer's checkpoint: say so before anything else
            check_not_past("generations", generations, start)
            extra = load_meta_state(state, holder, opt, kind="nes")
            history = {k: list(v) for k, v in extra["history"].items()}
            events = list(extra["events"])
            guard.reference = extra.get("reference")
            guard.commit()
            run.rewind(start)
    from .training import progress

    def checkpoint(done: int) -> None:
        if run is not None and rank == 0:
            run.save_checkpoint(meta_state(holder, opt, kind="nes", history=history, events=events,
                                           reference=guard.reference), done)

    for t in progress(range(start, generations), desc=desc, initial=start, total=generations):
        clock = time.perf_counter()
        decay = 0.5 ** (t / halve_every)
        lr_t, sigma_t = lr * decay, sigma * decay
        phi = holder.phi.detach()
        noise = antithetic_noise(pairs, phi.numel(), seed=seed, generation=t, device=phi.device, dtype=phi.dtype)
        members = nes_members(phi, noise, sigma_t)
        local = fitness_fn(members[rank * local_n:(rank + 1) * local_n], t)
        if not isinstance(local, Tensor) or local.shape != (local_n,):
            raise ValueError(f"fitness_fn must return a ({local_n},) tensor, got {getattr(local, 'shape', local)!r}")
        fitness = _gather(local.detach().double().to(phi.device), world)
        finite = fitness[torch.isfinite(fitness)]
        grad = nes_gradient(noise, fitness, sigma_t)
        holder.phi.grad = -grad  # torch optimizers minimise; NES ascends the fitness
        median_loss = -float(finite.median()) if finite.numel() else math.nan
        accepted = guard.check(t, median_loss)
        if accepted:
            for group in opt.param_groups:
                group["lr"] = lr_t
            accepted = guard.advance(t)
        if not accepted:
            events.append({"generation": t, "reason": guard.events[-1].reason, "value": guard.events[-1].value})
        record = {"generation": t,
                  "fitness_mean": float(finite.mean()) if finite.numel() else math.nan,
                  "fitness_median": -median_loss,
                  "fitness_max": float(finite.max()) if finite.numel() else math.nan,
                  "finite": finite.numel() / fitness.numel(), "lr": lr_t, "sigma": sigma_t,
                  "accepted": bool(accepted), "seconds": time.perf_counter() - clock}
        for k in keys:
            history[k].append(record[k])
        if on_generation is not None:
            on_generation(t, holder.phi.detach(), record)
        if (t + 1) % checkpoint_every == 0 and t + 1 < generations:
            checkpoint(t + 1)
    checkpoint(generations)
    return NESResult(holder.phi.detach().clone(), history, events, start)


__all__ += ["centered_ranks", "antithetic_noise", "nes_members", "nes_gradient", "nes_estimate", "NESResult",
            "nes_train"]
