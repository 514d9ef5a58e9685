"""Learning-rate schedules as functions of the 0-based step.

Each constructor validates its arguments and returns a plain callable ``step -> lr``. They follow
the closed forms of ``torch.optim.lr_scheduler`` (stepped once per optimizer step), which the
tests check value for value: MultiStepLR, ExponentialLR, CosineAnnealingLR and
CosineAnnealingWarmRestarts (SGDR, Loshchilov & Hutter 2017).
"""

from __future__ import annotations

import bisect
import math
from typing import Sequence

from ..config import check_choice, check_int, check_nonnegative, check_positive
from .base import Schedule

__all__ = ["constant", "multistep", "exponential", "cosine", "sgdr", "SCHEDULES", "get_schedule", "schedule_values"]


def constant(lr: float) -> Schedule:
    """``lr`` at every step."""
    check_positive("lr", lr)
    return lambda step: lr


def multistep(lr: float, milestones: Sequence[int], gamma: float = 0.1) -> Schedule:
    """``lr · gamma^k`` where ``k`` milestones are ``<= step`` (MultiStepLR)."""
    check_positive("lr", lr)
    check_positive("gamma", gamma)
    ms = sorted(milestones)
    for m in ms:
        check_int("milestones[i]", m)
    return lambda step: lr * gamma ** bisect.bisect_right(ms, step)


def exponential(lr: float, gamma: float) -> Schedule:
    """``lr · gamma^step`` (ExponentialLR)."""
    check_positive("lr", lr)
    check_positive("gamma", gamma)
    return lambda step: lr * gamma ** step


def cosine(lr: float, total_steps: int, min_lr: float = 0.0, warmup: int = 0) -> Schedule:
    """Linear warm-up over ``warmup`` steps, then a half cosine from ``lr`` to ``min_lr`` at
    ``total_steps`` (CosineAnnealingLR with ``T_max = total_steps - warmup``); flat afterwards."""
    check_positive("lr", lr)
    check_int("total_steps", total_steps)
    check_nonnegative("min_lr", min_lr)
    check_int("warmup", warmup, minimum=0)
    if warmup >= total_steps:
        raise ValueError(f"warmup={warmup} must be smaller than total_steps={total_steps}")
    span = total_steps - warmup

    def schedule(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = min(step - warmup, span)
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t / span)) / 2

    return schedule


def sgdr(lr: float, period: int, t_mult: int = 2, min_lr: float = 0.0) -> Schedule:
    """Cosine annealing with warm restarts: the first cycle lasts ``period`` steps, each next one
    ``t_mult`` times longer (CosineAnnealingWarmRestarts with ``T_0 = period``)."""
    check_positive("lr", lr)
    check_int("period", period)
    check_int("t_mult", t_mult)
    check_nonnegative("min_lr", min_lr)

    def schedule(step: int) -> float:
        if t_mult == 1:
            t_cur, t_i = step % period, period
        else:
            n = int(math.log(step / period * (t_mult - 1) + 1, t_mult))
            t_cur = step - period * (t_mult ** n - 1) // (t_mult - 1)
            t_i = period * t_mult ** n
        return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * t_cur / t_i)) / 2

    return schedule


SCHEDULES = {"constant": constant, "multistep": multistep, "exponential": exponential,
             "cosine": cosine, "sgdr": sgdr}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by name (``constant``, ``multistep``, ``exponential``, ``cosine``, ``sgdr``)."""
    check_choice("schedule", name, SCHEDULES)
    return SCHEDULES[name](**kwargs)


def schedule_values(schedule: Schedule, steps: int, *, name: str = "schedule") -> list[float]:
    """``[schedule(0), …, schedule(steps - 1)]`` as floats, checked before a run uses them.

    A value that is not a finite number ``>= 0`` (a NaN from a hand-written lambda, an overflow
    of ``exponential`` with ``gamma > 1`` over a long run) raises a ``ValueError`` naming
    ``name`` and the step, instead of training to a NaN loss.
    """
    check_int("steps", steps)
    if not callable(schedule):
        raise ValueError(f"{name} must be a callable step -> lr, got {schedule!r}")
    values = []
    for step in range(steps):
        try:
            value = float(schedule(step))
        except OverflowError:
            value = math.inf
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} returned {value!r} at step {step}; a learning-rate schedule must return "
                             "finite numbers >= 0")
        values.append(value)
    return values
