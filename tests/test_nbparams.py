"""The notebooks' declared parameters (l2o_lib.nbparams): declarations in step with the notebooks, the
checks each input goes through, and each notebook refusing bad input itself before any work."""

import ast

import pytest
import torch

from l2o_lib import nbparams
from l2o_lib.config import PROFILES
from l2o_lib.nbparams import NOTEBOOKS, check_notebook_params, dldr_cap, notebook_settings, parameter_defaults
from l2o_lib.runner import NOTEBOOK_DIR, REPO_ROOT, check_parameters, find_notebooks

STEMS = sorted(NOTEBOOKS)


def test_every_notebook_is_declared():
    assert [p.stem for p in find_notebooks()] == STEMS


@pytest.mark.parametrize("stem", STEMS)
def test_declared_parameters_are_the_parameters_cell(stem):
    spec = NOTEBOOKS[stem]
    cell, _ = nbparams.notebook_source(stem)
    assigned = {t.id for stmt in ast.parse(cell).body if isinstance(stmt, ast.Assign) for t in stmt.targets}
    assert assigned == {"profile", *spec.params, *(["overrides"] if spec.settings else [])}
    assert set(parameter_defaults(stem)) == assigned   # every default is a literal the checks can read


@pytest.mark.parametrize("stem", STEMS)
def test_declared_override_keys_are_the_settings_keys(stem):
    """Parsed from the notebook's source with ast: the keys of every profile's SETTINGS entry."""
    settings = notebook_settings(stem)
    declared = set(NOTEBOOKS[stem].settings)
    if not declared:
        assert settings == {}
        return
    assert set(settings) == set(PROFILES)
    for profile, entry in settings.items():
        assert set(entry) == declared, f"{stem} SETTINGS[{profile!r}] differs from nbparams.NOTEBOOKS"


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_notebooks_own_settings_and_defaults_pass(stem, profile):
    settings = notebook_settings(stem).get(profile, {})
    for key, value in settings.items():
        assert NOTEBOOKS[stem].settings[key].reason(value) is None, (stem, profile, key, value)
    defaults = {k: v for k, v in parameter_defaults(stem).items() if k != "profile" and k != "device"}
    assert check_notebook_params(stem, defaults, profile=profile) == defaults


def test_train_sizes_are_what_load_dataset_gives():
    from l2o_lib.data import load_dataset

    for name in ("mnist1d", "digits", "logistic", "gaussian_mixture"):
        assert len(load_dataset(name, root=REPO_ROOT / "data").train) == nbparams.TRAIN_SIZES[name], name


def test_dldr_cap_is_the_sampled_trajectory_length():
    """The cap formula counts the checkpoints sample_trajectory keeps, sampled as notebooks 02/03 do."""
    from l2o_lib.data import BatchSampler, load_dataset
    from l2o_lib.functional import FlatModel
    from l2o_lib.models import build_model
    from l2o_lib.optim import sgd
    from l2o_lib.subspace import sample_trajectory

    data = load_dataset("logistic", n_train=300, n_test=50, dim=5)
    model = FlatModel(build_model("mlp", data.input_shape, data.num_classes, hidden=[4], seed=0))
    for epochs, per_epoch, batch in ((3, 2, 32), (2, 3, 64), (4, 1, 100)):
        spe = BatchSampler(data.train, batch).steps_per_epoch
        _, trajectory = sample_trajectory(model, sgd(lr=0.1), BatchSampler(data.train, batch, seed=0),
                                          steps=epochs * spe, every=max(1, spe // per_epoch))
        assert len(trajectory) - 1 == dldr_cap(300, epochs, per_epoch, batch=batch)
    assert dldr_cap(2000, 8, 2) == dldr_cap(1437, 8, 2) == 17   # 03 under ci: what `-p d 100` used to get


BAD = [  # (notebook, params, profile, words the message must contain)
    ("00_quickstart", {"steps": 0}, "ci", ["steps=0", "00_quickstart", "integer >= 1 or None"]),
    ("00_quickstart", {"steps": 2.5}, "ci", ["steps=2.5"]),
    ("00_quickstart", {"seeds": True}, "ci", ["seeds=True"]),
    ("00_quickstart", {"batch_size": -1}, "ci", ["batch_size=-1"]),
    ("00_quickstart", {"lrs": {"SGD": 0.1, "Shampoo": 0.05}}, "ci", ["lrs=", "'adam', 'adamax'", "'lion'"]),
    ("00_quickstart", {"lrs": {}}, "ci", ["lrs=", "non-empty"]),
    ("00_quickstart", {"lrs": {"SGD": 0.1, "Momentum": 0.05, "Adam": float("nan")}}, "ci", ["lrs="]),
    ("00_quickstart", {"lrs": "fast"}, "ci", ["lrs='fast'"]),
    ("00_quickstart", {"dataset": "imagenet"}, "ci", ["dataset='imagenet'", "mnist1d"]),
    ("00_quickstart", {"model_name": "gpt"}, "ci", ["model_name='gpt'", "resnet20"]),
    ("00_quickstart", {"device": "tpu"}, "ci", ["device='tpu'", "'cuda:N'"]),
    ("00_quickstart", {"device": 3}, "ci", ["device=3"]),
    ("00_quickstart", {"profile": "quick"}, "ci", ["profile", "runner"]),
    ("00_quickstart", {"bogus": 5}, "ci", ["bogus", "allowed", "batch_size"]),
    ("00_quickstart", {"overrides": {}}, "ci", ["overrides", "allowed"]),   # 00 has no SETTINGS
    ("00_quickstart", {}, "huge", ["profile='huge'"]),
    ("01_subspaces", {"seed": -1}, "ci", ["seed=-1", "integer >= 0"]),
    ("01_subspaces", {"sub_lr": 0}, "ci", ["sub_lr=0", "> 0"]),
    ("01_subspaces", {"overrides": {"counts": [1, 5]}}, "ci", ["overrides['counts']"]),
    ("01_subspaces", {"overrides": {"dims": []}}, "ci", ["overrides['dims']"]),
    ("02_pbfgs", {"d": 31}, "ci", ["d=31", "<= 30", "sample_epochs", "per_epoch"]),
    ("02_pbfgs", {"overrides": {"sample_epochs": 2}}, "ci", ["SETTINGS['d']=30", "<= 6", "sample_epochs"]),
    ("02_pbfgs", {"overrides": {"d": 90}}, "quick", ["SETTINGS['d']=90", "<= 82"]),
    ("02_pbfgs", {"overrides": {"augment": "yes"}}, "ci", ["overrides['augment']", "True or False"]),
    ("03_sl2o", {"d": 100}, "ci", ["d=100", "<= 17", "sub_epochs=8", "per_epoch=2"]),
    ("03_sl2o", {"d": 41}, "paper", ["d=41", "<= 30", "cifar10"]),
    ("03_sl2o", {"d": 0}, "ci", ["d=0", "integer >= 1 or None"]),
    ("03_sl2o", {"overrides": {"transfer": [("digits", "gpt")]}}, "ci", ["overrides['transfer']"]),
    ("03_sl2o", {"overrides": {"grid": (0.3, -1.0)}}, "ci", ["overrides['grid']"]),
    ("03_sl2o", {"overrides": {"meta_epoch": 3}}, "ci", ["meta_epoch", "allowed keys", "meta_epochs"]),
    ("03_sl2o", {"overrides": "meta_epochs=3"}, "ci", ["overrides='meta_epochs=3'", "must be a dict"]),
    ("04_mlrsnet", {"overrides": {"steps": 0}}, "ci", ["overrides['steps']=0"]),
    ("04_mlrsnet", {"overrides": {"t_val": 2.0}}, "ci", ["overrides['t_val']=2.0"]),
    ("05_l3rs", {"overrides": {"k": 1}}, "ci", ["overrides['k']=1", ">= 2"]),
    ("05_l3rs", {"overrides": {"sigma": -0.1}}, "ci", ["overrides['sigma']"]),
    ("05_l3rs", {"base_optimizers": ["sgd", "adam", "rmsprop"]}, "ci", ["base_optimizers=", "'lion'", "'lamb'", "'adamax'"]),
    ("05_l3rs", {"base_optimizers": ["sgd", "lion"]}, "ci", ["base_optimizers=", "holds 'adam'"]),
    ("05_l3rs", {"base_optimizers": ["adam", "adam"]}, "ci", ["base_optimizers=", "distinct"]),
    ("05_l3rs", {"base_optimizers": "adam"}, "ci", ["base_optimizers='adam'"]),
    ("04_mlrsnet", {"meta_lr": 0.0}, "ci", ["meta_lr=0.0", "> 0 or None"]),
    ("04_mlrsnet", {"hidden": 0}, "ci", ["hidden=0", "integer >= 1 or None"]),
    ("06_landscapes", {"steps": 0}, "ci", ["steps=0", "06_landscapes"]),
    ("06_landscapes", {"trained_from": ""}, "ci", ["trained_from=''"]),
    ("06_landscapes", {"runs": ["Adam"]}, "ci", ["runs=['Adam']", "Momentum†"]),
    ("06_landscapes", {"runs": []}, "ci", ["runs=[]", "or None"]),
    ("06_landscapes", {"plane": "endpoint"}, "ci", ["plane='endpoint'", "'pca', 'endpoints', 'random'"]),
    ("07_symbolic", {"backend": "matlab"}, "ci", ["backend='matlab'", "pyoperon"]),
    ("07_symbolic", {"overrides": {"generations": 0}}, "ci", ["overrides['generations']=0"]),
    ("08_benchmarks", {"bench_dir": 5}, "ci", ["bench_dir=5"]),
    ("08_benchmarks", {"seed": 0}, "ci", ["seed", "allowed", "bench_dir"]),
    ("09_nothing", {}, "ci", ["09_nothing", "declared"]),
]


@pytest.mark.parametrize("stem, params, profile, words", BAD, ids=[f"{b[0][:2]}-{'-'.join(b[1]) or b[2]}-{i}"
                                                                   for i, b in enumerate(BAD)])
def test_bad_parameters_are_refused(stem, params, profile, words):
    with pytest.raises(ValueError) as info:
        check_notebook_params(stem, params, profile=profile)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_is_refused_without_cuda():
    with pytest.raises(ValueError, match="device='cuda'.*CUDA is not available"):
        check_notebook_params("03_sl2o", {"device": "cuda"}, profile="ci")


def test_good_parameters_pass():
    params = {"steps": 5, "seeds": None, "lrs": {"SGD": 1, "Momentum": 0.5, "Adam": 1e-3}, "device": "cpu"}
    assert check_notebook_params("00_quickstart", params, profile="ci") == params
    # any registered optimizers, in any case, one or more
    assert check_notebook_params("00_quickstart", {"lrs": {"lion": 3e-4, "LAMB": 1e-2}}, profile="ci")
    assert check_notebook_params("03_sl2o", {"d": 17, "overrides": {"meta_epochs": 1}}, profile="ci")
    # more checkpoints allow a larger d
    assert check_notebook_params("03_sl2o", {"d": 30, "overrides": {"per_epoch": 4}}, profile="ci")
    assert check_notebook_params("02_pbfgs", {"overrides": {"d": 12}}, profile="ci")
    assert check_notebook_params("05_l3rs", {"base_optimizers": ["sgd", "adam", "lion"]}, profile="ci")
    assert check_notebook_params("04_mlrsnet", {"meta_lr": 1e-2, "hidden": 8}, profile="ci")


def test_runner_checks_declared_notebooks_only(tmp_path):
    with pytest.raises(ValueError, match="steps=0"):
        check_parameters(NOTEBOOK_DIR / "00_quickstart.ipynb", profile="ci", parameters={"steps": 0})
    own = tmp_path / "mine.ipynb"
    own.write_text((NOTEBOOK_DIR / "08_benchmarks.ipynb").read_text())
    assert check_parameters(own, profile="ci", parameters={"anything": 1}) == {"anything": 1}
    with pytest.raises(ValueError, match="profile must not be passed"):
        check_parameters(own, profile="ci", parameters={"profile": "quick"})


def _run_until_check(stem, **params):
    """Execute the notebook's parameters cell (with ``params`` as papermill injects them) and its next
    code cell up to and including the nbparams.check line, as a kernel would."""
    cell, rest = nbparams.notebook_source(stem)
    marker = f'nbparams.check("{stem}", globals())'
    assert marker in rest, f"{stem} does not call {marker}"
    prefix = rest[:rest.index(marker) + len(marker)]
    # nothing that does work (loading data, building models, running notebooks) comes before the check
    for work in ("load_dataset(", "build_model(", "resolve_device(", "run_notebook(", "collect_summaries("):
        assert work not in prefix, f"{stem} calls {work} before checking its parameters"
    namespace = {}
    exec(cell, namespace)
    namespace.update(profile="ci", **params)
    exec(prefix, namespace)
    return namespace


@pytest.mark.parametrize("stem", STEMS)
def test_each_notebook_refuses_bad_input_before_any_work(stem):
    _run_until_check(stem)   # the defaults pass
    spec = NOTEBOOKS[stem]
    if spec.settings:
        with pytest.raises(ValueError, match=r"overrides key\(s\) \['bogus'\].*allowed keys"):
            _run_until_check(stem, overrides={"bogus": 1})
    name, rule = next(iter(spec.params.items()))
    bad = {"dataset": "nope", "seed": -1, "bench_dir": ""}[name]
    with pytest.raises(ValueError, match=f"{name}="):
        _run_until_check(stem, **{name: bad})


@pytest.mark.parametrize("stem", ["02_pbfgs", "03_sl2o"])
def test_no_notebook_caps_d_silently(stem):
    """d above the checkpoints is refused by the check; the notebook never lowers it on its own."""
    _, rest = nbparams.notebook_source(stem)
    assert "dldr(trajectory.checkpoints, d," in rest and "min(d," not in rest
