"""The MLR-SNet comparison protocol: the paper's hand-designed schedules (:func:`hand_schedule`),
each baseline over a small grid (:func:`baseline_configs`: SGD-momentum under five schedules, Adam,
hypergradient descent) and :func:`compare_schedules`, which trains them and a transferred
:class:`~l2o_lib.mlrsnet.TrainedSchedule` over seeds as one population and tunes on a validation
split (:class:`Comparison`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch

from ..config import (check_choice, check_int, check_nonnegative, check_positive, check_probability, check_seed,
                      check_seeds)
from ..data import Dataset
from ..functional import FlatModel
from ..optim import momentum as momentum_transform
from ..optim.hypergradient import hypergradient_sgd
from ..population import Rule, evaluate_members, schedule_table, transform_rule
from ..tasks import split_validation
from ..tune import best_setting, best_settings
from .network import initial_loss
from .schedule import TrainedSchedule, mlrsnet_rule

__all__ = ["MethodConfig", "HAND_DESIGNED", "hand_schedule", "baseline_configs", "paper_baseline_configs", "Comparison",
           "compare_schedules", "paired_gap"]


@dataclass(frozen=True)
class MethodConfig:
    """One hyper-parameter setting of one compared method.

    Attributes:
        method: the method's name (``"Fixed"``, ``"MultiStep"``, ``"Adam"``, ``"HD"``, ...).
        setting: the setting, e.g. ``"lr=0.1"``.
        make: ``make(n_runs, steps, device) -> Rule`` for ``n_runs`` runs of ``steps`` steps.
    """

    method: str
    setting: str
    make: Callable[[int, int, Any], Rule]


HAND_DESIGNED = ("Fixed", "MultiStep", "Exponential", "Cosine", "SGDR")


def hand_schedule(method: str, lr: float, steps: int) -> Callable[[int], float]:
    """The paper's hand-designed schedules (Eq. 4) scaled to a run of ``steps`` steps.

    ``Fixed``: ``lr``. ``MultiStep``: ÷10 at 30 %, 60 % and 90 % of the run (the paper's epochs 60,
    120, 180 of 200). ``Exponential``: a constant per-step factor that divides the LR by 100 over the
    run (the paper's 0.95 per epoch reaches ~0 by mid-run; ours keeps the late phase useful for
    short runs). ``Cosine``: a half cosine to 0. ``SGDR``: warm restarts with a first period of
    5 % of the run, doubling, ``min_lr = 1e-5`` (the paper's ``E0 = 10`` of 200 epochs, ``T_mult = 2``).
    """
    from ..optim.schedules import constant, cosine, exponential, multistep, sgdr

    check_choice("method", method, HAND_DESIGNED)
    check_positive("lr", lr)
    check_int("steps", steps)
    if method == "Fixed":
        return constant(lr)
    if method == "MultiStep":
        return multistep(lr, sorted({max(1, round(steps * f)) for f in (0.3, 0.6, 0.9)}), 0.1)
    if method == "Exponential":
        return exponential(lr, 0.01 ** (1.0 / steps))
    if method == "Cosine":
        return cosine(lr, steps)
    return sgdr(lr, max(1, round(steps / 20)), 2, min_lr=1e-5)


def baseline_configs(*, sgd_lrs: Sequence[float] = (0.03, 0.1, 0.3), adam_lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
                     hd_lr: float = 0.1, hd_hyper_lrs: Sequence[float] = (1e-4, 1e-3, 1e-2), momentum: float = 0.9,
                     weight_decay: float = 5e-4, methods: Sequence[str] | None = None) -> list[MethodConfig]:
    """The compared methods, each over a small grid (the paper tunes HD's hyper-LR over powers of ten).

    SGD with momentum under the five :func:`hand_schedule` schedules (grid ``sgd_lrs``), Adam at
    constant LRs ``adam_lrs`` (paper: defaults), and hypergradient descent (:func:`~l2o_lib.optim.hypergradient_sgd`)
    from ``hd_lr`` with hyper-LRs ``hd_hyper_lrs``; ``weight_decay`` for all (coupled, as in
    ``torch.optim``). ``methods`` keeps a subset by name. L4 and RTHO are not implemented.
    """
    from ..optim import adam

    check_probability("momentum", momentum)
    check_nonnegative("weight_decay", weight_decay)
    check_positive("hd_lr", hd_lr)
    for name, grid in (("sgd_lrs", sgd_lrs), ("adam_lrs", adam_lrs), ("hd_hyper_lrs", hd_hyper_lrs)):
        if not len(grid):
            raise ValueError(f"{name} must not be empty")
        for v in grid:
            check_positive(name, v)
    allowed = (*HAND_DESIGNED, "Adam", "HD")
    if methods is not None:
        for m in methods:
            check_choice("methods", m, allowed)
    wanted = set(allowed if methods is None else methods)
    configs: list[MethodConfig] = []

    def sgd_config(method: str, lr: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            table = schedule_table([hand_schedule(method, lr, steps)] * n, steps, device=device)
            tx = momentum_transform(lr=lambda t: table[t, :, None], momentum=momentum, weight_decay=weight_decay)
            return transform_rule(tx, table)
        return MethodConfig(method, f"lr={lr:g}", make)

    def adam_config(lr: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            table = torch.full((steps, n), float(lr), device=device)
            return transform_rule(adam(lr=lambda t: table[t, :, None], weight_decay=weight_decay), table)
        return MethodConfig("Adam", f"lr={lr:g}", make)

    def hd_config(beta: float) -> MethodConfig:
        def make(n: int, steps: int, device) -> Rule:
            return transform_rule(hypergradient_sgd(hd_lr, beta, momentum=momentum, weight_decay=weight_decay))
        return MethodConfig("HD", f"lr0={hd_lr:g}, β={beta:g}", make)

    for method in HAND_DESIGNED:
        if method in wanted:
            configs += [sgd_config(method, lr) for lr in sgd_lrs]
    if "Adam" in wanted:
        configs += [adam_config(lr) for lr in adam_lrs]
    if "HD" in wanted:
        configs += [hd_config(b) for b in hd_hyper_lrs]
    return configs


def paper_baseline_configs(*, lr: float = 0.1, adam_lr: float = 1e-3, hd_hyper_lrs: Sequence[float] = (1e-5, 1e-4, 1e-3),
                           weight_decay: float = 5e-4) -> list[MethodConfig]:
    """The baselines of the paper's meta-training comparison (Sec. 4.1.1, Table 1), untuned: **plain**
    SGD from the paper's initial LR ``lr`` (0.1) under each hand-designed schedule (``"SGD+Fixed"``, ...),
    Adam at its default ``adam_lr`` (``"Adam (default)"``) and hypergradient descent on plain SGD from
    ``lr`` over the hyper-LRs ``hd_hyper_lrs`` (``"SGD+HD"``; the paper reports the best of
    ``{1e-3, ..., 1e-7}``). Named apart from :func:`baseline_configs`' tuned momentum-SGD methods so that
    both can train in one population."""
    configs = baseline_configs(sgd_lrs=(lr,), adam_lrs=(adam_lr,), hd_lr=lr, hd_hyper_lrs=hd_hyper_lrs, momentum=0.0,
                               weight_decay=weight_decay)
    names = {**{m: f"SGD+{m}" for m in HAND_DESIGNED}, "Adam": "Adam (default)", "HD": "SGD+HD"}
    return [replace(c, method=names[c.method]) for c in configs]


def paired_gap(ours: Mapping[Any, float], baseline: Mapping[Any, float]) -> float:
    """``100 · mean_s (ours[s] − baseline[s])`` in points over the seeds both hold (paired: seed ``s``
    fixes the initialisation of both runs, see :func:`compare_schedules`)."""
    common = [s for s in ours if s in baseline]
    if not common:
        raise ValueError(f"ours and baseline share no seed (ours: {list(ours)}, baseline: {list(baseline)})")
    return 100.0 * sum(ours[s] - baseline[s] for s in common) / len(common)


@dataclass
class Comparison:
    """What :func:`compare_schedules` returns.

    Attributes:
        records: one dict per run: ``method``, ``setting``, ``seed``, ``accuracy`` and ``loss`` (final,
            on the test split), ``val_accuracy`` and ``val_loss`` (final, on the validation split carved
            from the training data; ``None`` without one), ``diverged_at`` (the step where the run's
            training loss went NaN / inf, ``None`` when it stayed finite: a diverging setting of a
            grid is a result, kept and marked).
        lr_curves: ``{(method, setting): (steps,) mean LR over seeds}``.
        accuracy_curves: ``{(method, setting): (eval_steps, mean accuracy)}``.
        history: the whole :class:`~l2o_lib.population.PopulationHistory`.
        rows: ``{(method, setting): slice}``, the runs of each entry in ``history`` (one per seed).
    """

    records: list[dict]
    lr_curves: dict
    accuracy_curves: dict
    history: Any
    rows: dict = field(default_factory=dict)

    def by_seed(self, method: str, setting: str, metric: str = "accuracy") -> dict[int, float]:
        """``{seed: metric}`` of one entry (final test ``accuracy`` by default)."""
        found = {r["seed"]: r[metric] for r in self.records if r["method"] == method and r["setting"] == setting}
        if not found:
            raise ValueError(f"no runs of ({method!r}, {setting!r}); entries: "
                             f"{sorted({(r['method'], r['setting']) for r in self.records})}")
        return found

    def lrs(self, method: str, setting: str):
        """``(seeds, steps)`` LRs of every run of one entry (the order of ``seeds``)."""
        if (method, setting) not in self.rows:
            raise ValueError(f"no runs of ({method!r}, {setting!r}) in this comparison's history")
        return self.history.lr[self.rows[method, setting]]

    def _validated(self, methods: Sequence[str] | None) -> list[dict]:
        """The records of ``methods`` (all by default), refused when any lacks a validation score."""
        records = [r for r in self.records if methods is None or r["method"] in list(methods)]
        if any(r["val_accuracy"] is None for r in records):
            raise ValueError("these runs have no validation split to tune on (pass n_val > 0 to compare_schedules); "
                             "selecting on the test split would report a tuned-on-test number")
        return records

    def best(self, methods: Sequence[str] | None = None) -> dict[str, str]:
        """``{method: setting}`` with the highest mean final **validation** accuracy (the tuned
        baselines), by the library's one selection rule (:func:`l2o_lib.tune.best_settings`: a run
        that diverged counts as the worst, ties go to the setting listed first); the test split never
        takes part in the choice."""
        return best_settings(self._validated(methods), group="method", setting="setting", score="val_accuracy",
                             maximize=True)

    def top(self, methods: Sequence[str]) -> str:
        """The method among ``methods`` whose best setting has the highest mean validation accuracy."""
        method, _ = best_setting(self._validated(methods), setting=("method", "setting"), score="val_accuracy",
                                 maximize=True)
        return str(method)

    def tuned(self, methods: Sequence[str] | None = None) -> list[dict]:
        """The records of each method's best setting only (for mean ± std tables)."""
        best = self.best(methods)
        return [r for r in self.records if best.get(r["method"]) == r["setting"]]


def _learned_entries(schedule: TrainedSchedule | None, schedules: Mapping | None,
                     configs: Sequence[MethodConfig]) -> dict[tuple[str, str], TrainedSchedule]:
    """``{(method, setting): schedule}`` of :func:`compare_schedules`' learned schedules, checked
    (each a :class:`TrainedSchedule`, no key repeated among them or the configs)."""
    if schedule is not None and not isinstance(schedule, TrainedSchedule):
        raise ValueError(f"schedule must be a TrainedSchedule or None, got {type(schedule).__name__}")
    if schedules is not None and not isinstance(schedules, Mapping):
        raise ValueError(f"schedules must map (method, setting) to TrainedSchedule, got {type(schedules).__name__}")
    learned = {} if schedule is None else {("MLR-SNet", "transferred"): schedule}
    taken = {(c.method, c.setting) for c in configs} | set(learned)
    for key, sched in (schedules or {}).items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"schedules keys must be (method, setting) string pairs, got {key!r}")
        if not isinstance(sched, TrainedSchedule):
            raise ValueError(f"schedules[{key!r}] must be a TrainedSchedule, got {type(sched).__name__}")
        if key in taken:
            raise ValueError(f"schedules key {key!r} repeats a config or the transferred schedule")
        taken.add(key)
        learned[key] = sched
    return learned


def compare_schedules(model_name: str, data: Dataset, configs: Sequence[MethodConfig], *, seeds: Sequence[int],
                      steps: int, schedule: TrainedSchedule | None = None, batch_size: int = 128,
                      eval_every: int = 100, momentum: float = 0.9, weight_decay: float = 5e-4,
                      model_kwargs: dict | None = None, vectorize: bool | None = None,
                      augment: Callable | None = None, batch_seed: int = 0, desc: str | None = None,
                      n_val: int = 0, schedules: Mapping[tuple[str, str], TrainedSchedule] | None = None,
                      paired_batches: bool = False) -> Comparison:
    """Train every ``config`` (and the transferred ``schedule``, as ``("MLR-SNet", "transferred")``,
    and each of ``schedules``, keyed ``(method, setting)``) once per seed on ``data`` with the
    architecture ``model_name``, all as one population (see
    :func:`~l2o_lib.population.train_population`). Seed ``s`` fixes the initialisation
    (``build_model(..., seed=s)``), shared by every method, so methods differ only in their LRs
    and mini-batch draws.

    A learned schedule drives the inner optimizer it was meta-trained for: the ``momentum`` and
    ``weight_decay`` of its ``info`` (:func:`~l2o_lib.mlrsnet.meta_train` records them; plain SGD
    for a schedule meta-trained with ``momentum=0``), else the arguments ``momentum`` / ``weight_decay``.

    ``n_val`` training examples are held out (:func:`split_validation`, seeded by ``batch_seed``)
    and every run is evaluated on them at the end: :meth:`Comparison.best` tunes on those, never
    on the test split, which is only reported. ``n_val=0`` trains on the whole training split and
    leaves nothing to tune on (for runs whose settings were chosen elsewhere).

    ``paired_batches=True``: the run of seed ``seeds[i]`` draws the mini-batches of
    ``BatchSampler(seed=batch_seed + i)`` whatever its method, in this call and in any other with the
    same ``batch_seed`` (a second comparison, e.g. a control, then sees the same batches); by default
    every run draws its own batches from one generator seeded by ``batch_seed``."""
    from ..models import build_model
    from ..population import mixed_rule, train_population

    if not isinstance(data, Dataset):
        raise ValueError(f"data must be a Dataset, got {type(data).__name__}")
    seeds = check_seeds("seeds", seeds)
    check_seed("batch_seed", batch_seed)
    configs = list(configs)
    if not configs and schedule is None and not schedules:
        raise ValueError("nothing to compare: configs is empty and schedule / schedules are None")
    for c in configs:
        if not isinstance(c, MethodConfig):
            raise ValueError(f"configs must hold MethodConfig, got {type(c).__name__}")
    learned = _learned_entries(schedule, schedules, configs)
    check_int("steps", steps)
    check_int("n_val", n_val, minimum=0)
    train, val = split_validation(data.train, n_val, seed=batch_seed) if n_val else (data.train, None)
    device = data.device
    kwargs = dict(model_kwargs or {})
    modules = [build_model(model_name, data.input_shape, data.num_classes, seed=s, **kwargs).to(device) for s in seeds]
    model = FlatModel(modules[0])
    base = torch.stack([FlatModel(m).flatten() for m in modules])  # (S, D)
    n = len(seeds)
    entries = [(c.method, c.setting) for c in configs]
    parts = [(n, c.make(n, steps, device)) for c in configs]
    if learned:
        f0 = torch.stack([initial_loss(model, base[i], train) for i in range(n)])
    for key, sched in learned.items():
        inner_momentum, inner_decay = sched.inner_sgd(momentum, weight_decay)
        parts.append((n, mlrsnet_rule(sched, total_steps=steps, num_classes=data.num_classes, f0=f0,
                                      momentum=inner_momentum, weight_decay=inner_decay)))
        entries.append(key)
    thetas = base.repeat(len(parts), 1)
    hist = train_population(model, train, mixed_rule(parts), thetas=thetas, steps=steps, batch_size=batch_size,
                            seed=batch_seed, eval_data=(data.test.x, data.test.y), eval_every=eval_every,
                            vectorize=vectorize, augment=augment, desc=desc, on_nonfinite="record",
                            member_seeds=[batch_seed + i for i in range(n)] * len(parts) if paired_batches else None)
    validation = None if val is None else {  # the final members, each with its own BatchNorm state
        key: v.cpu().numpy() for key, v in evaluate_members(model, hist.thetas, val.x, val.y,
                                                            hist.extra["buffers"]).items()}
    records, lr_curves, acc_curves, members = [], {}, {}, {}
    for j, (method, setting) in enumerate(entries):
        rows = members[method, setting] = slice(j * n, (j + 1) * n)
        for i, s in enumerate(seeds):
            k = j * n + i
            records.append({"method": method, "setting": setting, "seed": s,
                            "accuracy": float(hist.test_accuracy[k, -1]), "loss": float(hist.test_loss[k, -1]),
                            "val_accuracy": None if validation is None else float(validation["accuracy"][k]),
                            "val_loss": None if validation is None else float(validation["loss"][k]),
                            "diverged_at": hist.extra["nonfinite_step"][k]})
        lr_curves[(method, setting)] = hist.lr[rows].mean(0)
        acc_curves[(method, setting)] = (hist.eval_steps, hist.test_accuracy[rows].mean(0))
    return Comparison(records, lr_curves, acc_curves, hist, members)

