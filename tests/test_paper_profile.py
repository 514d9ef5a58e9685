"""The ``paper`` profile runs end to end: notebooks 01-05 under ``paper``, every count shrunk to a few steps.

Each notebook runs (papermill, kernel python3) in its own temporary working directory holding a CIFAR-format
folder of random images (:func:`l2o_lib.data.cifar.make_cifar_folder`, no download), so the CIFAR loaders and
the paper's architectures (LeNet-5, ResNet-20, ResNet-18 / 34) run through every cell: data, DLDR, the
meta-trainings, baselines, transfer, claims, figures. The runs (``runs/paper/``), figures (``figures/``) and
caches (``data/``) land in that directory, not in the repository (the notebooks write them relative to their
working directory).

The notebooks' last cell (after the "Checks" heading) asserts the paper's claims at full scale, which a few
steps on random images cannot meet, so each notebook runs as a copy without that cell; the test asserts
instead that every other cell ran, that the run wrote its results (``summary.json`` and ``claims.json``),
and that it used the paper profile's dataset and model.

Overrides only name keys of the notebook's current ``SETTINGS["paper"]`` (:mod:`l2o_lib.nbparams` refuses
unknown keys); :func:`test_every_paper_count_is_shrunk` fails when a notebook gains a count this file does
not shrink, so that a new setting cannot silently make this test run at the paper's scale.
"""

import json
import re
from pathlib import Path

import nbformat
import pytest

from l2o_lib import nbparams
from l2o_lib.data.cifar import make_cifar_folder
from l2o_lib.results import read_params
from l2o_lib.runner import NOTEBOOK_DIR, run_notebook

# Training / test images of each CIFAR folder a notebook's directory gets. 160 training images: notebook 03
# holds a fifth out for validation and still needs one batch of its fixed 128 for the meta-training tasks.
CIFAR10 = dict(classes=10, n_train=160, n_test=32)
CIFAR100 = dict(classes=100, n_train=200, n_test=100)
SMALL10, SMALL100 = dict(classes=10, n_train=24, n_test=8), dict(classes=100, n_train=24, n_test=8)  # batches of 2

# Per notebook: the CIFAR folders it reads, the papermill parameters, and the overrides of SETTINGS["paper"]
# (dropped where the notebook has no such key). The notebooks' own models and datasets are never overridden: the
# point is the paper's code path at a few steps. A callable override is computed from SETTINGS["paper"].
SHRINK = {
    "01_subspaces": dict(
        folders=[CIFAR10], parameters=dict(seeds=1),
        # 11 checkpoints: the variance table shows 10 components
        overrides=dict(n_train=None, sgd_steps=20, every=2, dims=[2, 4], sub_steps=3, counts=[3, 5], seeds=1)),
    "02_pbfgs": dict(
        # one SGD step per epoch (batch 128); 2 sampled epochs x 1 checkpoint give d <= 2
        folders=[CIFAR10], parameters=dict(d=2, seeds=1, protocol="both"),
        overrides=dict(n_train=None, epochs=3, decay_epoch=2, sample_epochs=2, per_epoch=1, pbfgs_epochs=1,
                       pbfgs_batch=32, seeds=1, n_val=32, tune_epochs=1, sgd_grid=[0.1], adam_grid=[1e-3])),
    "03_sl2o": dict(
        # One step per epoch (batch 128); 3 sampled epochs give d <= 3. Both protocols; a grid of one
        # multiple makes the strong protocol's LRs the paper's, so its baselines are not run twice. The
        # transfer target is ResNet-20 on CIFAR-100, not the paper's ResNet-18 on CIFAR-10: ResNet-18 at the
        # notebook's fixed batch of 128 costs a minute on 2 CPU cores (notebooks 04 and 05 run ResNet-18).
        folders=[CIFAR10, CIFAR100], parameters=dict(d=2, meta_seeds=1, protocol="both"),
        overrides=dict(n_train=None, sub_epochs=3, per_epoch=1, meta_seeds=1, meta_epochs=2, task_steps=1, unroll=1,
                       test_steps=2, seeds=1, grid=[1.0], transfer=[["cifar100", "resnet20"]], transfer_seeds=1,
                       eval_every=1)),
    "04_mlrsnet": dict(
        # ResNet-18 at batch 2. Transfer: the paper's held-out tasks of the same model and length (CIFAR-100
        # re-tuned, blurred CIFAR-10 source-tuned); 2x epochs and ResNet-34 would double the notebook's time.
        folders=[SMALL10, SMALL100], parameters=dict(meta_seeds=1, protocol="both"),
        overrides=dict(n_train=None, steps=3, t_val=1, t_val_paper=1, n_val=4, batch=2, seeds=1, meta_seeds=1,
                       hidden=8, sgd_lrs=[0.1], adam_lrs=[1e-3], hd_hyper_lrs=[1e-4], eval_every=3, resume=False,
                       transfer=lambda S: [t for t in S["transfer"] if t[2] == S["model"] and t[3] == 1])),
    "05_l3rs": dict(
        # ResNet-18 pretrained on the paper's 40 classes, fine-tuned on its 25-class tasks of one image per class
        folders=[dict(classes=100, n_train=100, n_test=100)], parameters=dict(meta_seeds=1, protocol="strong"),
        overrides=dict(n_task=None, pretrain_steps=2, steps=2, min_steps=1, eval_size=4, batch=2, pairs=1,
                       generations=1, halve_every=1, tasks_per_gen=1, chunk=2, meta_seeds=1, lrs=[1e-3],
                       tune_tasks=1, eval_tasks=1, eval_every=2, long_steps=2, long_generations=1, long_seeds=1,
                       long_tasks=1, resume=False)),
}

# Integer settings that are not run lengths, left at the paper's value on purpose.
KEPT = {"02_pbfgs": {"d"}, "03_sl2o": {"d", "hidden"}, "05_l3rs": {"n_source", "k"}}

STEMS = list(SHRINK)


def paper_settings(stem: str) -> dict:
    """The notebook's ``SETTINGS["paper"]`` as its source reads now."""
    return nbparams.notebook_settings(stem)["paper"]


def shrunk(stem: str) -> tuple[dict, dict]:
    """``(parameters, overrides)`` for the notebook: only the parameters its parameters cell declares and the
    keys its ``SETTINGS["paper"]`` has."""
    settings, declared, spec = paper_settings(stem), nbparams.parameter_defaults(stem), SHRINK[stem]
    overrides = {k: as_lists(v(settings) if callable(v) else v) for k, v in spec["overrides"].items() if k in settings}
    return {k: v for k, v in spec["parameters"].items() if k in declared}, overrides


def as_lists(value):
    """``value`` with every tuple made a list: papermill passes a tuple to the kernel as its repr string."""
    return [as_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def without_checks(stem: str, directory: Path) -> Path:
    """Copy ``notebooks/<stem>.ipynb`` into ``directory`` without its final checks cell; return the copy.

    The checks cell is the last code cell, and the nearest markdown heading above it must name the checks
    ("## Checks", "## What we found, and checks"), so a reordered notebook fails here instead of losing
    another cell."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
    last = max(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    headings = [c.source for c in nb.cells[:last] if c.cell_type == "markdown" and c.source.lstrip().startswith("#")]
    assert headings and re.match(r"#+ .*\bchecks\b", headings[-1].lstrip().splitlines()[0], re.IGNORECASE), \
        f"{stem}: the last code cell does not follow a 'Checks' heading (last heading: {headings[-1:]})"
    assert "assert" in nb.cells[last].source, f"{stem}: the last code cell holds no checks"
    del nb.cells[last]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.ipynb"   # same stem: nbparams checks the parameters by it
    nbformat.write(nb, path)
    return path


def test_every_paper_count_is_shrunk():
    """Every integer setting of SETTINGS["paper"] (a count: steps, epochs, seeds, tasks ...) is overridden
    here or listed in KEPT, and every override names an existing key, except the ones a notebook dropped."""
    for stem in STEMS:
        settings = paper_settings(stem)
        parameters, overrides = shrunk(stem)
        counts = {k for k, v in settings.items() if isinstance(v, int) and not isinstance(v, bool)}
        missing = counts - set(overrides) - KEPT.get(stem, set())
        assert not missing, f"{stem}: SETTINGS['paper'] counts {sorted(missing)} are not shrunk by SHRINK"
        nbparams.check_notebook_params(stem, {**parameters, "overrides": overrides}, profile="paper")


def test_checks_cell_is_found_and_dropped(tmp_path):
    for stem in STEMS:
        copy = nbformat.read(without_checks(stem, tmp_path), as_version=4)
        original = nbformat.read(NOTEBOOK_DIR / f"{stem}.ipynb", as_version=4)
        assert len(copy.cells) == len(original.cells) - 1
        assert [c.id for c in copy.cells] == [c.id for c in original.cells[:-1]]


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(p if isinstance(p, str) else "".join(p) for p in parts)


@pytest.mark.slow
@pytest.mark.parametrize("stem", STEMS)
def test_notebook_runs_under_paper_profile(stem, tmp_path, monkeypatch):
    # No PNG export: it would start a headless browser in every kernel; the HTML is still written.
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-browser"))
    for folder in SHRINK[stem]["folders"]:
        make_cifar_folder(tmp_path / "data", **folder)
    parameters, overrides = shrunk(stem)
    path = without_checks(stem, tmp_path / "notebooks")
    result = run_notebook(path, profile="paper", parameters={**parameters, "overrides": overrides},
                          cwd=tmp_path, output_dir=tmp_path / "executed")
    assert result.ok, f"{stem} failed under the paper profile:\n{result.error}"

    executed = nbformat.read(result.output, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    not_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    errors = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert not not_run and not errors, f"{stem}: code cells not run {not_run}, failed {errors}"

    results = tmp_path / "runs" / "paper" / stem / "results"
    summary = json.loads((results / "summary.json").read_text())
    assert summary and all({"method", "metric", "value"} <= set(r) for r in summary)
    claims = json.loads((results / "claims.json").read_text())   # every one of 01-05 writes its claims
    assert claims and all({"claim", "paper", "ours_paper_protocol", "ours_strong", "verdict"} <= set(r)
                          for r in claims)
    assert list((tmp_path / "figures").glob(f"{stem}_*_paper.html")), f"{stem}: no figure in its working directory"

    # The paper profile's dataset and model, as the run recorded them and as the notebook printed them.
    settings = paper_settings(stem)
    params = read_params("paper", stem, root=tmp_path / "runs")
    assert (params["dataset"], params["model"]) == (settings["dataset"], settings["model"])
    assert f"{settings['model']} on {settings['dataset']}" in _outputs_text(executed)
