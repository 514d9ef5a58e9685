"""Fine-tuning tasks: a backbone pretrained on source classes (:func:`pretrain_backbone`, cached
under ``data/l3rs/``) is fine-tuned with a fresh head on ``k``-class subsets of held-out classes
(:class:`TaskFamily`, :class:`FinetuneTask`; meta-train and meta-test tasks draw from disjoint class
pools), by any transform in one run (:func:`finetune`). L3RS (:mod:`l2o_lib.l3rs`) is meta-trained
and compared on these tasks; nothing here depends on it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .config import check_choice, check_int, check_positive, check_seed
from .data import ArrayData, BatchSampler, Dataset, class_subset
from .finite import check_on_nonfinite
from .functional import FlatModel
from .models import build_model
from .optim import Transform, adam
from .results import atomic_torch_save
from .training import History, run_loop

__all__ = ["FinetuneTask", "finetune", "pretrain_backbone", "TaskFamily", "family_from_setup"]


# --------------------------------------------------------------------------- fine-tuning runs


@dataclass
class FinetuneTask:
    """One fine-tuning task: start ``theta0`` (pretrained backbone + fresh head), its data, a seed.

    Attributes:
        theta0: ``(D,)`` starting parameters; train / test: the task's splits; classes: the
        original class ids; seed: seeds the batch order.
    """

    theta0: Tensor
    train: ArrayData
    test: ArrayData
    classes: list
    seed: int


def _check_task(model: FlatModel, task: FinetuneTask) -> None:
    """Refuse a task whose data or start the model cannot take (shapes, dtypes, devices: no sync)."""
    if not isinstance(task, FinetuneTask):
        raise ValueError(f"task must be a FinetuneTask, got {type(task).__name__}")
    for name in ("train", "test"):
        split = getattr(task, name)
        model.check_data(split.x, split.y, name=f"task.{name}")
    model.check_theta(task.theta0, name="task.theta0")


def finetune(model: FlatModel, transform: Transform, task: FinetuneTask, *, steps: int, batch_size: int = 64,
             eval_every: int = 10, eval_on: str = "train", record: bool = False, desc: str | None = None,
             on_nonfinite: str = "raise", test_curve: bool = False) -> History:
    """One fine-tuning run of ``task`` with any transform (L3RS or a baseline), in eval mode.

    The loss is passed to transforms that take it (L3RS). Evaluated on the task's full
    training split (``eval_on="train"``: the optimisation speed) or test split every
    ``eval_every`` steps; ``history.extra`` gets the final test loss / accuracy and, with
    ``record``, the per-step ``lam`` ``(T, L)`` and ``mu`` ``(T, L, P)`` of an L3RS state.
    The batch order depends on ``task.seed`` only, so every method sees the same batches.
    ``on_nonfinite`` as in :func:`~l2o_lib.training.train_flat`: a run ending with NaN / inf
    weights raises, or with ``"record"`` is kept with ``extra["nonfinite_step"]``. ``test_curve``
    also evaluates the task's test split at the same steps (the paper's accuracy curve, Fig. 3):
    ``extra["test_curve_loss"]`` and ``extra["test_curve_accuracy"]``, aligned with ``eval_steps``.
    """
    check_int("steps", steps)
    check_choice("eval_on", eval_on, ("train", "test"))
    check_on_nonfinite(on_nonfinite)
    _check_task(model, task)
    sampler = BatchSampler(task.train, batch_size, seed=int(task.seed), drop_last=False)
    takes_loss = "loss" in inspect.signature(transform.update).parameters
    box = {"state": transform.init(task.theta0)}
    lams, mus = [], []

    def step_fn(theta, k, batch):
        loss, grad = model.loss_and_grad(theta, batch, train=False)
        if takes_loss:
            delta, box["state"] = transform.update(grad, box["state"], theta, k, loss=loss)
        else:
            delta, box["state"] = transform.update(grad, box["state"], theta, k)
        if record:
            lams.append(box["state"].lam)
            mus.append(box["state"].mu)
        return theta + delta, loss

    split = task.train if eval_on == "train" else task.test
    was = model.module.training
    model.module.eval()
    try:
        hist = run_loop(model, step_fn, sampler, steps=steps, theta=task.theta0.detach().clone(), buffers={},
                        eval_data=(split.x, split.y), eval_every=eval_every, desc=desc,
                        on_nonfinite=on_nonfinite, what="fine-tuning",
                        val_data=(task.test.x, task.test.y) if test_curve else None)
        final = model.evaluate(hist.theta, task.test.x, task.test.y)
    finally:
        model.module.train(was)
    hist.extra["test_loss"] = float(final["loss"])
    hist.extra["test_accuracy"] = float(final["accuracy"])
    if test_curve:  # run_loop's second split is the task's test split here, not a validation split
        hist.extra["test_curve_loss"], hist.extra["test_curve_accuracy"] = hist.val_loss, hist.val_accuracy
        hist.val_loss, hist.val_accuracy = np.zeros(0), np.zeros(0)
    if record:
        hist.extra["lam"] = torch.stack(lams).cpu().numpy()
        hist.extra["mu"] = torch.stack(mus).cpu().numpy()
    return hist


# --------------------------------------------------------------------------- tasks and backbones


def _last_linear_names(module: nn.Module) -> list[str]:
    """Parameter names of the last ``nn.Linear`` (the classification head)."""
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    if last is None:
        raise ValueError("the model has no nn.Linear head")
    return [f"{last}.{n}" for n, _ in module.get_submodule(last).named_parameters()]


def pretrain_backbone(model_name: str, data: Dataset, source_classes: Sequence[int], *, steps: int = 1000,
                      lr: float = 1e-3, batch_size: int = 128, seed: int = 0, cache_dir: str | os.PathLike = "data/l3rs",
                      model_kwargs: dict | None = None, desc: str | None = "pretrain") -> dict[str, Tensor]:
    """Pretrain ``model_name`` with Adam on ``source_classes`` of ``data``; return its state dict.

    Cached (atomic write) under ``cache_dir`` by a hash of every argument, so notebooks and
    reruns share one pretraining. A damaged cache file is retrained.
    """
    check_int("steps", steps)
    check_positive("lr", lr)
    check_int("batch_size", batch_size)
    check_seed("seed", seed)
    source = class_subset(data, list(source_classes))
    key = json.dumps({"model": model_name, "data": data.name, "n": len(data.train), "classes": source.info["classes"],
                      "steps": steps, "lr": lr, "batch": batch_size, "seed": seed, "kw": model_kwargs or {}},
                     sort_keys=True)
    path = Path(cache_dir) / f"{model_name}_{data.name}_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location=data.device, weights_only=True)
        except Exception:  # noqa: BLE001 - a torn or foreign file: pretrain again and overwrite it
            pass
    module = build_model(model_name, data.input_shape, source.num_classes, seed=seed, **(model_kwargs or {}))
    module = module.to(data.device)
    flat = FlatModel(module)
    sampler = BatchSampler(source.train, min(batch_size, len(source.train)), seed=seed)
    from .training import train_flat

    hist = train_flat(flat, adam(lr), sampler, steps=steps, eval_every=steps, desc=desc)
    flat.load(hist.theta)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    atomic_torch_save(path, state)
    return state


@dataclass
class TaskFamily:
    """Fine-tuning tasks on class subsets of a dataset, from one pretrained backbone.

    Args:
        data: the whole dataset (on the device).
        model_name, model_kwargs: the architecture (:func:`l2o_lib.models.build_model`).
        backbone: state dict pretrained on the source classes (its head is replaced).
        pools: ``{"train": classes, "test": classes}``: meta-train and meta-test class pools.
        k: classes per task (the head's width, fixed so every task has the same layout).
        n_train: training examples kept per task (a seeded random subset; ``None``: all).

    ``sample(split, seed)`` draws ``k`` classes from the pool in a seeded order, a training
    subset and a freshly initialised head; everything follows from ``(split, seed)``.
    """

    data: Dataset
    model_name: str
    backbone: dict
    pools: dict
    k: int
    n_train: int | None = None
    model_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("k", self.k, minimum=2)
        for split in ("train", "test"):
            if split not in self.pools:
                raise ValueError(f"pools must have 'train' and 'test' class lists, got {sorted(self.pools)}")
            if len(self.pools[split]) < self.k:
                raise ValueError(f"pools[{split!r}] has {len(self.pools[split])} classes, fewer than k={self.k}")
        if self.n_train is not None:
            check_int("n_train", self.n_train)
        module = build_model(self.model_name, self.data.input_shape, self.k, seed=0, **self.model_kwargs)
        self.head = _last_linear_names(module)
        # Pretrained buffers (BatchNorm statistics) live in the module: the flat parameters do not
        # carry them, and fine-tuning keeps them frozen (eval mode).
        module.load_state_dict({k: v for k, v in self.backbone.items()
                                if k not in self.head and k not in dict(module.named_parameters())}, strict=False)
        self.model = FlatModel(module.to(self.data.device))
        shapes = dict(module.named_parameters())
        for name in self.model.names:
            if name not in self.head and (name not in self.backbone or self.backbone[name].shape != shapes[name].shape):
                raise ValueError(f"backbone lacks a matching {name!r}; pretrain the same architecture")

    @property
    def layer_names(self) -> list[str]:
        """Names of the layers (parameter tensors) L3RS mixes over."""
        return list(self.model.names)

    def head_mask(self) -> Tensor:
        """``(D,)`` 1 on the head's entries, 0 on the backbone's (for head-only baselines)."""
        return torch.cat([torch.full((n,), float(name in self.head), device=self.data.device)
                          for name, n in zip(self.model.names, self.model.numels)])

    def sample(self, split: str, seed: int) -> FinetuneTask:
        """The task drawn by ``seed`` from the ``split`` pool (``"train"`` or ``"test"``)."""
        check_choice("split", split, ("train", "test"))
        check_seed("seed", seed)
        g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
        pool = list(self.pools[split])
        classes = [pool[i] for i in torch.randperm(len(pool), generator=g)[: self.k].tolist()]
        sub = class_subset(self.data, classes)
        train = sub.train
        if self.n_train is not None and self.n_train < len(train):
            train = train.subset(torch.randperm(len(train), generator=g)[: self.n_train].to(train.x.device))
        head = build_model(self.model_name, self.data.input_shape, self.k, seed=int(torch.randint(2**31, (1,), generator=g)),
                           **self.model_kwargs)
        fresh = dict(head.named_parameters())
        theta0 = torch.cat([(fresh[n].detach() if n in self.head else self.backbone[n]).reshape(-1).to(self.data.device)
                            for n in self.model.names])
        return FinetuneTask(theta0, train, sub.test, classes, seed)


def family_from_setup(setup: dict, *, device: str = "cpu", cache_dir: str | os.PathLike = "data/l3rs") -> TaskFamily:
    """The :class:`TaskFamily` an optimizer was meta-trained on, rebuilt from the ``setup`` that
    :class:`~l2o_lib.l3rs.Trained` stored (notebook 05 records the dataset, model, classes and pretraining);
    the backbone comes from the pretraining cache, or is pretrained again identically."""
    from .data import load_dataset

    needed = ("dataset", "model", "source", "pools", "k", "pretrain_steps", "pretrain_lr", "seed")
    missing = [k for k in needed if k not in setup]
    if missing:
        raise ValueError(f"setup lacks {missing}: it was saved by an older notebook 05; run notebook 05 again")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in setup.get("model_kwargs", {}).items()}
    data = load_dataset(setup["dataset"], device=device, seed=setup["seed"], download=True)
    backbone = pretrain_backbone(setup["model"], data, setup["source"], steps=setup["pretrain_steps"],
                                 lr=setup["pretrain_lr"], seed=setup["seed"], cache_dir=cache_dir, model_kwargs=kwargs)
    return TaskFamily(data, setup["model"], backbone, setup["pools"], k=setup["k"], n_train=setup.get("n_task"),
                      model_kwargs=kwargs)
