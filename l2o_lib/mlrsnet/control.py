"""The control for a transferred MLR-SNet schedule (issue 18): a hand schedule made of its own LRs.

At meta-test the snapshots ``φ_{T/3}, φ_{2T/3}, φ_T`` drive the three thirds of a run
(:func:`~l2o_lib.mlrsnet.snapshot_index`). When the network barely reacts to the loss it feeds on,
each third is close to one constant LR, and the learned schedule is a piecewise-constant schedule in
disguise. The control asks what the network adds beyond that: :func:`piece_means` takes the mean LR
the schedule actually produced in each piece of each run, and :func:`control_config` replays those
constants as an ordinary schedule on the same optimizer (a :class:`~l2o_lib.mlrsnet.MethodConfig`
for :func:`~l2o_lib.mlrsnet.compare_schedules`, one run per seed, in the seeds' order).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from ..config import check_int, check_nonnegative, check_probability
from ..optim import momentum as momentum_transform
from ..population import Rule, schedule_table, transform_rule
from .compare import Comparison, MethodConfig, compare_schedules
from .schedule import TrainedSchedule, snapshot_index

__all__ = ["piece_means", "piecewise_schedule", "control_config", "compare_controls"]


def piece_means(lrs, pieces: int = 3) -> np.ndarray:
    """``(runs, pieces)`` mean LR of each run over each piece of its ``steps`` (the pieces of
    :func:`~l2o_lib.mlrsnet.snapshot_index`: step ``t`` of ``T`` is in piece ``t·k // T``).

    ``lrs``: ``(runs, steps)`` LRs (e.g. :meth:`Comparison.lrs <l2o_lib.mlrsnet.Comparison.lrs>`)."""
    arr = np.asarray(lrs, dtype=np.float64)
    check_int("pieces", pieces)
    if arr.ndim != 2 or arr.shape[1] < pieces:
        raise ValueError(f"lrs must be (runs, steps) with steps >= pieces={pieces}, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError("lrs must be finite and positive (a run that diverged has no constants to replay)")
    index = np.array([snapshot_index(t, arr.shape[1], pieces) for t in range(arr.shape[1])])
    return np.stack([arr[:, index == p].mean(axis=1) for p in range(pieces)], axis=1)


def piecewise_schedule(constants, steps: int) -> Callable[[int], float]:
    """``step -> constants[piece]`` over a run of ``steps`` steps, the pieces of :func:`piece_means`."""
    values = [float(c) for c in np.asarray(constants, dtype=np.float64).reshape(-1)]
    check_int("steps", steps)
    if not values or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"constants must be finite positive LRs, got {values}")
    return lambda step: values[snapshot_index(step, steps, len(values))]


def control_config(constants, *, momentum: float, weight_decay: float = 5e-4, method: str = "Control",
                   setting: str = "three constants") -> MethodConfig:
    """The piecewise-constant control as a :class:`~l2o_lib.mlrsnet.MethodConfig`: run ``i`` of the
    population (seed ``i`` of :func:`~l2o_lib.mlrsnet.compare_schedules`) follows ``constants[i]``
    (``(runs, pieces)``, from :func:`piece_means`) on SGD with ``momentum`` and ``weight_decay``,
    the inner optimizer of the schedule it copies."""
    table_values = np.asarray(constants, dtype=np.float64)
    if table_values.ndim != 2 or table_values.shape[0] < 1:
        raise ValueError(f"constants must be (runs, pieces), got shape {table_values.shape}")
    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)

    def make(n: int, steps: int, device) -> Rule:
        if n != len(table_values):
            raise ValueError(f"the control holds constants for {len(table_values)} runs, asked for {n}")
        table = schedule_table([piecewise_schedule(row, steps) for row in table_values], steps, device=device)
        tx = momentum_transform(lr=lambda t: table[t, :, None], momentum=momentum, weight_decay=weight_decay)
        return transform_rule(tx, table)

    return MethodConfig(method, setting, make)


def compare_controls(main: Comparison, schedules: Mapping[tuple[str, str], TrainedSchedule], model_name: str, data, *,
                     seeds: Sequence[int], steps: int, pieces: int = 3, momentum: float = 0.9,
                     weight_decay: float = 5e-4, **kwargs) -> Comparison:
    """The control of every learned schedule of ``main`` (a :func:`~l2o_lib.mlrsnet.compare_schedules`
    result holding each key of ``schedules``), trained as a second population on the same task.

    Each control replays, run by run, the :func:`piece_means` of the LRs its schedule produced in
    ``main`` on the schedule's own optimizer (its ``info`` momentum and weight decay, as
    :func:`~l2o_lib.mlrsnet.compare_schedules` uses them), keyed ``("Control: " + method, setting)``.
    ``kwargs`` go to :func:`~l2o_lib.mlrsnet.compare_schedules` and must repeat ``main``'s (``n_val``,
    ``batch_seed``, ``batch_size``; ``paired_batches=True`` there and here lets each control see its
    schedule's batches)."""
    if not schedules:
        raise ValueError("schedules must name at least one learned schedule of main")
    configs = []
    for (method, setting), schedule in schedules.items():
        inner_momentum, inner_decay = schedule.inner_sgd(momentum, weight_decay)
        configs.append(control_config(piece_means(main.lrs(method, setting), pieces), momentum=inner_momentum,
                                      weight_decay=inner_decay, method=f"Control: {method}", setting=setting))
    return compare_schedules(model_name, data, configs, seeds=seeds, steps=steps, momentum=momentum,
                             weight_decay=weight_decay, **kwargs)
