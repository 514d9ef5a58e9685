"""The L3RS meta-test protocol: the paper's hand-designed baselines (:func:`baseline_factories`),
their LRs tuned on meta-train tasks (:func:`tune_baselines`), every method fine-tuning held-out
tasks on the same batches (:func:`compare_methods`) and the speed-up over the best baseline per
task (:func:`speedup_records`)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import Tensor

from ..config import check_int, check_seeds
from ..finetuning import TaskFamily, finetune
from ..optim import Transform, adam
from ..optim.masked import head_only
from ..training import History, mean_train_loss, progress
from ..tune import best_setting, mean_scores

__all__ = ["baseline_factories", "tune_baselines", "compare_methods", "speedup_records"]


# --------------------------------------------------------------------------- baselines


def baseline_factories(steps: int, mask: Tensor | None = None) -> dict[str, Callable[[float], Transform]]:
    """The paper's hand-designed baselines as ``lr -> Transform``: Adam cosine / constant,
    SGD-momentum cosine and (with a head ``mask``) the head-only Adam variants."""
    from ..optim import cosine, momentum

    check_int("steps", steps)
    out: dict[str, Callable[[float], Transform]] = {
        "Adam (cosine)": lambda lr: adam(cosine(lr, steps)),
        "Adam (const)": lambda lr: adam(lr),
        "SGD-momentum (cosine)": lambda lr: momentum(cosine(lr, steps), 0.9),
    }
    if mask is not None:
        out["Adam (cosine, head)"] = lambda lr: head_only(adam(cosine(lr, steps)), mask)
        out["Adam (const, head)"] = lambda lr: head_only(adam(lr), mask)
    return out


# --------------------------------------------------------------------------- meta-test: tuning and speed-ups


def tune_baselines(family: "TaskFamily", factories: dict[str, Callable[[float], Transform]], lrs: Sequence[float], *,
                   seeds: Sequence[int], steps: int, batch_size: int = 64, split: str = "train",
                   desc: str | None = "tune") -> dict[str, dict]:
    """Grid-search every baseline's LR on tasks ``seeds`` of ``split``.

    Score: the mean training loss over the run (:func:`l2o_lib.training.mean_train_loss`, what L3RS
    is meta-trained on), averaged over the tasks and chosen by the library's one selection rule
    (:func:`l2o_lib.tune.best_setting`: a diverged run is recorded, not raised, and makes its LR
    score ``inf``; ties go to the earlier LR). Tuning happens on meta-train tasks by default, so
    held-out tasks stay unseen by every method; runs are in the frozen-BatchNorm mode of
    :func:`finetune`. Returns ``{name: {"lr": best, "scores": {lr: score}}}``.
    """
    if not lrs:
        raise ValueError("lrs must not be empty")
    check_seeds("seeds", seeds)
    tasks = [family.sample(split, s) for s in seeds]
    out = {}
    for name, make in progress(list(factories.items()), desc=desc):
        records = []
        for lr in lrs:
            for task in tasks:
                hist = finetune(family.model, make(lr), task, steps=steps, batch_size=batch_size, eval_every=steps,
                                on_nonfinite="record")
                records.append({"lr": float(lr), "score": mean_train_loss(hist),
                                "diverged_at": hist.extra.get("nonfinite_step")})
        scores = {row["key"]: row["score"] for row in mean_scores(records, keys="lr")}
        out[name] = {"lr": best_setting(records, setting="lr"), "scores": scores}
    return out


def compare_methods(family: "TaskFamily", methods: dict[str, Callable[[], Transform]], *, seeds: Sequence[int],
                    steps: int, batch_size: int = 64, eval_every: int = 5, split: str = "test",
                    record: Sequence[str] = (), desc: str | None = "meta-test") -> dict[str, list[History]]:
    """Fine-tune tasks ``seeds`` of ``split`` with every method (same batches for all); each
    history's test curve is the loss on the task's full training split every ``eval_every`` steps.
    Methods named in ``record`` keep their per-step ``lam`` / ``mu``. A method that diverges on a
    task is a result: its history is kept with ``extra["nonfinite_step"]`` (its final loss counts
    as ``inf`` in :func:`speedup_records`)."""
    if not methods:
        raise ValueError("methods must not be empty")
    check_seeds("seeds", seeds)
    tasks = [family.sample(split, s) for s in seeds]
    return {name: [finetune(family.model, make(), t, steps=steps, batch_size=batch_size, eval_every=eval_every,
                            record=name in record, on_nonfinite="record") for t in tasks]
            for name, make in progress(list(methods.items()), desc=desc)}


def speedup_records(histories: dict[str, list[History]], *, method: str, baselines: Sequence[str]) -> list[dict]:
    """Per task: the best baseline (lowest final training loss), its final loss as the target,
    the steps each needs to reach it (:func:`l2o_lib.metrics.steps_to_target` on the evaluated
    curve) and ``speedup = baseline steps / method steps`` (``nan`` when the method never gets there)."""
    from ..metrics import speedup, steps_to_target

    missing = [m for m in (method, *baselines) if m not in histories]
    if missing:
        raise ValueError(f"histories lack method(s) {missing}")
    rows = []
    for i, ours in enumerate(histories[method]):
        finals = {b: float(histories[b][i].test_loss[-1]) for b in baselines}
        finals = {b: v if math.isfinite(v) else float("inf") for b, v in finals.items()}
        best = min(finals, key=finals.get)
        target = finals[best]

        def steps_of(h: History):
            hit = steps_to_target(h.test_loss, target)
            return None if hit is None else int(h.eval_steps[hit])

        base_steps, our_steps = steps_of(histories[best][i]), steps_of(ours)
        rows.append({"task": i, "best baseline": best, "target loss": target, "baseline steps": base_steps,
                     f"{method} steps": our_steps, "speedup": speedup(base_steps, our_steps),
                     f"{method} final loss": float(ours.test_loss[-1]),
                     f"{method} test accuracy": ours.extra["test_accuracy"],
                     "baseline test accuracy": histories[best][i].extra["test_accuracy"]})
    return rows
