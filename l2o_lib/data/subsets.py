"""Class subsets of a dataset, for fine-tuning tasks: keep some classes, split classes into source and target."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..config import check_int, check_seed
from .containers import ArrayData, Dataset

__all__ = ["class_subset", "split_classes"]


def _check_classes(classes: Sequence[int], num_classes: int) -> list[int]:
    if isinstance(classes, torch.Tensor):
        classes = classes.tolist()
    try:
        classes = list(classes)
    except TypeError:
        raise ValueError(f"classes must be a sequence of integers, got {classes!r}") from None
    if not classes:
        raise ValueError("classes must not be empty")
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < num_classes:
            raise ValueError(f"classes must be integers in [0, {num_classes - 1}], got {c!r}")
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct, got {classes}")
    return classes


def class_subset(dataset: Dataset, classes: Sequence[int], *, relabel: bool = True) -> Dataset:
    """Keep only the examples of ``classes`` in both splits.

    With ``relabel`` the kept labels become ``0 .. k-1`` in the order ``classes`` is given
    (``num_classes`` becomes ``k``); otherwise labels and ``num_classes`` are unchanged.
    The original class ids are recorded in ``info["classes"]``.
    """
    classes = _check_classes(classes, dataset.num_classes)

    def pick(split: ArrayData) -> ArrayData:
        wanted = torch.tensor(classes, device=split.y.device)
        kept = split.subset(torch.isin(split.y, wanted))
        if relabel:
            lut = torch.full((dataset.num_classes,), -1, dtype=torch.long, device=split.y.device)
            lut[wanted] = torch.arange(len(classes), device=split.y.device)
            kept = ArrayData(kept.x, lut[kept.y])
        return kept

    info = dict(dataset.info)
    info["classes"] = classes  # in the label space of the dataset passed in
    if "label_names" in dataset.info and relabel:
        info["label_names"] = [dataset.info["label_names"][c] for c in classes]
    return Dataset(dataset.name, pick(dataset.train), pick(dataset.test), dataset.input_shape,
                   len(classes) if relabel else dataset.num_classes, info)


def split_classes(num_classes: int, n_source: int, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """A seeded random split of ``0 .. num_classes-1`` into source and target classes.

    For fine-tuning tasks: pretrain on the ``n_source`` source classes, fine-tune on the
    held-out rest.  Both lists are sorted.
    """
    check_int("num_classes", num_classes, minimum=2)
    check_int("n_source", n_source)
    if n_source >= num_classes:
        raise ValueError(f"n_source must be < num_classes={num_classes}, got {n_source}")
    check_seed("seed", seed)
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:n_source]), sorted(perm[n_source:])
