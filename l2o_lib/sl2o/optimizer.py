"""The learned optimizer, ready to use: :func:`sl2o` (a pure transform), :class:`SL2O` (a
``torch.optim`` optimizer over an ordinary model) and :class:`Trained` (a meta-trained rule and its
subspace, as saved and loaded by :mod:`~l2o_lib.artifacts`)."""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ..lora import LoRASpace, lora_dagger
from ..optim.adapter import FlatOptimizer
from ..optim.base import Transform
from ..rnnprop import LSTMRule, Rule, rnnprop
from ..subspace import Subspace, dagger


def sl2o(rule: Rule, subspace: Subspace | LoRASpace | None = None, **kwargs) -> Transform:
    """SL2O: :func:`~l2o_lib.rnnprop.rnnprop` (``kwargs`` are its options) on the coordinates of ``subspace`` (a DLDR /
    random :class:`~l2o_lib.subspace.Subspace` or LoRA coordinates); plain L2O when ``None``."""
    inner = rnnprop(rule, **kwargs)
    if subspace is None:
        return inner
    return lora_dagger(inner, subspace) if isinstance(subspace, LoRASpace) else dagger(inner, subspace)


class SL2O(FlatOptimizer):
    """The learned optimizer as a ``torch.optim.Optimizer`` over an ordinary model.

    Args:
        params: the model's parameters, in the order the subspace was built on (a single group).
        rule: the trained :class:`LSTMRule`.
        subspace: the subspace the rule acts in; ``None`` = every parameter (plain L2O).
        betas, eps, fused: as in :func:`~l2o_lib.rnnprop.rnnprop`.
    """

    def __init__(self, params, rule: Rule, subspace: Subspace | None = None, *,
                 betas: Sequence[float] = (0.9, 0.99), eps: float = 1e-8, fused: bool = False):
        def factory(betas: tuple = tuple(betas), eps: float = eps) -> Transform:
            return sl2o(rule, subspace, betas=betas, eps=eps, fused=fused)

        super().__init__(params, factory)
        if len(self.param_groups) != 1:
            raise ValueError("SL2O acts on one flat vector: pass a single parameter group")
        n = sum(p.numel() for p in self.param_groups[0]["params"])
        want = n if subspace is None else subspace.ambient_dim
        if n != want:
            raise ValueError(f"params have {n} entries but the subspace lives in {want} dimensions")


class Trained(NamedTuple):
    """A meta-trained SL2O optimizer and the subspace it was trained in (``None``: plain L2O).

    Saved and loaded as kind ``"sl2o"`` by :mod:`~l2o_lib.artifacts`."""

    rule: LSTMRule
    space: Subspace | None = None

    def state(self) -> dict:
        """A ``torch.save``-able dict: the rule's configuration and weights, and the subspace."""
        if not isinstance(self.rule, LSTMRule):
            raise ValueError(f"rule must be an LSTMRule, got {type(self.rule).__name__}")
        rule, space = self.rule, self.space
        config = {"hidden": rule.hidden, "layers": rule.layers, "scale": rule.scale, "input_size": rule.input_size}
        state = {"config": config, "weights": rule.state_dict()}
        if space is not None:
            state["space"] = {"origin": space.origin, "basis": space.basis,
                              "explained_variance_ratio": space.explained_variance_ratio,
                              "singular_values": space.singular_values}
        return state

    @classmethod
    def from_state(cls, state: dict) -> "Trained":
        """Rebuild from :meth:`state` output."""
        rule = LSTMRule(**state["config"])
        rule.load_state_dict(state["weights"])
        return cls(rule, Subspace(**state["space"]) if "space" in state else None)
