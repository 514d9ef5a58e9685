"""The two containers every dataset is: :class:`ArrayData` (one split as device tensors) and :class:`Dataset`.

A whole split is two tensors (``x``, ``y``) on the training device; there is no ``DataLoader``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..config import check_int

__all__ = ["ArrayData", "Dataset", "DeviceLike"]

DeviceLike = str | torch.device


@dataclass
class ArrayData:
    """One split of a dataset: inputs ``x`` (N, ...) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        # Shape metadata only: checking it never synchronises with the device.
        if self.x.shape[:1] != self.y.shape[:1]:
            raise ValueError(f"x and y must have the same length, got {tuple(self.x.shape)} and {tuple(self.y.shape)}")

    def __len__(self) -> int:
        """Number of examples."""
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        """The device the split lives on."""
        return self.x.device

    def to(self, device: DeviceLike) -> "ArrayData":
        """A copy on ``device`` (no copy when it is already there)."""
        return ArrayData(self.x.to(device), self.y.to(device))

    def subset(self, index: torch.Tensor | Sequence[int]) -> "ArrayData":
        """The examples selected by ``index`` (integer indices or a boolean mask)."""
        index = torch.as_tensor(index, device=self.x.device)
        return ArrayData(self.x[index], self.y[index])


@dataclass
class Dataset:
    """A classification dataset: a train and a test split plus their description.

    Attributes:
        name: registry name (``mnist1d``, ``cifar10``, ...).
        train: the training split.
        test: the test split.
        input_shape: shape of one input, e.g. ``(40,)`` or ``(3, 32, 32)``.
        num_classes: number of classes; labels lie in ``0 .. num_classes - 1``.
        info: free-form extras (label names, normalisation, the true weights of a synthetic
            problem, the classes kept by :func:`class_subset`, ...).
    """

    name: str
    train: ArrayData
    test: ArrayData
    input_shape: tuple
    num_classes: int
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(self.input_shape)
        check_int("num_classes", self.num_classes)

    @property
    def device(self) -> torch.device:
        """The device the training split lives on."""
        return self.train.x.device

    def to(self, device: DeviceLike) -> "Dataset":
        """A copy with both splits on ``device``."""
        return Dataset(self.name, self.train.to(device), self.test.to(device), self.input_shape,
                       self.num_classes, dict(self.info))
