"""What a run trains: a :class:`Task` (a model, its start ``theta0``, the training split, a
validation split carved from the training data, the test split, the batch size), built from names by
:func:`make_task`; the :class:`TaskFamily` protocol (``sample(split, seed) -> task``) that families of
tasks such as :class:`~l2o_lib.finetuning.TaskFamily` follow; and :func:`split_validation`, the seeded
hold-out every tuner selects on (never on the test split).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from .config import check_int, check_seed
from .data import ArrayData, Dataset, load_dataset
from .functional import FlatModel
from .models import build_model

__all__ = ["Task", "TaskFamily", "make_task", "split_validation"]


def split_validation(data: ArrayData, n_val: int, *, seed: int = 0) -> tuple[ArrayData, ArrayData]:
    """A seeded split of ``data`` into ``(train, validation)`` with ``n_val`` validation examples
    (the MLR-SNet paper holds out 1,000 CIFAR training images)."""
    check_int("n_val", n_val)
    check_seed("seed", seed)
    if not isinstance(data, ArrayData):
        raise ValueError(f"data must be an ArrayData, got {type(data).__name__}")
    if n_val >= len(data):
        raise ValueError(f"n_val={n_val} must be smaller than the {len(data)} examples")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).to(data.device)
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


@dataclass
class Task:
    """One training problem: what :func:`l2o_lib.runs.run` trains and :func:`l2o_lib.tune.tune` tunes on.

    Attributes:
        model: the flat view of the network.
        train: the split the optimizer draws its mini-batches from.
        val: held-out examples *from the training data* (:func:`split_validation`), the only split
            a tuner may select on; ``None`` when the task has none (then it cannot be tuned).
        test: the reported split, or ``None``.
        theta0: the start (default: the module's current weights).
        batch_size: examples per mini-batch (at most ``len(train)``).
        augment: optional ``augment(x, generator) -> x`` applied to each training batch on the device.

    Shapes, dtypes and devices are checked at construction (no host synchronisation).
    """

    model: FlatModel
    train: ArrayData
    val: ArrayData | None = None
    test: ArrayData | None = None
    theta0: Tensor | None = None
    batch_size: int = 128
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, FlatModel):
            raise ValueError(f"model must be a FlatModel, got {type(self.model).__name__}")
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is None and name != "train":
                continue
            if not isinstance(split, ArrayData):
                raise ValueError(f"{name} must be an ArrayData{'' if name == 'train' else ' or None'}, "
                                 f"got {type(split).__name__}")
            if len(split) == 0:
                raise ValueError(f"{name} must hold at least one example")
            self.model.check_data(split.x, split.y, name=name)
        check_int("batch_size", self.batch_size)
        if self.batch_size > len(self.train):
            raise ValueError(f"batch_size={self.batch_size} exceeds the {len(self.train)} training examples")
        if self.augment is not None and not callable(self.augment):
            raise ValueError(f"augment must be callable or None, got {self.augment!r}")
        self.theta0 = self.model.flatten() if self.theta0 is None else self.theta0.detach()
        self.model.check_theta(self.theta0, name="theta0")

    def split(self, name: str) -> tuple[Tensor, Tensor] | None:
        """``(x, y)`` of the split ``name`` (``"train"``, ``"val"`` or ``"test"``), ``None`` when absent."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"name={name!r} is not allowed; choose one of ['test', 'train', 'val']")
        data = getattr(self, name)
        return None if data is None else (data.x, data.y)

    def without_test(self) -> "Task":
        """The same task with no test split: what a tuner runs, so the test split cannot take part."""
        return replace(self, test=None)


@runtime_checkable
class TaskFamily(Protocol):
    """A family of tasks: ``sample(split, seed)`` returns the task drawn by ``seed`` from ``split``
    (e.g. ``"train"`` / ``"test"`` pools of meta-training and meta-test tasks); everything about the
    task follows from ``(split, seed)``. :class:`l2o_lib.finetuning.TaskFamily` is one."""

    def sample(self, split: str, seed: int) -> Any: ...


def make_task(dataset: str | Dataset, model: str | FlatModel, *, n_val: int, seed: int = 0,
              batch_size: int = 128, device: str = "cpu", n_train: int | None = None,
              theta0: Tensor | None = None, model_kwargs: dict | None = None,
              augment: Callable[[Tensor, torch.Generator], Tensor] | None = None) -> Task:
    """A :class:`Task` from a dataset and a model, each a registry name or a built object.

    ``n_val`` training examples become the validation split (:func:`split_validation`, seeded by
    ``seed``); the rest is ``train``; the dataset's test split is ``test``. A name is loaded with
    :func:`~l2o_lib.data.load_dataset` (``device``, ``seed``, ``n_train``) or built with
    :func:`~l2o_lib.models.build_model` (``seed``, ``model_kwargs``) on the data's device.
    """
    check_int("n_val", n_val)
    check_seed("seed", seed)
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, device=device, seed=seed, n_train=n_train)
    elif not isinstance(dataset, Dataset):
        raise ValueError(f"dataset must be a dataset name or a Dataset, got {type(dataset).__name__}")
    if isinstance(model, str):
        module = build_model(model, dataset.input_shape, dataset.num_classes, seed=seed, **(model_kwargs or {}))
        model = FlatModel(module.to(dataset.device))
    elif not isinstance(model, FlatModel):
        raise ValueError(f"model must be a model name or a FlatModel, got {type(model).__name__}")
    train, val = split_validation(dataset.train, n_val, seed=seed)
    return Task(model, train, val, dataset.test, theta0=theta0, batch_size=batch_size, augment=augment)
