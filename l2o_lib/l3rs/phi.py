"""The meta-parameters of L3RS: their architecture (:class:`L3RSConfig`), one flat vector ``phi``
laid out by :meth:`L3RSConfig.layout` (:func:`init_phi`, :func:`unpack_phi`), the names of the
policy's feature columns (:func:`feature_names`) and a meta-trained optimizer as saved
(:class:`Trained`)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..config import check_choice, check_int, check_positive, check_probability, check_seed

__all__ = ["BASES", "BASE_LABELS", "L3RSConfig", "features_dim", "init_phi", "unpack_phi", "feature_names", "Trained"]

BASES = ("sgd", "adam", "lion", "lamb", "adamax", "weight_decay")

#: How figures and tables name each base optimizer.
BASE_LABELS = {"sgd": "SGD", "adam": "Adam", "lion": "Lion", "lamb": "LAMB", "adamax": "Adamax",
               "weight_decay": "weight decay"}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class L3RSConfig:
    """Architecture of the learned optimizer; ``phi``'s layout follows from it.

    Args:
        n_layers: number of parameter tensors ``L`` of the model it optimizes.
        bases: base optimizers, names from :data:`BASES` (paper default ``("sgd", "adam")``).
        hidden: width of the MLP's two hidden layers.
        embed_dim: size of the learned per-layer embedding (paper: 16).
        ema_decays: the three EMA smoothing factors of the norm and loss features.
        n_rel: number of relative-time features; rel_sharpness: their slope ``s``.
        abs_scales: the ``x_j`` of the absolute-time features ``tanh(T / x_j)``.
        base_lr: per-entry RMS step at ``o_l = 0`` (see the module docstring).
        max_log_scale: bound ``B`` on ``|log(lambda_l / (base_lr sqrt(n_l)))|``.
        eps: Adam's epsilon.
    """

    n_layers: int
    bases: tuple = ("sgd", "adam")
    hidden: int = 32
    embed_dim: int = 16
    ema_decays: tuple = (0.5, 0.9, 0.99)
    n_rel: int = 5
    rel_sharpness: float = 10.0
    abs_scales: tuple = (10.0, 100.0, 1000.0, 10000.0)
    base_lr: float = 1e-3
    max_log_scale: float = 5.0
    eps: float = 1e-8

    def __post_init__(self) -> None:
        check_int("n_layers", self.n_layers)
        if not isinstance(self.bases, (tuple, list)) or not self.bases:
            raise ValueError(f"bases must be a non-empty tuple of names from {list(BASES)}, got {self.bases!r}")
        for b in self.bases:
            check_choice("bases", b, BASES)
        if len(set(self.bases)) != len(self.bases):
            raise ValueError(f"bases must be distinct, got {self.bases!r}")
        object.__setattr__(self, "bases", tuple(self.bases))
        check_int("hidden", self.hidden)
        check_int("embed_dim", self.embed_dim, minimum=0)
        if not isinstance(self.ema_decays, (tuple, list)) or not self.ema_decays:
            raise ValueError(f"ema_decays must be a non-empty tuple of decays in [0, 1), got {self.ema_decays!r}")
        for i, d in enumerate(self.ema_decays):
            check_probability(f"ema_decays[{i}]", d)
        object.__setattr__(self, "ema_decays", tuple(float(d) for d in self.ema_decays))
        check_int("n_rel", self.n_rel, minimum=0)
        check_positive("rel_sharpness", self.rel_sharpness)
        if not isinstance(self.abs_scales, (tuple, list)):
            raise ValueError(f"abs_scales must be a tuple of positive numbers, got {self.abs_scales!r}")
        for i, x in enumerate(self.abs_scales):
            check_positive(f"abs_scales[{i}]", x)
        object.__setattr__(self, "abs_scales", tuple(float(x) for x in self.abs_scales))
        check_positive("base_lr", self.base_lr)
        check_positive("max_log_scale", self.max_log_scale)
        check_positive("eps", self.eps)

    @property
    def n_bases(self) -> int:
        """``P``, the number of base optimizers."""
        return len(self.bases)

    @property
    def n_features(self) -> int:
        """Length of one layer's feature row."""
        return 3 * len(self.ema_decays) + self.n_rel + len(self.abs_scales) + self.embed_dim + self.n_bases

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every block of ``phi``, in order."""
        f, h, p = self.n_features, self.hidden, self.n_bases
        blocks = [("w1", (f, h)), ("b1", (h,)), ("w2", (h, h)), ("b2", (h,)), ("w3", (h, 1 + p)), ("b3", (1 + p,)),
                  ("embedding", (self.n_layers, self.embed_dim))]
        if "adam" in self.bases:
            blocks.append(("adam_beta_logits", (2,)))
        return blocks

    @property
    def dim(self) -> int:
        """Number of meta-parameters (entries of ``phi``)."""
        return sum(math.prod(s) for _, s in self.layout())

    def as_dict(self) -> dict:
        """JSON-friendly fields (for checkpoints and :meth:`Trained.state`)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def features_dim(config: L3RSConfig) -> int:
    """Alias of ``config.n_features`` (the MLP's input width)."""
    return config.n_features


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def init_phi(config: L3RSConfig, *, seed: int = 0, betas: Sequence[float] = (0.9, 0.999)) -> Tensor:
    """A starting ``phi``: He-initialised hidden layers, a small output layer with zero bias (an even
    mix of the bases at step ``base_lr``), ``N(0, 1)`` embeddings and Adam betas ``betas``."""
    if not isinstance(config, L3RSConfig):
        raise ValueError(f"config must be an L3RSConfig, got {type(config).__name__}")
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for name, shape in config.layout():
        if name in ("w1", "w2"):
            parts.append(torch.randn(shape, generator=g) * math.sqrt(2.0 / shape[0]))
        elif name == "w3":
            parts.append(torch.randn(shape, generator=g) * 0.01)
        elif name == "embedding":
            parts.append(torch.randn(shape, generator=g))
        elif name == "adam_beta_logits":
            for i, b in enumerate(betas):
                check_probability(f"betas[{i}]", b)
                if b <= 0:
                    raise ValueError(f"betas[{i}] must be > 0 (it is meta-learned through a sigmoid), got {b!r}")
            parts.append(torch.tensor([_logit(float(b)) for b in betas]))
        else:
            parts.append(torch.zeros(shape))
    return torch.cat([p.reshape(-1) for p in parts])


def unpack_phi(phi: Tensor, config: L3RSConfig) -> dict[str, Tensor]:
    """Views of ``phi`` by block name (``w1`` … ``embedding``, ``adam_beta_logits``)."""
    if not isinstance(phi, Tensor) or phi.dim() != 1 or phi.numel() != config.dim:
        shape = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ValueError(f"phi must be a flat tensor of {config.dim} entries for this config, got {shape}")
    layout = config.layout()
    pieces = torch.split(phi, [math.prod(s) for _, s in layout])
    return {name: piece.view(shape) for (name, shape), piece in zip(layout, pieces)}


def feature_names(config: L3RSConfig) -> list[str]:
    """Names of the columns of the ``(L, F)`` feature matrix the policy sees, in order."""
    decays = [f"{d:g}" for d in config.ema_decays]
    return ([f"log_w_ema{d}" for d in decays] + [f"log_g_ema{d}" for d in decays] + [f"loss_ema{d}" for d in decays]
            + [f"rel_time{i}" for i in range(config.n_rel)] + [f"abs_time{i}" for i in range(len(config.abs_scales))]
            + [f"embed{i}" for i in range(config.embed_dim)] + [f"log_norm_{b}" for b in config.bases])


# --------------------------------------------------------------------------- save / load


class Trained(NamedTuple):
    """A meta-trained L3RS optimizer: meta-parameters, configuration, layer names and the task setup
    it was meta-trained on (dataset, model, classes, steps: what later notebooks need to rebuild it,
    see :func:`family_from_setup`). Saved and loaded as kind ``"l3rs"`` by :mod:`~l2o_lib.artifacts`."""

    phi: Tensor
    config: L3RSConfig
    layer_names: Sequence[str] = ()
    setup: dict | None = None

    def state(self) -> dict:
        """A ``torch.save``-able dict of plain types (the file loads with ``weights_only=True``)."""
        if not isinstance(self.config, L3RSConfig):
            raise ValueError(f"config must be an L3RSConfig, got {type(self.config).__name__}")
        unpack_phi(self.phi, self.config)  # refuses a phi of the wrong size
        setup = json.loads(json.dumps(self.setup or {}))  # plain types only: tuples become lists
        return {"phi": self.phi.detach().cpu(), "config": self.config.as_dict(),
                "layer_names": list(self.layer_names), "setup": setup}

    @classmethod
    def from_state(cls, state: dict) -> "Trained":
        """Rebuild from :meth:`state` output."""
        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in state["config"].items()}
        return cls(state["phi"], L3RSConfig(**cfg), list(state["layer_names"]), dict(state.get("setup", {})))
