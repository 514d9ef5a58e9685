"""One adapter that turns any :class:`~l2o_lib.optim.base.Transform` into a ``torch.optim.Optimizer``.

Per parameter group the adapter concatenates parameters and gradients into flat vectors, runs
the pure ``update`` and adds the returned ``delta`` back into the parameters. The transform is
rebuilt from the group's hyper-parameters at every step (building one is a closure, not work),
so ``torch.optim.lr_scheduler`` and hand edits of ``group["lr"]`` act as usual. The flat state
lives in ``self.state`` under the group's first parameter, as a ``dict``, so ``state_dict()`` /
``load_state_dict()`` round-trip through the standard machinery.
"""

from __future__ import annotations

import collections
import functools
import inspect
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from .base import Transform
from .registry import get_factory

__all__ = ["FlatOptimizer"]


class FlatOptimizer(torch.optim.Optimizer):
    """``torch.optim.Optimizer`` over a pure flat-vector transform.

    Args:
        params: parameters or parameter groups, as for any torch optimizer.
        transform: a registered name (``"adam"``, ``"momentum"``, …) or a factory
            ``(**hparams) -> Transform``.
        **hparams: the factory's keyword arguments; groups may override them.

    A parameter whose ``.grad`` is ``None`` is left alone exactly as ``torch.optim`` leaves it: its
    value, its state and its step count do not change (no weight decay, no momentum), and steps are
    counted per parameter. The flat state keeps the group's layout; a rule whose state is not one
    entry per coordinate (a subspace rule, per-layer mixing) sees a zero gradient there instead,
    and those parameters are still not moved.
    """

    def __init__(self, params: Iterable, transform: str | Callable[..., Transform], **hparams: Any):
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

    def state_dict(self) -> dict:
        """``torch.optim``'s state dict without the groups' schedules (an ``lr`` that is a function of the
        step cannot be stored by ``torch.save``): the optimizer that loads it keeps its own."""
        state = super().state_dict()
        state["param_groups"] = [{k: v for k, v in g.items() if not callable(v)} for g in state["param_groups"]]
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """``torch.optim``'s, keeping each group's schedules (left out by :meth:`state_dict`)."""
        schedules = [{k: v for k, v in g.items() if callable(v)} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, own in zip(self.param_groups, schedules):
            for k, v in own.items():
                group.setdefault(k, v)

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
            active = [p.grad is not None for p in params]
            if any(active):
                self._step_group(index, group, params, active)
        return loss

    def _step_group(self, index: int, group: dict, params: list[Tensor], active: list[bool]) -> None:
        slot = self.state[params[0]]
        if not slot:  # first step: the layout of the flat dict is the transform's initial state
            self._templates[index] = self._transform(group, params).init(torch.cat([p.reshape(-1) for p in params]))
            slot.update(step=0, flat=_to_dict(self._templates[index]))
        elif index not in self._templates:
            # After load_state_dict the state carries its own layout (nested dicts of field names).
            # init(current params) is not asked for one: a rule may refuse to start where a resumed
            # run stands (lora_dagger starts only at the LoRA origin).
            self._templates[index] = _rebuild(slot["flat"])
        template = self._templates[index]
        # torch.optim counts steps per parameter: one that had no gradient for a while starts its
        # bias correction / momentum buffer where it is, not where the group is.
        counts = slot.setdefault("param_steps", [slot["step"]] * len(params))
        if all(active) and len(set(counts)) == 1:
            self._update(group, params, template, slot, list(range(len(params))), counts[0])
        elif _coordinatewise(template, sum(p.numel() for p in params)):
            for count in sorted({c for c, a in zip(counts, active) if a}):
                chosen = [i for i, (c, a) in enumerate(zip(counts, active)) if a and c == count]
                self._update(group, params, template, slot, chosen, count)
        else:
            # A rule that couples coordinates (a subspace, per-layer mixing) cannot run on a subset:
            # it sees a zero gradient there, and those parameters are still left as they are.
            self._update(group, params, template, slot, list(range(len(params))), slot["step"], active)
        for i, a in enumerate(active):
            counts[i] += int(a)
        slot["step"] += 1

    def _update(self, group: dict, params: list[Tensor], template: Any, slot: dict, chosen: list[int], step: int,
                active: list[bool] | None = None) -> None:
        """Run the transform on the parameters ``chosen`` (their state slices) at ``step``."""
        subset = [params[i] for i in chosen]
        tx = self._transform(group, subset)
        theta = torch.cat([p.reshape(-1) for p in subset])
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in subset])
        state = _from_dict(template, slot["flat"])
        if len(chosen) == len(params):
            delta, state = tx.update(grad, state, theta, step)
        else:
            index = _flat_index(params, chosen, theta.device)
            delta, sub = tx.update(grad, _map_tensors(lambda t: t[index], state), theta, step)
            state = _map_tensors(lambda t, s: t.index_copy(0, index, s), state, sub)
        slot["flat"] = _to_dict(state)
        deltas = delta.split([p.numel() for p in subset])
        if active is not None:
            subset, deltas = zip(*[(p, d) for p, d, a in zip(subset, deltas, active) if a])
        torch._foreach_add_(list(subset), [d.view_as(p) for d, p in zip(deltas, subset)])


def _flat_index(params: list[Tensor], chosen: list[int], device) -> Tensor:
    """Positions of the ``chosen`` parameters' entries in the group's flat vector."""
    starts = [0]
    for p in params:
        starts.append(starts[-1] + p.numel())
    return torch.cat([torch.arange(starts[i], starts[i + 1], device=device) for i in chosen])


def _tensor_leaves(state: Any) -> list[Any]:
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return [leaf for v in state for leaf in _tensor_leaves(v)]
    return [state]


def _coordinatewise(state: Any, dim: int) -> bool:
    """Whether every leaf of ``state`` is a flat tensor of one entry per coordinate (then a subset
    of the parameters can be updated on its own slice of the state)."""
    return all(isinstance(t, Tensor) and t.dim() == 1 and t.numel() == dim for t in _tensor_leaves(state))


def _map_tensors(fn: Callable[..., Tensor], state: Any, *others: Any) -> Any:
    """``fn`` leaf by leaf over nested NamedTuples of the same structure."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return type(state)(*[_map_tensors(fn, *leaves) for leaves in zip(state, *others)])
    return fn(state, *others)


def _to_dict(state: Any) -> Any:
    """A (nested) NamedTuple state as nested dicts, which ``load_state_dict`` can cast and rebuild."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return {k: _to_dict(v) for k, v in state._asdict().items()}
    return state


@functools.lru_cache(maxsize=None)
def _loaded_state_type(fields: tuple[str, ...]) -> type:
    """A NamedTuple type with ``fields``, standing in for a loaded state's original type."""
    return collections.namedtuple("LoadedState", fields)


def _rebuild(d: Any) -> Any:
    """A state from :func:`_to_dict`'s nested dicts alone: NamedTuples with the same fields, in order
    (:func:`_from_dict` then reads every later step through it)."""
    if isinstance(d, dict):
        return _loaded_state_type(tuple(d))(**{k: _rebuild(v) for k, v in d.items()})
    return d


def _from_dict(template: Any, d: Any) -> Any:
    """Inverse of :func:`_to_dict`, with the NamedTuple types taken from ``template``."""
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        return type(template)(**{k: _from_dict(getattr(template, k), d[k]) for k in template._fields})
    return d
