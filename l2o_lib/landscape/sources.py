"""The learned optimizers a landscape figure draws: the ones notebooks 03-05 saved, or small ones
trained on the spot when none was saved for this model (so the landscape notebook runs on its own).

:func:`learned_optimizers` returns them with a line per optimizer saying where it came from, and
the learning rates of the hand-designed runs (notebook 03's tuned ones when its SL2O is used)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import load_trained
from ..data import ArrayData, BatchSampler
from ..functional import FlatModel
from ..mlrsnet import TrainedSchedule, split_validation
from ..mlrsnet import meta_train as meta_train_mlrsnet
from ..optim import momentum
from ..results import find_artifact
from ..sl2o import LSTMRule, Problem, Trained, meta_train
from ..subspace import dldr, sample_trajectory

__all__ = ["Fallback", "LearnedOptimizers", "train_small_sl2o", "train_small_mlrsnet", "learned_optimizers"]


@dataclass(frozen=True)
class Fallback:
    """Sizes of the small optimizers trained when none was saved.

    Attributes:
        epochs: epochs of the SGD run whose checkpoints give SL2O's DLDR subspace (d <= 40).
        tasks, task_steps: SL2O meta-training tasks and inner steps per task.
        mlrsnet_steps: steps of MLR-SNet's online meta-training run.
        batch: mini-batch size of all three.
    """

    epochs: int
    tasks: int
    task_steps: int
    mlrsnet_steps: int
    batch: int = 128


@dataclass
class LearnedOptimizers:
    """What :func:`learned_optimizers` found or trained.

    Attributes:
        sl2o: SL2O's rule and DLDR subspace (its origin is the start ``W0`` of every run).
        schedule: MLR-SNet's trained schedule.
        l3rs: notebook 05's L3RS optimizer, or ``None`` (``l3rs_skip`` says why).
        sources: optimizer name -> where it came from (a notebook's run folder, or "trained here").
        lrs: learning rates of ``"Momentum"`` and ``"Momentum†"``.
        l3rs_skip: why L3RS is left out, or ``None``.
    """

    sl2o: Trained
    schedule: TrainedSchedule
    l3rs: Any
    sources: dict[str, str] = field(default_factory=dict)
    lrs: dict[str, float] = field(default_factory=dict)
    l3rs_skip: str | None = None

    @property
    def available(self) -> list[str]:
        """The runs these optimizers can draw: Momentum, Momentum†, SL2O, MLR-SNet and L3RS when present."""
        return ["Momentum", "Momentum†", "SL2O", "MLR-SNet"] + (["L3RS"] if self.l3rs is not None else [])


def train_small_sl2o(model: FlatModel, train: ArrayData, fallback: Fallback, *, seed: int = 0, device=None) -> Trained:
    """Notebook 03's recipe at a small scale: DLDR on a momentum-SGD run's checkpoints (two an
    epoch, from the model's current weights), then truncated-BPTT meta-training of an LSTM rule
    (scale 0.5, unroll 10) on a fit split, validated on a held-out one."""
    spe = max(1, len(train) // fallback.batch)
    _, traj = sample_trajectory(model, momentum(lr=0.1, momentum=0.9), BatchSampler(train, fallback.batch, seed=seed),
                                steps=fallback.epochs * spe, every=max(1, spe // 2), desc="DLDR sampling")
    space = dldr(traj.checkpoints, min(40, len(traj) - 1), origin=model.flatten())
    fit, val = split_validation(train, min(500, len(train) // 5), seed=seed)
    problem = Problem(model, (fit.x, fit.y), fallback.batch, space, val=(val.x, val.y))
    rule = LSTMRule(scale=0.5, seed=seed).to(device)
    meta_train(rule, problem, epochs=fallback.tasks, steps_per_task=fallback.task_steps, unroll=10, seed=seed)
    return Trained(rule, space)


def train_small_mlrsnet(model: FlatModel, train: ArrayData, theta0, num_classes: int, fallback: Fallback, *,
                        seed: int = 0) -> TrainedSchedule:
    """MLR-SNet meta-trained online from ``theta0`` for ``fallback.mlrsnet_steps`` steps (T_val = 10)
    on a fit split of ``train``, validated on a held-out one."""
    fit, val = split_validation(train, min(500, len(train) // 5), seed=seed)
    return meta_train_mlrsnet(model, fit, val, steps=fallback.mlrsnet_steps, num_classes=num_classes, t_val=10,
                              batch_size=fallback.batch, theta=theta0, seed=seed).schedule


def _saved_sl2o(model: FlatModel, profile: str, root, device) -> Trained | None:
    trained = load_trained("sl2o", profile, root=root)
    if trained is None or trained.space is None or trained.space.ambient_dim != model.dim:
        return None
    return Trained(trained.rule.to(device), trained.space.to(device=device))


def _saved_l3rs(model: FlatModel, model_name: str, profile: str, root) -> tuple[Any, str | None]:
    """Notebook 05's optimizer when one is saved for this model's layer layout, else why not."""
    try:
        trained = load_trained("l3rs", profile, root=root)
    except (ImportError, AttributeError) as e:   # a file from another version of the module
        return None, f"`l2o_lib.l3rs` is not usable here ({type(e).__name__}: {e})"
    if trained is None:
        return None, f"no L3RS optimizer saved under `{root}/{profile}` (run notebook 05 first)"
    if trained.config.n_layers != len(model.numels):
        return None, (f"the saved L3RS optimizer was meta-trained for a model with {trained.config.n_layers} "
                      f"parameter tensors; this {model_name} has {len(model.numels)}")
    return trained, None


def learned_optimizers(model: FlatModel, train: ArrayData, num_classes: int, *, profile: str,
                       root: str | os.PathLike = "runs", fallback: Fallback, lrs: dict[str, float],
                       model_name: str = "model", seed: int = 0, device=None) -> LearnedOptimizers:
    """SL2O, MLR-SNet and L3RS for a landscape figure, loaded from ``root/profile`` or trained here.

    SL2O (notebook 03) is used when its subspace lives in this model's parameter space, else
    :func:`train_small_sl2o`; MLR-SNet (notebook 04) when saved, else :func:`train_small_mlrsnet`
    from SL2O's origin; L3RS (notebook 05) only when saved for this model's number of parameter
    tensors. ``lrs`` (Momentum's and Momentum†'s) are replaced by notebook 03's tuned ones when its
    SL2O is the one used. The order of the training calls is fixed, so a seed gives the same
    optimizers every time.
    """
    sources = {}
    trained = _saved_sl2o(model, profile, root, device)
    saved_sl2o = trained is not None   # notebook 03's tuned LRs belong to its SL2O only
    if saved_sl2o:
        sources["SL2O"] = f"notebook 03 ({root}/{profile}/03_sl2o)"
    else:
        sources["SL2O"] = "trained here (none saved for this model)"
        trained = train_small_sl2o(model, train, fallback, seed=seed, device=device)
    schedule = load_trained("mlrsnet", profile, root=root)
    if schedule is not None:
        sources["MLR-SNet"] = f"notebook 04 ({root}/{profile}/04_mlrsnet)"
    else:
        sources["MLR-SNet"] = "trained here (none saved)"
        schedule = train_small_mlrsnet(model, train, trained.space.origin.clone(), num_classes, fallback, seed=seed)
    l3rs, skip = _saved_l3rs(model, model_name, profile, root)
    if l3rs is not None:
        sources["L3RS"] = f"notebook 05 ({root}/{profile}/05_l3rs)"
    lrs = dict(lrs)
    tuned_file = find_artifact(profile, "03_sl2o", "results/tuned_lrs.json", root=root)
    if tuned_file is not None and saved_sl2o:
        lrs.update({k: v for k, v in json.loads(tuned_file.read_text()).items() if k in lrs})
    return LearnedOptimizers(trained, schedule, l3rs, sources, lrs, skip)
