"""Each notebook's papermill parameters and ``SETTINGS`` overrides, declared with their types and ranges.

The notebooks take their inputs through papermill (``l2o run 03 -p seed 1``) or from a user editing
the ``parameters`` cell. :func:`check_notebook_params` checks such inputs against the declarations in
:data:`NOTEBOOKS` before any work starts: the CLI and :func:`l2o_lib.runner.run_notebook` call it
before papermill starts a kernel, and every notebook calls :func:`check` on its own namespace as its
first statement after the imports (and its ``SETTINGS`` table), so a notebook run directly in Jupyter
refuses the same inputs.

A refused input raises ``ValueError`` naming the parameter, the notebook and what is allowed, e.g.
``steps=0 is not allowed for notebook 00_quickstart: must be an integer >= 1 or None``.

``profile`` is never a parameter here: the runner (``l2o run --profile``) sets it, so that the run
directory ``runs/<profile>`` and the notebook's scale always agree.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import PROFILES, check_choice, resolve_device

__all__ = ["Rule", "NotebookSpec", "one_of", "NOTEBOOKS", "TRAIN_SIZES", "check_notebook_params", "check",
           "notebook_source", "parameter_defaults", "notebook_settings", "dldr_cap"]

# Defined here, not in runner: runner imports this module, so importing runner from here is a circle.
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


@dataclass(frozen=True)
class Rule:
    """What one parameter or ``SETTINGS`` entry accepts.

    Attributes:
        reason: ``reason(value)`` is ``None`` for an allowed value, else why it is refused
            (``"must be an integer >= 1 or None"``).
    """

    reason: Callable[[Any], str | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not math.isnan(value) and not math.isinf(value))


def integer(minimum: int = 1, *, none: bool = False) -> Rule:
    """An integer >= ``minimum`` (or ``None`` when ``none``)."""
    text = f"must be an integer >= {minimum}" + (" or None" if none else "")
    return Rule(lambda v: None if (v is None and none) or (_is_int(v) and v >= minimum) else text)


def positive(*, none: bool = False) -> Rule:
    """A finite number > 0 (or ``None`` when ``none``)."""
    text = "must be a finite number > 0" + (" or None" if none else "")
    return Rule(lambda v: None if (v is None and none) or (_is_real(v) and v > 0) else text)


def boolean() -> Rule:
    """``True`` or ``False``."""
    return Rule(lambda v: None if isinstance(v, bool) else "must be True or False")


def text() -> Rule:
    """A non-empty string (a folder name, ...)."""
    return Rule(lambda v: None if isinstance(v, str) and v else "must be a non-empty string")


def sequence(item: Rule, what: str) -> Rule:
    """A non-empty list or tuple whose every item ``item`` accepts; ``what`` describes the items."""
    def reason(v):
        if not isinstance(v, (list, tuple)) or not v or any(item.reason(x) for x in v):
            return f"must be a non-empty list of {what}"
        return None
    return Rule(reason)


def _registry(kind: str) -> dict:
    # Imported when first needed: the registries pull in torch, which a CLI error should not wait for
    # unless it checks a dataset or model.
    if kind == "dataset":
        from .data import DATASETS
        return DATASETS
    if kind == "model":
        from .models import MODELS
        return MODELS
    from .symbolic import BACKENDS
    return dict.fromkeys(BACKENDS)


def registered(kind: str) -> Rule:
    """A name from a registry: ``"dataset"`` (:data:`l2o_lib.data.DATASETS`), ``"model"``
    (:data:`l2o_lib.models.MODELS`) or ``"backend"`` (:data:`l2o_lib.symbolic.BACKENDS`)."""
    def reason(v):
        names = _registry(kind)
        return None if isinstance(v, str) and v in names else f"must be one of {sorted(names)}"
    return Rule(reason)


def device() -> Rule:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``, as :func:`l2o_lib.config.resolve_device` accepts
    (``cuda`` only where CUDA is available)."""
    def reason(v):
        try:
            resolve_device(v)
        except ValueError as exc:
            return f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', and available here ({exc})"
        return None
    return Rule(reason)


def optimizer_lrs() -> Rule:
    """A non-empty dict ``{label: lr}``: each label names an optimizer of :data:`l2o_lib.optim.OPTIMIZERS`
    (case-insensitive, e.g. ``"Adam"``), each LR finite > 0."""
    def reason(v):
        from .optim import OPTIMIZERS   # torch: imported only when a notebook's optimizers are checked
        if (not isinstance(v, dict) or not v or any(not isinstance(k, str) or k.lower() not in OPTIMIZERS for k in v)
                or any(not _is_real(x) or x <= 0 for x in v.values())):
            return (f"must be a non-empty dict {{optimizer: lr}} with optimizers from {sorted(OPTIMIZERS)} "
                    "(any case) and finite LRs > 0")
        return None
    return Rule(reason)


def one_of(*choices: str) -> Rule:
    """One of the strings ``choices``."""
    return Rule(lambda v: None if isinstance(v, str) and v in choices else f"must be one of {list(choices)}")


def mapping() -> Rule:
    """Any dict (keyword arguments passed on, checked where they are used)."""
    return Rule(lambda v: None if isinstance(v, dict) else "must be a dict")


def tuples(length: int, what: str, *, dataset_at: int, model_at: int) -> Rule:
    """A non-empty list of ``length``-tuples naming a registered dataset and model at the given places."""
    def ok(t):
        return (isinstance(t, (list, tuple)) and len(t) == length
                and registered("dataset").reason(t[dataset_at]) is None
                and registered("model").reason(t[model_at]) is None)

    def reason(v):
        if not isinstance(v, (list, tuple)) or not v or not all(ok(t) for t in v):
            return f"must be a non-empty list of {what} with a dataset from {sorted(_registry('dataset'))} " \
                   f"and a model from {sorted(_registry('model'))}"
        return None
    return Rule(reason)


COUNT = integer(1)
COUNT_OR_NONE = integer(1, none=True)
SEED = integer(0)
LR = positive()
DATASET = registered("dataset")
MODEL = registered("model")
DEVICE = device()
FLAG = boolean()


@dataclass(frozen=True)
class NotebookSpec:
    """One notebook's declared inputs.

    Attributes:
        params: the ``parameters`` cell's names (except ``profile``) and their rules; a notebook
            with ``settings`` also takes ``overrides``, a dict of some of those entries.
        settings: the keys of the notebook's ``SETTINGS[profile]`` table and their rules.
        cap: ``cap(S, d)`` for notebooks whose ``d`` is bounded by their settings:
            ``None`` when ``d`` fits, else why not.
    """

    params: dict[str, Rule]
    settings: dict[str, Rule] = field(default_factory=dict)
    cap: Callable[[dict, int], str | None] | None = None


#: Training examples in each dataset's full training split (``n_train=None``); synthetic datasets
#: generate ``n_train`` examples (4000 by default). Checked against :func:`l2o_lib.data.load_dataset`
#: by the tests (the CIFAR sizes are the published 50,000).
TRAIN_SIZES = {"mnist1d": 4000, "digits": 1437, "cifar10": 50000, "cifar100": 50000,
               "logistic": 4000, "gaussian_mixture": 4000}
_SYNTHETIC = ("logistic", "gaussian_mixture")


def _train_size(dataset: str, n_train: int | None) -> int | None:
    """Examples ``load_dataset(dataset, n_train=n_train)`` keeps (``None`` when unknown)."""
    if dataset in _SYNTHETIC and n_train is not None:
        return n_train
    full = TRAIN_SIZES.get(dataset)
    return full if n_train is None or full is None else min(full, n_train)


def dldr_cap(n_examples: int, epochs: int, per_epoch: int, *, batch: int = 128) -> int:
    """The largest DLDR ``d`` a trajectory of ``epochs`` epochs sampled ``per_epoch`` times an epoch
    allows: its checkpoints (the initial point included) minus one, as notebooks 02 and 03 sample them
    (``every = max(1, steps_per_epoch // per_epoch)`` steps of batches of ``batch``, last one dropped)."""
    steps_per_epoch = max(1, n_examples // batch)
    return epochs * steps_per_epoch // max(1, steps_per_epoch // per_epoch)


def _cap_text(d: int, cap: int, where: str, epochs_key: str) -> str | None:
    if d <= cap:
        return None
    return (f"must be <= {cap}, the number of DLDR checkpoints minus one that {where} give; lower d, or "
            f"raise overrides {epochs_key!r} or 'per_epoch' (more checkpoints)")


def _cap_02(S: dict, d: int) -> str | None:
    n = _train_size(S["dataset"], S["n_train"])
    if n is None:
        return None
    cap = dldr_cap(n, S["sample_epochs"], S["per_epoch"])
    return _cap_text(d, cap, f"sample_epochs={S['sample_epochs']} x per_epoch={S['per_epoch']} on {n} "
                             f"{S['dataset']} training examples", "sample_epochs")


def _cap_03(S: dict, d: int) -> str | None:
    # The subspace is built for the meta-training task and for each transfer target (whole split).
    tasks = [(S["dataset"], S["n_train"])] + [(ds, None) for ds, _ in S["transfer"]]
    for dataset, n_train in tasks:
        n = _train_size(dataset, n_train)
        if n is None:
            continue
        cap = dldr_cap(n, S["sub_epochs"], S["per_epoch"])
        reason = _cap_text(d, cap, f"sub_epochs={S['sub_epochs']} x per_epoch={S['per_epoch']} on {n} "
                                   f"{dataset} training examples", "sub_epochs")
        if reason:
            return reason
    return None


def _l3rs_bases() -> Rule:
    """``None`` (the paper's set) or a non-empty list of distinct base-optimizer names from
    :data:`l2o_lib.l3rs.BASES` holding ``"adam"`` (notebook 05's Adam-share claims read its share)."""
    def reason(v):
        from .l3rs.phi import BASES  # imported when first needed, as the registries above
        if v is None or (isinstance(v, (list, tuple)) and v and all(isinstance(b, str) and b in BASES for b in v)
                         and len(set(v)) == len(v) and "adam" in v):
            return None
        return f"must be None or a non-empty list of distinct names from {list(BASES)} that holds 'adam'"
    return Rule(reason)


_LR_GRID = sequence(LR, "finite numbers > 0")
_COUNTS = sequence(COUNT, "integers >= 1")

NOTEBOOKS: dict[str, NotebookSpec] = {
    "00_quickstart": NotebookSpec(
        params=dict(dataset=DATASET, model_name=MODEL, steps=COUNT_OR_NONE, seeds=COUNT_OR_NONE, batch_size=COUNT,
                    lrs=optimizer_lrs(), device=DEVICE)),
    "01_subspaces": NotebookSpec(
        params=dict(seed=SEED, seeds=COUNT_OR_NONE, sub_lr=LR, device=DEVICE),
        settings=dict(dataset=DATASET, model=MODEL, n_train=COUNT_OR_NONE, sgd_lr=LR, sgd_steps=COUNT, every=COUNT,
                      dims=_COUNTS, sub_steps=COUNT, counts=sequence(integer(2), "integers >= 2"), seeds=COUNT)),
    "02_pbfgs": NotebookSpec(
        params=dict(seed=SEED, seeds=COUNT_OR_NONE, protocol=one_of("paper", "strong", "both"), d=COUNT_OR_NONE,
                    sample_with=one_of("sgd", "adam"), device=DEVICE),
        settings=dict(dataset=DATASET, model=MODEL, n_train=COUNT_OR_NONE, epochs=COUNT, decay_epoch=COUNT,
                      sample_epochs=COUNT, per_epoch=COUNT, pbfgs_epochs=COUNT, pbfgs_batch=COUNT, augment=FLAG,
                      d=COUNT, seeds=COUNT, n_val=COUNT, tune_epochs=COUNT, sgd_grid=_LR_GRID, adam_grid=_LR_GRID),
        cap=_cap_02),
    "03_sl2o": NotebookSpec(
        params=dict(seed=SEED, d=COUNT_OR_NONE, meta_seeds=COUNT_OR_NONE,
                    protocol=one_of("paper", "strong", "both"), device=DEVICE),
        settings=dict(dataset=DATASET, model=MODEL, n_train=COUNT_OR_NONE, sub_epochs=COUNT, per_epoch=COUNT,
                      scale=LR, ablation_scale=positive(none=True), hidden=COUNT, meta_lr=LR, meta_seeds=COUNT,
                      meta_epochs=COUNT, task_steps=COUNT, unroll=COUNT, test_steps=COUNT, seeds=COUNT,
                      grid=_LR_GRID, transfer=tuples(2, "(dataset, model) pairs", dataset_at=0, model_at=1),
                      transfer_seeds=COUNT, d=COUNT, eval_every=COUNT),
        cap=_cap_03),
    "04_mlrsnet": NotebookSpec(
        params=dict(seed=SEED, meta_seeds=COUNT_OR_NONE, protocol=one_of("paper", "strong", "both"),
                    meta_lr=positive(none=True), hidden=COUNT_OR_NONE, device=DEVICE),
        settings=dict(dataset=DATASET, model=MODEL, n_train=COUNT_OR_NONE, steps=COUNT, t_val=COUNT, t_val_paper=COUNT,
                      n_val=COUNT, batch=COUNT, seeds=COUNT, meta_seeds=COUNT, meta_lr=LR, hidden=COUNT,
                      sgd_lrs=_LR_GRID, adam_lrs=_LR_GRID, hd_hyper_lrs=_LR_GRID, paper_lr=LR,
                      eval_every=COUNT, threads=COUNT_OR_NONE, augment=FLAG, resume=FLAG,
                      transfer=tuples(6, "(name, dataset, model, steps factor, corruption, re-tune) tuples",
                                      dataset_at=1, model_at=2))),
    "05_l3rs": NotebookSpec(
        params=dict(seed=SEED, meta_seeds=COUNT_OR_NONE, protocol=one_of("paper", "strong", "both"),
                    base_optimizers=_l3rs_bases(), device=DEVICE),
        settings=dict(dataset=DATASET, model=MODEL, model_kwargs=mapping(), n_source=COUNT, k=integer(2),
                      n_task=COUNT_OR_NONE, pretrain_steps=COUNT, pretrain_lr=LR, steps=COUNT, min_steps=COUNT,
                      eval_size=COUNT, batch=COUNT, pairs=COUNT, generations=COUNT, sigma=LR, meta_lr=LR,
                      halve_every=COUNT, tasks_per_gen=COUNT, chunk=COUNT_OR_NONE, meta_seeds=COUNT, lrs=_LR_GRID,
                      tune_tasks=COUNT, eval_tasks=COUNT, eval_every=COUNT, long_steps=integer(2),
                      long_generations=COUNT, long_seeds=COUNT, long_tasks=COUNT, threads=COUNT_OR_NONE,
                      resume=FLAG)),
    "06_landscapes": NotebookSpec(
        # runs: None (all available) or some of l2o_lib.landscape.OPTIMIZERS (named here so that a CLI error
        # does not wait for torch; tests/test_nbparams.py keeps the two lists equal).
        params=dict(seed=SEED, steps=COUNT, device=DEVICE, trained_from=text(),
                    runs=Rule(lambda v: None if v is None else sequence(
                        one_of("Momentum", "Momentum†", "SL2O", "MLR-SNet", "L3RS"),
                        "run names: Momentum, Momentum†, SL2O, MLR-SNet, L3RS (or None: all)").reason(v)),
                    plane=one_of("pca", "endpoints", "random")),
        settings=dict(dataset=DATASET, model=MODEL, n_train=COUNT_OR_NONE, n_eval=COUNT, resolution=integer(3),
                      margin=LR, interp_steps=integer(2), lr_momentum=LR, lr_dagger=LR, threads=COUNT_OR_NONE,
                      surface_png=FLAG, fallback_epochs=COUNT, fallback_tasks=COUNT, fallback_task_steps=COUNT,
                      fallback_mlrsnet_steps=COUNT)),
    "07_symbolic": NotebookSpec(
        params=dict(seed=SEED, backend=registered("backend"), device=DEVICE, trained_from=text()),
        settings=dict(time_budget=LR, generations=COUNT_OR_NONE, restarts=COUNT, population=COUNT,
                      max_samples=COUNT, probe_runs=COUNT, probe_steps=COUNT, front_steps=COUNT, seeds=COUNT,
                      l3rs_probe_tasks=COUNT,
                      l3rs_eval_tasks=COUNT, threads=COUNT_OR_NONE,
                      operators=sequence(one_of("add", "sub", "mul", "div", "sqrt", "exp", "log", "tanh", "abs", "square"),
                                         "operator names: add, sub, mul, div, sqrt, exp, log, tanh, abs, square"))),
    "08_benchmarks": NotebookSpec(params=dict(bench_dir=text())),
}


# ---------------------------------------------------------------------------------------------
# reading a notebook's parameters cell and SETTINGS table (for the defaults and the d cap)
# ---------------------------------------------------------------------------------------------


def notebook_source(stem: str, directory: Path | None = None) -> tuple[str, str]:
    """``(parameters cell, the rest of the code)`` of ``notebooks/<stem>.ipynb`` as source text."""
    path = Path(directory or NOTEBOOK_DIR) / f"{stem}.ipynb"
    try:
        cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the notebook {str(path)!r} ({type(exc).__name__}: {exc}); restore it from "
                         f"git") from exc
    source = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise ValueError(f"notebook {str(path)!r} has no cell tagged 'parameters'")
    return source[tagged[0]], "\n".join(s for i, s in enumerate(source) if i != tagged[0])


def _evaluate(node: ast.AST) -> Any:
    """A literal, also through ``dict(a=...)`` calls and arithmetic on numbers (``200 * 382``)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _evaluate(kw.value) for kw in node.keywords}
    if isinstance(node, ast.Dict):
        return {_evaluate(k): _evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_evaluate(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Add, ast.Sub)):
        left, right = _evaluate(node.left), _evaluate(node.right)
        return {ast.Mult: lambda: left * right, ast.Add: lambda: left + right,
                ast.Sub: lambda: left - right}[type(node.op)]()
    return ast.literal_eval(node)


def _assignments(source: str) -> dict[str, Any]:
    """Top-level ``name = <literal>`` assignments of ``source``, evaluated."""
    values = {}
    for stmt in ast.parse(source).body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                values[stmt.targets[0].id] = _evaluate(stmt.value)
            except (ValueError, TypeError):  # a computed value: not a default or a setting
                pass
    return values


def parameter_defaults(stem: str, directory: Path | None = None) -> dict[str, Any]:
    """The ``parameters`` cell's assignments of ``notebooks/<stem>.ipynb`` (``profile`` included)."""
    return _assignments(notebook_source(stem, directory)[0])


def notebook_settings(stem: str, directory: Path | None = None) -> dict[str, dict]:
    """The notebook's ``SETTINGS`` table (profile → settings), read from its source; ``{}`` without one."""
    return _assignments(notebook_source(stem, directory)[1]).get("SETTINGS", {})


# ---------------------------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------------------------


def _refuse(stem: str, name: str, value: Any, reason: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not allowed for notebook {stem}: {reason}")


def _spec(stem: str) -> NotebookSpec:
    if stem not in NOTEBOOKS:
        raise ValueError(f"notebook {stem!r} has no declared parameters; declared: {sorted(NOTEBOOKS)}")
    return NOTEBOOKS[stem]


def _allowed_names(spec: NotebookSpec) -> list[str]:
    return sorted(spec.params) + (["overrides"] if spec.settings else [])


def _check_overrides(stem: str, spec: NotebookSpec, overrides: Any) -> None:
    if not isinstance(overrides, dict):
        raise _refuse(stem, "overrides", overrides, f"must be a dict of some of {sorted(spec.settings)}")
    unknown = sorted(map(str, set(overrides) - set(spec.settings)))
    if unknown:
        raise ValueError(f"overrides key(s) {unknown} are not allowed for notebook {stem}: "
                         f"allowed keys (its SETTINGS): {sorted(spec.settings)}")
    for key, value in overrides.items():
        reason = spec.settings[key].reason(value)
        if reason:
            raise _refuse(stem, f"overrides[{key!r}]", value, reason)


def check_notebook_params(stem: str, params: Mapping[str, Any], *, profile: str,
                          settings: Mapping[str, dict] | None = None, directory: Path | None = None) -> dict:
    """Check the parameters ``params`` given to notebook ``stem`` under ``profile``; return them.

    Every name must be declared in :data:`NOTEBOOKS` (``profile`` is not a parameter: it is this
    function's argument); every value must satisfy its rule; ``overrides`` may only hold the
    notebook's ``SETTINGS`` keys, each checked too. Notebooks 02 and 03 also check that ``d``
    (given, or the notebook's default, ``None`` meaning the profile's ``SETTINGS["d"]``) does not
    exceed what their DLDR trajectory gives, computed from the profile's settings with the overrides.

    Args:
        stem: the notebook's file name without ``.ipynb`` (``"03_sl2o"``).
        params: the parameters to pass (papermill's ``-p``).
        profile: ``ci``, ``quick`` or ``paper``.
        settings: the notebook's ``SETTINGS`` table (default: read from ``notebooks/<stem>.ipynb``).
        directory: where the notebook is (default: the repository's ``notebooks/``).

    Raises:
        ValueError: naming the notebook, the parameter and what it allows; raised before any work.
    """
    check_choice("profile", profile, PROFILES)
    spec = _spec(stem)
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a dict of parameter names and values, got {type(params).__name__}")
    if "profile" in params:
        raise ValueError(f"profile must not be passed as a parameter of notebook {stem}: the profile is chosen by "
                         f"the runner (l2o run --profile {sorted(PROFILES)})")
    unknown = sorted(map(str, set(params) - set(_allowed_names(spec))))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for notebook {stem}; allowed: {_allowed_names(spec)}")
    for name, value in params.items():
        if name == "overrides":
            _check_overrides(stem, spec, value)
        else:
            reason = spec.params[name].reason(value)
            if reason:
                raise _refuse(stem, name, value, reason)
    if spec.cap is not None:
        _check_d(stem, spec, params, profile, settings, directory)
    return dict(params)


def _check_d(stem: str, spec: NotebookSpec, params: Mapping[str, Any], profile: str,
             settings: Mapping[str, dict] | None, directory: Path | None) -> None:
    """``d`` (or the profile's) within what the profile's settings with the overrides give."""
    defaults = parameter_defaults(stem, directory) if "d" not in params or "overrides" not in params else {}
    settings = notebook_settings(stem, directory) if settings is None else settings
    S = {**settings[profile], **params.get("overrides", defaults.get("overrides", {}))}
    d = params.get("d", defaults.get("d"))
    name, d = ("d", d) if d is not None else ("SETTINGS['d']", S["d"])
    reason = spec.cap(S, d)
    if reason:
        raise ValueError(f"{name}={d!r} is not allowed for notebook {stem} under profile {profile}: {reason}")


def check(stem: str, namespace: Mapping[str, Any]) -> dict:
    """The check a notebook runs on itself, first thing after its imports: ``nbparams.check("03_sl2o",
    globals())`` checks ``profile`` and the declared parameters found in ``namespace`` (and the
    ``SETTINGS`` table there, when the notebook has one) with :func:`check_notebook_params`."""
    spec = _spec(stem)
    params = {name: namespace[name] for name in _allowed_names(spec) if name in namespace}
    return check_notebook_params(stem, params, profile=namespace.get("profile"), settings=namespace.get("SETTINGS"))
