"""The L3RS meta-test protocol: the paper's hand-designed baselines (:func:`baseline_factories`),
their LRs tuned on meta-train tasks (:func:`tune_baselines`, :func:`best_baseline`; the paper's LR
grid :data:`PAPER_LRS`), every method fine-tuning held-out tasks on the same batches
(:func:`compare_methods`), the speed-up over a baseline on training loss or test accuracy
(:func:`speedup_records`) and the Adam share of the mix at the start and end of a run
(:func:`share_ends`)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from torch import Tensor

from ..config import check_choice, check_int, check_seeds
from ..finetuning import TaskFamily, finetune
from ..metrics import speedup, steps_to_target
from ..optim import Transform, adam
from ..optim.masked import head_only
from ..training import History, mean_train_loss, progress
from ..tune import best_setting, mean_scores

__all__ = ["PAPER_LRS", "baseline_factories", "tune_baselines", "best_baseline", "compare_methods", "speedup_records",
           "share_ends"]

#: The paper's baseline learning rates (its appendix tables list every baseline at each of them).
PAPER_LRS = (1e-5, 1e-4, 1e-3)


# --------------------------------------------------------------------------- baselines


def baseline_factories(steps: int, mask: Tensor | None = None, *, sgd: bool = True) -> dict[str, Callable[[float], Transform]]:
    """The hand-designed baselines as ``lr -> Transform``: Adam cosine / constant, SGD-momentum
    cosine (ours; ``sgd=False`` leaves it out: the paper's list has only Adam) and (with a head
    ``mask``) the head-only Adam variants."""
    from ..optim import cosine, momentum

    check_int("steps", steps)
    out: dict[str, Callable[[float], Transform]] = {
        "Adam (cosine)": lambda lr: adam(cosine(lr, steps)),
        "Adam (const)": lambda lr: adam(lr),
    }
    if sgd:
        out["SGD-momentum (cosine)"] = lambda lr: momentum(cosine(lr, steps), 0.9)
    if mask is not None:
        out["Adam (cosine, head)"] = lambda lr: head_only(adam(cosine(lr, steps)), mask)
        out["Adam (const, head)"] = lambda lr: head_only(adam(lr), mask)
    return out


# --------------------------------------------------------------------------- meta-test: tuning and speed-ups


def tune_baselines(family: "TaskFamily", factories: dict[str, Callable[[float], Transform]], lrs: Sequence[float], *,
                   seeds: Sequence[int], steps: int, batch_size: int = 64, split: str = "train",
                   criterion: str = "mean_train_loss", desc: str | None = "tune") -> dict[str, dict]:
    """Grid-search every baseline's LR on tasks ``seeds`` of ``split``.

    Score (``criterion``): ``"mean_train_loss"``, the mean training loss over the run
    (:func:`l2o_lib.training.mean_train_loss`, what our L3RS is meta-trained on; lower is better), or
    ``"final_accuracy"``, the accuracy on the task's test split at the end (the paper's metric;
    higher is better). Averaged over the tasks and chosen by the library's one selection rule
    (:func:`l2o_lib.tune.best_setting`: a diverged run is recorded, not raised, and makes its LR
    score the worst; ties go to the earlier LR). Tuning happens on meta-train tasks by default, so
    held-out tasks stay unseen by every method; runs are in the frozen-BatchNorm mode of
    :func:`finetune`. Returns ``{name: {"lr": best, "scores": {lr: score}, "maximize": bool}}``.
    """
    if not lrs:
        raise ValueError("lrs must not be empty")
    check_seeds("seeds", seeds)
    check_choice("criterion", criterion, ("mean_train_loss", "final_accuracy"))
    maximize = criterion == "final_accuracy"
    tasks = [family.sample(split, s) for s in seeds]
    out = {}
    for name, make in progress(list(factories.items()), desc=desc):
        records = []
        for lr in lrs:
            for task in tasks:
                hist = finetune(family.model, make(lr), task, steps=steps, batch_size=batch_size, eval_every=steps,
                                on_nonfinite="record")
                score = hist.extra["test_accuracy"] if maximize else mean_train_loss(hist)
                records.append({"lr": float(lr), "score": score, "diverged_at": hist.extra.get("nonfinite_step")})
        scores = {row["key"]: row["score"] for row in mean_scores(records, keys="lr", maximize=maximize)}
        out[name] = {"lr": best_setting(records, setting="lr", maximize=maximize), "scores": scores,
                     "maximize": maximize}
    return out


def best_baseline(tuned: dict[str, dict]) -> str:
    """The name of the best baseline of :func:`tune_baselines`' result, by the score of its chosen LR
    (the same selection rule: ties go to the first)."""
    if not tuned:
        raise ValueError("tuned must not be empty")
    records = [{"name": name, "score": t["scores"][t["lr"]], "diverged_at": None} for name, t in tuned.items()]
    return best_setting(records, setting="name", maximize=next(iter(tuned.values())).get("maximize", False))


def compare_methods(family: "TaskFamily", methods: dict[str, Callable[[], Transform]], *, seeds: Sequence[int],
                    steps: int, batch_size: int = 64, eval_every: int = 5, split: str = "test",
                    record: Sequence[str] = (), test_curve: bool = False,
                    desc: str | None = "meta-test") -> dict[str, list[History]]:
    """Fine-tune tasks ``seeds`` of ``split`` with every method (same batches for all); each
    history's test curve is the loss on the task's full training split every ``eval_every`` steps
    (and with ``test_curve`` the task's test split too, :func:`finetune`).
    Methods named in ``record`` keep their per-step ``lam`` / ``mu``. A method that diverges on a
    task is a result: its history is kept with ``extra["nonfinite_step"]`` (its final loss counts
    as ``inf`` in :func:`speedup_records`)."""
    if not methods:
        raise ValueError("methods must not be empty")
    check_seeds("seeds", seeds)
    tasks = [family.sample(split, s) for s in seeds]
    return {name: [finetune(family.model, make(), t, steps=steps, batch_size=batch_size, eval_every=eval_every,
                            record=name in record, on_nonfinite="record", test_curve=test_curve) for t in tasks]
            for name, make in progress(list(methods.items()), desc=desc)}


def _curve(h: History, metric: str) -> np.ndarray:
    """The evaluated curve of ``metric``: training loss (full training split) or test accuracy; a
    diverged run's curve is the worst value from its first non-finite point on."""
    curve = np.asarray(h.test_loss if metric == "loss" else h.extra["test_curve_accuracy"], dtype=float)
    return np.where(np.isfinite(curve), curve, math.inf if metric == "loss" else -math.inf)


def speedup_records(histories: dict[str, list[History]], *, method: str, baselines: Sequence[str],
                    metric: str = "loss", baseline: str | None = None) -> list[dict]:
    """Per task: the baseline (``baseline``, or with ``None`` the best of ``baselines`` on that task
    by its final value), its final value as the target, the steps each needs to reach it
    (:func:`l2o_lib.metrics.steps_to_target` on the evaluated curve; ``None``: never, a censored
    run to count, not drop) and ``speedup = baseline steps / method steps`` (``nan`` when the method
    never gets there). ``metric``: ``"loss"`` (training loss on the task's training split, lower is
    better) or ``"accuracy"`` (the test split's accuracy, higher is better: the paper's speed-up,
    Fig. 3F; needs ``compare_methods(..., test_curve=True)``)."""
    check_choice("metric", metric, ("loss", "accuracy"))
    missing = [m for m in (method, *baselines, *([baseline] if baseline else [])) if m not in histories]
    if missing:
        raise ValueError(f"histories lack method(s) {missing}")
    sign = 1.0 if metric == "loss" else -1.0
    rows = []
    for i, ours in enumerate(histories[method]):
        if baseline is None:
            finals = {b: float(_curve(histories[b][i], metric)[-1]) for b in baselines}
            best = min(finals, key=lambda b: sign * finals[b])
        else:
            best = baseline
        target = float(_curve(histories[best][i], metric)[-1])
        base_steps, our_steps = steps_to(histories[best][i], metric, target), steps_to(ours, metric, target)
        rows.append({"task": i, "best baseline": best, f"target {metric}": target, "baseline steps": base_steps,
                     f"{method} steps": our_steps, "speedup": speedup(base_steps, our_steps),
                     f"{method} final loss": float(ours.test_loss[-1]),
                     f"{method} test accuracy": ours.extra["test_accuracy"],
                     "baseline test accuracy": histories[best][i].extra["test_accuracy"]})
    return rows


def steps_to(h: History, metric: str, target: float) -> int | None:
    """The step of ``h``'s first evaluation at or past ``target`` on its ``metric`` curve (as
    :func:`speedup_records` reads it); ``None``: never, a censored run to count, not drop."""
    hit = steps_to_target(_curve(h, metric), target, mode="below" if metric == "loss" else "above")
    return None if hit is None else int(h.eval_steps[hit])


def share_ends(histories: Sequence[History], config, *, base: str = "adam", fraction: float = 0.1) -> list[tuple[float, float]]:
    """Per run (histories recorded with ``record``): the share ``mu`` of ``base`` averaged over the
    layers, then over the first and the last ``fraction`` of the steps (at least one step each):
    ``[(first, last), ...]``. The paper sees Adam's share fall towards SGD (Fig. 4-5)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise ValueError(f"fraction must be a number in (0, 0.5], got {fraction!r}")
    if base not in config.bases:
        raise ValueError(f"base={base!r} is not one of the optimizer's bases {list(config.bases)}")
    p = config.bases.index(base)
    out = []
    for h in histories:
        if "mu" not in h.extra:
            raise ValueError("a history lacks the recorded mu; run compare_methods with record=[...] for it")
        share = np.asarray(h.extra["mu"])[..., p].mean(-1)  # (T,): mean over layers
        n = max(1, int(round(fraction * len(share))))
        out.append((float(share[:n].mean()), float(share[-n:].mean())))
    return out
