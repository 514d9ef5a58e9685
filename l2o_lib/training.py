"""Training loops over the flat-parameter core and over ordinary modules.

:func:`train_flat` drives a pure transform on a :class:`~l2o_lib.functional.FlatModel`;
:func:`train_module` drives any ``torch.optim.Optimizer`` on an ``nn.Module``. Both draw batches
from a device-side sampler, record the training loss of every step into a device tensor (no
host synchronisation inside the loop) and evaluate on held-out data every ``eval_every`` steps.
They return a :class:`History`, converted to host numbers once, at the end, where the run's
weights are also checked: a run ends with finite weights or raises
:class:`~l2o_lib.finite.NonFiniteError` naming the step where its loss first went non-finite
(``on_nonfinite="record"`` stores that step in ``History.extra["nonfinite_step"]`` instead, for
grid searches).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .config import check_int, headless
from .finite import LR_HINT, NonFiniteError, all_finite, check_finite_data, check_on_nonfinite, divergence_step
from .functional import Batch, FlatModel
from .optim.base import Transform

__all__ = ["History", "check_loop_data", "run_loop", "train_flat", "train_module", "progress", "mean_curve",
           "mean_train_loss", "evaluate_splits", "stack_evals", "EVAL_KEYS"]


class Sampler(Protocol):
    def sample(self) -> tuple[Tensor, Tensor]: ...


@dataclass
class History:
    """What a training run produced.

    Attributes:
        train_loss: loss of every step's mini-batch, shape ``(steps,)``.
        eval_steps: steps after which the model was evaluated (0 = before training).
        test_loss, test_accuracy: evaluation results at ``eval_steps``.
        seconds: wall time of the loop (evaluation included).
        theta: final flat parameters (``train_flat``) or ``None``.
        extra: trainer-specific records; ``nonfinite_step`` (the 0-based step where the loss
            first went NaN / inf) is present only when that happened.
        val_loss, val_accuracy: the validation split's results at ``eval_steps`` (empty when the
            run had no ``val_data``); tuners select on these, never on the test results.
    """

    train_loss: np.ndarray
    eval_steps: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    seconds: float
    theta: Tensor | None = None
    extra: dict = field(default_factory=dict)
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    val_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def final_accuracy(self) -> float:
        return float(self.test_accuracy[-1]) if len(self.test_accuracy) else float("nan")

    def as_dict(self) -> dict:
        """JSON-friendly summary (arrays as lists, no tensors)."""
        val = {"val_loss": self.val_loss.tolist(), "val_accuracy": self.val_accuracy.tolist()} if len(self.val_loss) else {}
        return {"train_loss": self.train_loss.tolist(), "eval_steps": self.eval_steps.tolist(),
                "test_loss": self.test_loss.tolist(), "test_accuracy": self.test_accuracy.tolist(),
                **val, "seconds": self.seconds, **self.extra}


def progress(iterable, *, total: int | None = None, desc: str | None = None, **kwargs):
    """A tqdm progress bar that stays silent in headless (papermill / CI) runs."""
    return tqdm(iterable, total=total, desc=desc, disable=headless(), leave=False, **kwargs)


EVAL_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")  # an evaluation: the test split's, then validation's


def evaluate_splits(evaluate: Callable[[Tensor, Tensor], dict], eval_data: tuple[Tensor, Tensor] | None,
                    val_data: tuple[Tensor, Tensor] | None) -> dict[str, Tensor]:
    """One evaluation of every split a loop watches, keyed by :data:`EVAL_KEYS`: ``evaluate(x, y)``
    on ``eval_data`` (``loss``, ``accuracy``) and on ``val_data`` (``val_loss``, ``val_accuracy``)."""
    row = {} if eval_data is None else dict(evaluate(*eval_data))
    if val_data is not None:
        row.update({f"val_{k}": v for k, v in evaluate(*val_data).items()})
    return row


def stack_evals(evals: list[tuple[int, dict]], rows: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(eval_steps, {key: values})`` of a loop's evaluations in one host copy; each value has shape
    ``(E,)``, or ``(rows, E)`` for a population (``rows`` runs); a key never evaluated is empty."""
    steps = np.array([s for s, _ in evals], dtype=np.int64)
    keys = [k for k in EVAL_KEYS if evals and k in evals[0][1]]
    shape = (0,) if rows is None else (rows, 0)
    out = {k: np.zeros(shape) for k in EVAL_KEYS}
    if keys:
        stacked = torch.stack([torch.stack([e[k] for k in keys]) for _, e in evals], -1).cpu().numpy()
        out.update(zip(keys, stacked))
    return steps, out


def _finish(losses: Tensor, evals: list[tuple[int, dict]], start: float, theta=None,
            extra: dict | None = None) -> History:
    """The run's :class:`History`; the single host synchronisation of the run. The clock started at
    ``start`` stops after the copies to the host, so on a GPU it includes the queued steps."""
    train_loss = losses.cpu().numpy()
    steps, values = stack_evals(evals)
    seconds = time.perf_counter() - start
    return History(train_loss, steps, values["loss"], values["accuracy"], seconds, theta, extra=extra or {},
                   val_loss=values["val_loss"], val_accuracy=values["val_accuracy"])


def _settle(history: History, weights_finite: bool, on_nonfinite: str, *, what: str = "training",
            hint: str = LR_HINT) -> History:
    """The end-of-run rule of every loop: a run whose loss went non-finite gets
    ``extra["nonfinite_step"]``; one whose weights ended non-finite raises
    :class:`NonFiniteError` (``on_nonfinite="raise"``) naming that step and ``hint``."""
    step = divergence_step(history.train_loss, weights_finite)
    if step is None:
        return history
    history.extra["nonfinite_step"] = step
    if weights_finite or on_nonfinite == "record":
        return history
    total = len(history.train_loss)
    if np.isfinite(history.train_loss[step]):
        when = f"every loss was finite but the last update (step {step} of {total}) made the weights non-finite"
    else:
        when = f"the training loss was first non-finite at step {step} (0-based, of {total} steps)"
    raise NonFiniteError(f"{what} diverged: {when}, and the run ended with non-finite weights; {hint}", step)


def check_loop_data(model: FlatModel, sampler: Sampler, eval_data: tuple[Tensor, Tensor] | None) -> None:
    """Refuse data the model cannot take or that holds NaN / inf, before a loop starts: the sampler's
    split (when it exposes one as ``sampler.data``, like :class:`~l2o_lib.data.BatchSampler`) and
    ``eval_data``. Shapes, dtypes and devices first (no synchronisation), then one finiteness check
    per split (one host synchronisation each, before any work): one bad example would make the run
    non-finite."""
    data = getattr(sampler, "data", None)
    if isinstance(getattr(data, "x", None), Tensor) and isinstance(getattr(data, "y", None), Tensor):
        model.check_data(data.x, data.y, name="sampler")
        check_finite_data("sampler.data.x (the training inputs)", data.x)
    if eval_data is not None:
        model.check_batch(eval_data, name="eval_data")
        check_finite_data("eval_data[0] (the evaluation inputs)", eval_data[0])


def run_loop(model: FlatModel, step_fn: Callable[[Tensor, int, Batch], tuple[Tensor, Tensor]],
             sampler: Sampler, *, steps: int, theta: Tensor, buffers: dict[str, Tensor],
             eval_data: tuple[Tensor, Tensor] | None = None, eval_every: int = 100,
             desc: str | None = None, on_step: Callable[[int, Tensor], None] | None = None,
             on_nonfinite: str = "raise", what: str = "training", hint: str = LR_HINT,
             val_data: tuple[Tensor, Tensor] | None = None) -> History:
    """The loop shared by every flat-parameter trainer.

    ``step_fn(theta, k, batch) -> (new_theta, loss)`` performs update ``k`` (0-based) and keeps
    its own optimizer state; the loop draws batches, logs losses on the device, evaluates
    ``eval_data`` (and ``val_data``, into ``History.val_*``) at step 0, every ``eval_every`` steps
    and at the end, and calls
    ``on_step(k + 1, theta)`` after each update. At the end, non-finite final weights raise
    :class:`~l2o_lib.finite.NonFiniteError` (``on_nonfinite="raise"``, the message starts with
    ``what`` and ends with ``hint``, what to try) or are recorded in ``extra["nonfinite_step"]``
    (``"record"``).
    """
    check_int("steps", steps)
    check_int("eval_every", eval_every)
    check_on_nonfinite(on_nonfinite)
    check_loop_data(model, sampler, eval_data)
    if val_data is not None:
        model.check_batch(val_data, name="val_data")
    losses = torch.empty(steps, device=theta.device)
    evals: list[tuple[int, dict]] = []

    def evaluate(step: int) -> None:
        if eval_data is not None or val_data is not None:
            evals.append((step, evaluate_splits(lambda x, y: model.evaluate(theta, x, y, buffers), eval_data, val_data)))

    start = time.perf_counter()
    evaluate(0)
    for step in progress(range(steps), desc=desc):
        theta, losses[step] = step_fn(theta, step, sampler.sample())
        if on_step is not None:
            on_step(step + 1, theta)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1)
    return _settle(_finish(losses, evals, start, theta), all_finite([theta]), on_nonfinite, what=what, hint=hint)


def train_flat(model: FlatModel, transform: Transform, sampler: Sampler, *, steps: int,
               theta: Tensor | None = None, buffers: dict[str, Tensor] | None = None,
               eval_data: tuple[Tensor, Tensor] | None = None, eval_every: int = 100,
               desc: str | None = None, on_step: Callable[[int, Tensor], None] | None = None,
               on_nonfinite: str = "raise", val_data: tuple[Tensor, Tensor] | None = None) -> History:
    """Train with a pure transform: ``theta ← theta + update(grad, state, theta, step)``.

    Args:
        model: the flat view of the network.
        transform: any optimizer from :mod:`l2o_lib.optim` (or a learned one).
        sampler: yields training batches via ``sample()``.
        steps: number of updates.
        theta: starting parameters (the module's current ones by default).
        buffers: BatchNorm state (a fresh copy of the module's by default); updated in place.
        eval_data: ``(x, y)`` evaluated at step 0, every ``eval_every`` steps and at the end.
        val_data: ``(x, y)`` of a validation split, evaluated alongside (``History.val_loss`` /
            ``val_accuracy``).
        on_step: ``on_step(k, theta)`` after the ``k``-th update (``k = 1 … steps``), e.g. to
            store checkpoints for DLDR.
        on_nonfinite: ``"raise"``: a run whose weights end NaN / inf raises
            :class:`~l2o_lib.finite.NonFiniteError` naming the step its loss first went
            non-finite; ``"record"``: return it with that step in ``extra["nonfinite_step"]``
            (grid searches, where divergence is a result).
    """
    check_on_nonfinite(on_nonfinite)
    theta = model.flatten() if theta is None else theta.detach().clone()
    model.check_theta(theta)
    buffers = model.init_buffers() if buffers is None else buffers
    box = {"state": transform.init(theta)}

    def step_fn(theta: Tensor, step: int, batch: Batch) -> tuple[Tensor, Tensor]:
        loss, grad = model.loss_and_grad(theta, batch, buffers)
        delta, box["state"] = transform.update(grad, box["state"], theta, step)
        return theta + delta, loss

    return run_loop(model, step_fn, sampler, steps=steps, theta=theta, buffers=buffers, eval_data=eval_data,
                    eval_every=eval_every, desc=desc, on_step=on_step, on_nonfinite=on_nonfinite, val_data=val_data)


def train_module(module: nn.Module, optimizer: torch.optim.Optimizer, sampler: Sampler, *, steps: int,
                 eval_data: tuple[Tensor, Tensor] | None = None, eval_every: int = 100,
                 loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
                 desc: str | None = None, on_loss: Callable[[Tensor], None] | None = None,
                 loss_closure: bool = False, on_step: Callable[[int, nn.Module], None] | None = None,
                 on_nonfinite: str = "raise") -> History:
    """The ordinary PyTorch loop (``zero_grad``, ``backward``, ``step``) with the same bookkeeping
    as :func:`train_flat`, so both paths can be compared number for number.

    Hooks for learned optimizers and schedules: ``on_loss(loss)`` gets each batch loss (detached)
    before the step (e.g. MLR-SNet's scheduler sets the LR from it); ``loss_closure=True`` calls
    ``optimizer.step(closure)`` with a closure that *returns* that loss without recomputing it (for
    optimizers that read the loss, such as L3RS; not for line-search optimizers like LBFGS);
    ``on_step(k, module)`` runs after the ``k``-th update (``k = 1 … steps``), e.g. to record a
    trajectory. ``on_nonfinite`` as in :func:`train_flat` (the module's parameters are checked).
    """
    check_int("steps", steps)
    check_int("eval_every", eval_every)
    check_on_nonfinite(on_nonfinite)
    device = next(module.parameters()).device
    losses = torch.empty(steps, device=device)
    evals: list[tuple[int, dict]] = []
    flat = FlatModel(module, loss_fn)
    check_loop_data(flat, sampler, eval_data)

    def evaluate(step: int) -> None:
        if eval_data is not None:
            evals.append((step, flat.evaluate(flat.flatten(), *eval_data)))

    start = time.perf_counter()
    evaluate(0)
    for step in progress(range(steps), desc=desc):
        x, y = sampler.sample()
        module.train()
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(module(x), y)
        loss.backward()
        losses[step] = loss.detach()
        if on_loss is not None:
            on_loss(losses[step])
        if loss_closure:
            optimizer.step(lambda: losses[step])
        else:
            optimizer.step()
        if on_step is not None:
            on_step(step + 1, module)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            evaluate(step + 1)
    return _settle(_finish(losses, evals, start), all_finite(list(module.parameters())), on_nonfinite)


def mean_curve(histories: list[History], field: str = "train_loss") -> dict[str, np.ndarray]:
    """Mean and std over runs of one recorded curve, as ``{"x", "y", "y_std"}`` for
    :func:`l2o_lib.plots.curves`. ``field``: ``train_loss`` (x = step 1..N), ``test_loss``,
    ``test_accuracy``, ``val_loss`` or ``val_accuracy`` (x = the evaluation steps)."""
    from .config import check_choice

    check_choice("field", field, ("train_loss", "test_loss", "test_accuracy", "val_loss", "val_accuracy"))
    if not histories:
        raise ValueError("histories must not be empty")
    ys = np.stack([getattr(h, field) for h in histories])
    x = np.arange(1, ys.shape[1] + 1) if field == "train_loss" else histories[0].eval_steps
    return {"x": x, "y": ys.mean(0), "y_std": ys.std(0)}


def mean_train_loss(history: History) -> float:
    """The mean training loss over a run: low when a run converges fast *and* ends low (the
    quantity a learned optimizer is meta-trained on); ``inf`` for a run that diverged."""
    loss = float(np.mean(history.train_loss))
    return loss if np.isfinite(loss) else float("inf")

