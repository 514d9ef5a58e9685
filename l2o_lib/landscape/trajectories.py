"""Trajectories for a landscape figure: every optimizer from the same start ``W0`` on the same
mini-batches, recorded as a ``(steps + 1, D)`` tensor (``W0``, then the parameters after each step).

Hand-designed and subspace optimizers run as pure transforms (:func:`record_flat`, through
:func:`~l2o_lib.training.train_flat`); MLR-SNet and L3RS drive an ordinary ``torch.optim`` optimizer
on the module (:func:`record_module`, through :func:`~l2o_lib.training.train_module`).
:func:`record_runs` records the named runs of :data:`OPTIMIZERS` from what
:func:`~l2o_lib.landscape.sources.learned_optimizers` returned."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..data import ArrayData
from ..functional import FlatModel
from ..l3rs import L3RS
from ..mlrsnet import MLRSNetScheduler, TrainedSchedule, initial_loss
from ..optim import momentum
from ..optim.base import Transform
from ..sl2o import sl2o
from ..subspace import dagger
from ..training import train_flat, train_module
from .checks import check_model, check_vector

__all__ = ["OPTIMIZERS", "PAPER_RUNS", "record_flat", "record_module", "mlrsnet_sgd", "l3rs_optimizer",
           "select_runs", "record_runs"]

#: Every run a landscape figure can draw, in the order they are recorded.
OPTIMIZERS = ("Momentum", "Momentum†", "SL2O", "MLR-SNet", "L3RS")
#: The runs of the SL2O paper's figure (the planes are fitted to these).
PAPER_RUNS = ("Momentum", "Momentum†", "SL2O")


def record_flat(model: FlatModel, transform: Transform, sampler, steps: int, theta0: Tensor, *,
                desc: str | None = None) -> Tensor:
    """``(steps + 1, D)``: ``theta0``, then the parameters after each of ``steps`` steps of
    ``train_flat(model, transform, sampler, theta=theta0)`` (row ``k`` is its θ after ``k`` steps)."""
    check_model(model)
    check_vector("theta0", theta0, model.dim)
    path = [theta0.detach().clone()]
    train_flat(model, transform, sampler, steps=steps, theta=theta0, desc=desc,
               on_step=lambda k, theta: path.append(theta.detach().clone()))
    return torch.stack(path)


def record_module(model: FlatModel, make_optimizer: Callable, sampler, steps: int, theta0: Tensor, *,
                  desc: str | None = None) -> Tensor:
    """``(steps + 1, D)`` like :func:`record_flat`, for the ordinary PyTorch loop on ``model.module``.

    ``make_optimizer(params) -> (optimizer, on_loss)`` builds the optimizer on the module's
    parameters, which start at ``theta0``; ``on_loss(loss)`` (or ``None``) gets each batch loss before the step
    (a scheduler's hook) and the optimizer's ``step`` gets a closure returning it. The module's
    weights and buffers are restored afterwards, even when the run fails.
    """
    check_model(model)
    check_vector("theta0", theta0, model.dim)
    net = model.module
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    model.load(theta0)
    path = [theta0.detach().clone()]
    try:
        optimizer, on_loss = make_optimizer(net.parameters())
        train_module(net, optimizer, sampler, steps=steps, loss_fn=model.loss_fn, desc=desc, on_loss=on_loss,
                     loss_closure=True, on_step=lambda k, module: path.append(model.flatten()))
    finally:
        net.load_state_dict(saved)   # the module keeps its initial weights for everything else
    return torch.stack(path)


def mlrsnet_sgd(schedule: TrainedSchedule, *, steps: int, num_classes: int, f0: Tensor | float) -> Callable:
    """A ``make_optimizer`` for :func:`record_module`: ``torch.optim.SGD`` with the momentum and
    weight decay MLR-SNet was meta-trained with (0.9 and 5e-4 unless its ``info`` says otherwise),
    its LR set by :class:`~l2o_lib.mlrsnet.MLRSNetScheduler` from each step's training loss over a
    run of the length it was meta-trained for (at least ``steps``); ``f0`` the initial loss."""
    info = schedule.info

    def make(params):
        inner_momentum, inner_decay = schedule.inner_sgd()
        opt = torch.optim.SGD(params, lr=0.0, momentum=inner_momentum, weight_decay=inner_decay)
        sched = MLRSNetScheduler(opt, schedule, total_steps=max(steps, info.get("steps", steps)),
                                 num_classes=num_classes, f0=f0)
        return opt, sched.step
    return make


def l3rs_optimizer(trained, *, steps: int, device=None) -> Callable:
    """A ``make_optimizer`` for :func:`record_module`: L3RS's ``torch.optim`` adapter told the run
    length ``steps`` (it reads the loss from the step's closure; no per-loss hook)."""
    return lambda params: (L3RS(params, trained.phi.to(device), trained.config, total_steps=steps), None)


def select_runs(runs: Sequence[str] | None, available: Iterable[str]) -> list[str]:
    """The runs to draw, in :data:`OPTIMIZERS` order: ``runs`` (``None``: all) among ``available``.

    Raises:
        ValueError: a name not in :data:`OPTIMIZERS`, or none of ``runs`` available.
    """
    available = set(available)
    wanted = OPTIMIZERS if runs is None else tuple(runs)
    unknown = [r for r in wanted if r not in OPTIMIZERS]
    if unknown:
        raise ValueError(f"runs {unknown} are not known; choose from {list(OPTIMIZERS)}")
    chosen = [r for r in OPTIMIZERS if r in wanted and r in available]
    if not chosen:
        raise ValueError(f"none of runs {list(wanted)} is available here (available: "
                         f"{[r for r in OPTIMIZERS if r in available]})")
    return chosen


def record_runs(model: FlatModel, learned, names: Sequence[str], make_sampler: Callable, steps: int,
                train: ArrayData, num_classes: int, *, device=None) -> tuple[dict[str, Tensor], str | None]:
    """Record the runs ``names`` (of :data:`OPTIMIZERS`) from the start ``learned.sl2o.space.origin``.

    ``learned`` is a :class:`~l2o_lib.landscape.sources.LearnedOptimizers`; ``make_sampler()`` gives a
    fresh sampler with the same batch order for every run. MLR-SNet's ``f0`` is the loss at the start
    on ``train`` (:func:`~l2o_lib.mlrsnet.initial_loss`). Returns ``(trajectories, l3rs_skip)``: an L3RS
    run that fails for its layout (``ValueError`` / ``TypeError``) is left out, with the reason.
    """
    space = learned.sl2o.space
    theta0 = space.origin.clone()
    skip = None
    out = {}
    for name in names:
        if name == "Momentum":
            out[name] = record_flat(model, momentum(lr=learned.lrs["Momentum"], momentum=0.9), make_sampler(), steps,
                                    theta0, desc=name)
        elif name == "Momentum†":
            out[name] = record_flat(model, dagger(momentum(lr=learned.lrs["Momentum†"], momentum=0.9), space),
                                    make_sampler(), steps, theta0, desc=name)
        elif name == "SL2O":
            out[name] = record_flat(model, sl2o(learned.sl2o.rule, space), make_sampler(), steps, theta0, desc=name)
        elif name == "MLR-SNet":
            make = mlrsnet_sgd(learned.schedule, steps=steps, num_classes=num_classes,
                               f0=initial_loss(model, theta0, train))
            out[name] = record_module(model, make, make_sampler(), steps, theta0, desc=name)
        elif name == "L3RS" and learned.l3rs is not None:
            try:
                out[name] = record_module(model, l3rs_optimizer(learned.l3rs, steps=steps, device=device),
                                          make_sampler(), steps, theta0, desc=name)
            except (ValueError, TypeError) as e:   # a layout or API the saved optimizer does not fit
                skip = f"the L3RS run failed ({type(e).__name__}: {e})"
    return out, skip
