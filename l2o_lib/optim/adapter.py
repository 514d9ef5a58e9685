"""One adapter that turns any :class:`~l2o_lib.optim.base.Transform` into a ``torch.optim.Optimizer``.

Per parameter group the adapter concatenates parameters and gradients into flat vectors, runs
the pure ``update`` and adds the returned ``delta`` back into the parameters. The transform is
rebuilt from the group's hyper-parameters at every step (building one is a closure, not work),
so ``torch.optim.lr_scheduler`` and hand edits of ``group["lr"]`` act as usual. The flat state
lives in ``self.state`` under the group's first parameter, as a ``dict``, so ``state_dict()`` /
``load_state_dict()`` round-trip through the standard machinery.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .base import Transform

__all__ = ["FlatOptimizer"]


class FlatOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` over a pure flat-vector transform.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        transform: a registered name (``"adam"``, ``"momentum"``, …) or a factory
            ``(**hparams) -> Transform``.
        **hparams: the factory's keyword arguments; groups may override them.

    A parameter whose ``.grad`` is ``None`` contributes a zero gradient, so the flat layout and
    the optimizer state stay fixed across steps.
    """

    def __init__(self, params: Iterable, transform: str | Callable[..., Transform], **hparams: Any):
        from . import get_factory  # the registry imports this module

        self._factory = get_factory(transform) if isinstance(transform, str) else transform
        if not callable(self._factory):
            raise ValueError(f"transform must be an optimizer name or a factory, got {transform!r}")
        signature = inspect.signature(self._factory).parameters
        self._wants_segments = "segments" in signature
        defaults = {k: v.default for k, v in signature.items()
                    if v.default is not inspect.Parameter.empty and k != "segments"}
        unknown = set(hparams) - set(signature)
        if unknown:
            raise ValueError(f"unknown hyper-parameter(s) {sorted(unknown)}; allowed: {sorted(defaults)}")
        defaults.update(hparams)
        self._factory(**defaults)  # validate before any step
        self._hparam_names = tuple(defaults)  # torch may add keys of its own to self.defaults
        self._templates: dict[int, Any] = {}  # an initial state per group: the layout of its flat dict
        super().__init__(params, defaults)

    def _transform(self, group: dict, params: list[Tensor]) -> Transform:
        kwargs = {k: group[k] for k in self._hparam_names}
        if self._wants_segments:
            kwargs["segments"] = [p.numel() for p in params]
        return self._factory(**kwargs)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every group; ``closure`` re-evaluates the loss (and gradients) first."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            params = group["params"]
            if not params or all(p.grad is None for p in params):
                continue
            tx = self._transform(group, params)
            theta = torch.cat([p.reshape(-1) for p in params])
            grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in params])
            slot = self.state[params[0]]
            if not slot:
                template = tx.init(theta)
                self._templates[index] = template
                slot.update(step=0, flat=_to_dict(template))
            elif index not in self._templates:  # after load_state_dict
                self._templates[index] = tx.init(theta)
            state = _from_dict(self._templates[index], slot["flat"])
            delta, state = tx.update(grad, state, theta, slot["step"])
            slot["flat"] = _to_dict(state)
            slot["step"] += 1
            torch._foreach_add_(params, [d.view_as(p) for d, p in zip(delta.split([p.numel() for p in params]), params)])
        return loss


def _to_dict(state: Any) -> Any:
    """A (nested) NamedTuple state as nested dicts, which ``load_state_dict`` can cast and rebuild."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return {k: _to_dict(v) for k, v in state._asdict().items()}
    return state


def _from_dict(template: Any, d: Any) -> Any:
    """Inverse of :func:`_to_dict`, with the NamedTuple types taken from ``template``."""
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(**{k: _from_dict(getattr(template, k), d[k]) for k in template._fields})
    return d
