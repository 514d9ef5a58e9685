"""Profiles and input validation.

A *profile* picks the scale of every experiment: ``ci`` (seconds, CPU), ``quick`` (minutes,
CPU, offline data: what ``make demo`` runs) and ``paper`` (GPU, CIFAR, the papers' settings).
Notebooks read the knobs they need from :func:`get_profile` and let papermill override them.

The ``check_*`` helpers raise ``ValueError`` naming the parameter and what is allowed; every
public entry point calls them before it starts any work.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

__all__ = [
    "Profile",
    "PROFILES",
    "get_profile",
    "resolve_device",
    "check_choice",
    "check_positive",
    "check_nonnegative",
    "check_probability",
    "check_int",
    "check_seed",
    "check_seeds",
    "headless",
]


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a ``ValueError`` listing them."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {sorted(map(str, allowed))}")
    return value


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    """Require a finite number > 0."""
    if _check_number(name, value) <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    """Require a finite number >= 0."""
    if _check_number(name, value) < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def check_probability(name: str, value: Any, *, closed: bool = False) -> float:
    """Require 0 <= value < 1 (or <= 1 when ``closed``): betas, momenta, decay rates."""
    value = _check_number(name, value)
    if value < 0 or value > 1 or (value == 1 and not closed):
        bound = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must lie in {bound}, got {value!r}")
    return value


def check_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Require an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_seed(name: str, value: Any) -> int:
    """Require a seed: an integer >= 0 (``bool`` and ``0.5`` refused; generators would truncate or
    reject them deep inside the work)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (a seed), got {value!r}")
    return value


def check_seeds(name: str, values: Any) -> list[int]:
    """Require a non-empty sequence of seeds (see :func:`check_seed`); returns them as a list."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 0 (seeds), got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty sequence of integers >= 0 (seeds), got []")
    for i, v in enumerate(values):
        check_seed(f"{name}[{i}]", v)
    return values


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when available, else ``"cpu"``; other values are validated."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={device!r} is not allowed; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
    return device


def headless() -> bool:
    """True in papermill / CI runs: progress bars go quiet, widgets are not shown."""
    return os.environ.get("L2O_HEADLESS", "") not in ("", "0") or os.environ.get("CI", "") == "true"


@dataclass(frozen=True)
class Profile:
    """The scale of an experiment. Notebooks take what they need and may override any field.

    Attributes:
        name: ``ci``, ``quick`` or ``paper``.
        device: where tensors live (``auto`` picks CUDA when present).
        dataset: the default dataset for the profile.
        model: the default architecture.
        train_steps: inner training steps of one run (baselines, meta-test).
        batch_size: mini-batch size.
        eval_every: steps between evaluations on the test split.
        seeds: number of seeds for mean ± std tables.
        n_train: training examples kept (``None``: the whole split).
        extras: free-form knobs of individual notebooks.
    """

    name: str
    device: str = "cpu"
    dataset: str = "mnist1d"
    model: str = "mlp"
    train_steps: int = 200
    batch_size: int = 128
    eval_every: int = 50
    seeds: int = 2
    n_train: int | None = None
    extras: dict = field(default_factory=dict)

    def with_(self, **changes: Any) -> "Profile":
        """A copy with some fields changed (validated like the original)."""
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown profile field(s) {sorted(unknown)}; allowed: {sorted(self.__dataclass_fields__)}")
        return replace(self, **changes)

    def __post_init__(self) -> None:
        check_choice("profile", self.name, ("ci", "quick", "paper"))
        check_int("train_steps", self.train_steps)
        check_int("batch_size", self.batch_size)
        check_int("eval_every", self.eval_every)
        check_int("seeds", self.seeds)
        if self.n_train is not None:
            check_int("n_train", self.n_train)


PROFILES: dict[str, Profile] = {
    "ci": Profile("ci", device="cpu", dataset="mnist1d", model="mlp", train_steps=150, batch_size=128,
                  eval_every=25, seeds=2, n_train=2000),
    "quick": Profile("quick", device="cpu", dataset="mnist1d", model="mlp", train_steps=1500,
                     batch_size=128, eval_every=100, seeds=3),
    "paper": Profile("paper", device="auto", dataset="cifar10", model="resnet20", train_steps=60000,
                     batch_size=128, eval_every=390, seeds=5),
}


def get_profile(name: str, **overrides: Any) -> Profile:
    """The named profile, with ``overrides`` applied; unknown names raise ``ValueError``."""
    check_choice("profile", name, PROFILES)
    return PROFILES[name].with_(**overrides) if overrides else PROFILES[name]
