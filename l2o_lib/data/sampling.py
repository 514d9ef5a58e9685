"""Seeded mini-batches drawn on the data's device (:class:`BatchSampler`) and on-device augmentation.

Batches are drawn by index sampling with a ``torch.Generator`` that lives on the same device as
the data, so a training loop never waits on the host: no worker processes, no per-step copies,
no ``.item()``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..config import check_int, check_seed
from .containers import ArrayData

__all__ = ["BatchSampler", "random_crop_flip"]


class BatchSampler:
    """Seeded mini-batches drawn on the data's device.

    Iterating yields ``(x, y)`` for one epoch: a device-side ``randperm`` (or the natural
    order without ``shuffle``) cut into ``batch_size`` slices.  :meth:`sample` draws one
    batch of independent uniform indices instead, for step-based loops.  Both read the same
    device generator, so a run is reproducible from ``seed`` alone and never syncs with the host.

    Args:
        data: the split to sample from.
        batch_size: examples per batch.
        seed: seed of the device generator.
        shuffle: shuffle each epoch.
        drop_last: drop the last incomplete batch of an epoch.
        augment: optional ``augment(x, generator) -> x`` applied to each batch on the
            device, e.g. :func:`random_crop_flip`.
    """

    def __init__(self, data: ArrayData, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None):
        check_int("batch_size", batch_size)
        check_seed("seed", seed)
        if not isinstance(data, ArrayData):
            raise ValueError(f"data must be an ArrayData, got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError("data must not be empty")
        if drop_last and batch_size > len(data):
            raise ValueError(f"batch_size={batch_size} exceeds the {len(data)} examples, so drop_last=True "
                             f"would yield no batch; lower batch_size or pass drop_last=False")
        if augment is not None and not callable(augment):
            raise ValueError(f"augment must be callable or None, got {augment!r}")
        self.data = data
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.augment = augment
        self.device = data.x.device
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @property
    def steps_per_epoch(self) -> int:
        """Batches yielded by one pass of iteration."""
        n, bs = len(self.data), self.batch_size
        return n // bs if self.drop_last else -(-n // bs)

    def __len__(self) -> int:
        """Same as :attr:`steps_per_epoch`."""
        return self.steps_per_epoch

    def _take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.x[index], self.data.y[index]
        if self.augment is not None:
            x = self.augment(x, self.generator)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of ``(x, y)`` batches."""
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        for step in range(self.steps_per_epoch):
            yield self._take(order[step * self.batch_size:(step + 1) * self.batch_size])

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of ``batch_size`` uniformly drawn indices (with replacement)."""
        index = torch.randint(len(self.data), (self.batch_size,), generator=self.generator, device=self.device)
        return self._take(index)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, *, padding: int = 4,
                     flip: bool = True) -> torch.Tensor:
    """Random crop and horizontal flip of a batch ``(N, C, H, W)``, vectorised on its device.

    Each image is zero-padded by ``padding`` pixels on every side and cropped back to
    ``H x W`` at its own random offset; with ``flip`` it is also mirrored left-right with
    probability 0.5.  One gather for the whole batch, no loop over samples; ``generator``
    (on ``x``'s device, or ``None`` for the global one) makes it reproducible.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (N, C, H, W), got {tuple(x.shape)}")
    check_int("padding", padding, minimum=0)
    n, c, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    ox = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator, device=dev)
    rows = oy + torch.arange(h, device=dev)  # (N, H) rows of each crop in the padded image
    cols = ox + torch.arange(w, device=dev)  # (N, W)
    if flip:
        mirror = torch.rand(n, 1, generator=generator, device=dev) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)  # reading columns backwards mirrors the crop
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
