"""Input corruptions for transfer tasks: CIFAR-C-style noise, blur and contrast applied to a
:class:`~l2o_lib.data.Dataset` on the fly (:func:`corrupt`; notebook 04's noisy MNIST-1D)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import check_choice, check_positive, check_seed
from .data import ArrayData, Dataset

__all__ = ["corrupt"]


def corrupt(data: Dataset, kind: str, severity: float, *, seed: int = 0, splits: Sequence[str] = ("train", "test")) -> Dataset:
    """A copy of ``data`` with CIFAR-C-style corruptions generated on the fly (fixed per ``seed``).

    * ``noise``: ``x + severity·σ·ε`` with ``σ`` the training inputs' standard deviation;
    * ``blur``: a box blur over the spatial dimensions, ``severity`` the (odd, >= 3) width;
    * ``contrast``: ``mean + severity·(x − mean)`` per example (``severity < 1`` lowers it).

    Inputs ``(N, L)`` are signals (MNIST-1D), ``(N, C, H, W)`` images; ``splits`` picks which
    splits are corrupted (the paper trains on corrupted data and tests on clean data).
    """
    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    check_choice("kind", kind, ("noise", "blur", "contrast"))
    check_positive("severity", severity)
    check_seed("seed", seed)
    for s in splits:
        check_choice("splits", s, ("train", "test"))
    if kind == "blur":
        width = int(severity)
        if width != severity or width < 3 or width % 2 == 0:
            raise ValueError(f"severity for blur is the box width, an odd integer >= 3; got {severity!r}")
    sigma = data.train.x.std()
    g = torch.Generator().manual_seed(seed)

    def apply(x: Tensor) -> Tensor:
        if kind == "noise":
            return x + severity * sigma * torch.randn(x.shape, generator=g).to(x)
        if kind == "contrast":
            dims = tuple(range(1, x.dim()))
            mean = x.mean(dims, keepdim=True)
            return mean + severity * (x - mean)
        w = int(severity)
        if x.dim() == 2:
            return F.avg_pool1d(x.unsqueeze(1), w, 1, w // 2, count_include_pad=False).squeeze(1)
        if x.dim() == 4:
            return F.avg_pool2d(x, w, 1, w // 2, count_include_pad=False)
        raise ValueError(f"blur needs inputs of shape (N, L) or (N, C, H, W), got {tuple(x.shape)}")

    train = ArrayData(apply(data.train.x), data.train.y) if "train" in splits else data.train
    test = ArrayData(apply(data.test.x), data.test.y) if "test" in splits else data.test
    info = {**data.info, "corruption": {"kind": kind, "severity": severity, "splits": list(splits)}}
    return Dataset(f"{data.name}-{kind}", train, test, data.input_shape, data.num_classes, info)
