"""The one tuner and the one selection rule: validation only, means over seeds, diverged runs kept."""

import math

import numpy as np
import pytest
import torch

from l2o_lib.data import ArrayData, Dataset
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import adam, momentum, sgd
from l2o_lib.tasks import Task, make_task
from l2o_lib.tune import CRITERIA, best_setting, best_settings, mean_scores, tune

pytestmark = pytest.mark.usefixtures("one_thread")
INF = math.inf
FACTORIES = {"SGD": lambda lr: sgd(lr), "Adam": lambda lr: adam(lr)}
GRID = {"SGD": [0.03, 0.3, 3.0, 1e30], "Adam": [1e-3, 1e-2]}


@pytest.fixture(scope="module")
def task(digits_split):
    train, test = digits_split
    data = Dataset("digits", train, test, (64,), 10)
    return make_task(data, FlatModel(build_model("mlp", (64,), 10, seed=0, hidden=(16,))), n_val=300, batch_size=32)


@pytest.fixture(scope="module")
def tuned(task):
    return tune(task, FACTORIES, GRID, steps=30, seeds=[0, 1])


# ----------------------------------------------------------------------------- the selection rule
def _r(setting, score, seed=0, diverged_at=None, **kw):
    return {"setting": setting, "score": score, "seed": seed, "diverged_at": diverged_at, **kw}


def test_the_best_mean_over_seeds_wins():
    records = [_r("a", 1.0), _r("a", 3.0, 1), _r("b", 1.5), _r("b", 1.6, 1)]
    assert best_setting(records, setting="setting") == "b"            # mean 1.55 < 2.0
    assert best_setting(records, setting="setting", maximize=True) == "a"
    assert [r["score"] for r in mean_scores(records, keys="setting")] == [2.0, 1.55]


def test_ties_go_to_the_setting_met_first():
    assert best_setting([_r("a", 1.0), _r("b", 1.0), _r("c", 2.0)], setting="setting") == "a"
    assert best_setting([_r("b", 1.0), _r("a", 1.0)], setting="setting") == "b"
    assert best_setting([_r("b", 0.5), _r("a", 0.5)], setting="setting", maximize=True) == "b"


@pytest.mark.parametrize("bad", [dict(score=INF), dict(score=math.nan), dict(score=None),
                                 dict(score=0.0, diverged_at=3)])
def test_a_diverged_or_non_finite_run_makes_its_setting_the_worst(bad):
    records = [_r("a", 0.1, 0), {**_r("a", 0.0, 1), **bad}, _r("b", 5.0), _r("b", 5.0, 1)]
    assert best_setting(records, setting="setting") == "b"
    row = mean_scores(records, keys="setting")[0]
    assert row["score"] == INF and row["diverged"] == 1 and row["n"] == 2
    # maximising (accuracy), the diverged run is -inf, not a chance-level number
    acc = [_r("a", 0.9), {**_r("a", 1.0, 1), **bad, **({"score": 1.0} if "diverged_at" in bad else {})},
           _r("b", 0.5), _r("b", 0.5, 1)]
    assert best_setting(acc, setting="setting", maximize=True) == "b"
    assert mean_scores(acc, keys="setting", maximize=True)[0]["score"] == -INF


def test_all_diverged_keeps_the_first_setting_and_counts_them():
    records = [_r("a", INF, diverged_at=0), _r("b", INF, diverged_at=1)]
    assert best_setting(records, setting="setting") == "a"
    assert [r["diverged"] for r in mean_scores(records, keys="setting")] == [1, 1]


def test_best_settings_groups_and_tuple_settings():
    records = [_r("x", 2.0, method="m"), _r("y", 1.0, method="m"), _r("x", 0.5, method="n")]
    assert best_settings(records, group="method", setting="setting") == {"m": "y", "n": "x"}
    assert best_setting(records, setting=("method", "setting")) == ("n", "x")
    with pytest.raises(ValueError, match="records"):
        best_setting([], setting="setting")


# ----------------------------------------------------------------------------- the tuner
def test_tune_picks_per_name_and_keeps_diverged_settings(tuned):
    assert set(tuned.best) == {"SGD", "Adam"}
    assert tuned.best["SGD"] in GRID["SGD"][:3]
    scores = tuned.scores("SGD")
    assert list(scores) == GRID["SGD"] and scores[1e30] == INF
    row = next(r for r in tuned.table if r["lr"] == 1e30)
    assert row["diverged"] == 2 and row["n"] == 2 and tuned.diverged >= 2
    assert len(tuned.records) == (4 + 2) * 2 and {r["seed"] for r in tuned.records} == {0, 1}
    assert tuned.best["SGD"] == min((lr for lr in GRID["SGD"]), key=scores.get)


def test_the_vmapped_fast_path_equals_the_loop(task, tuned):
    loop = tune(task, FACTORIES, GRID, steps=30, seeds=[0, 1], vectorize=False)
    assert loop.best == tuned.best
    a, b = [np.array([r["score"] for r in t.table]) for t in (loop, tuned)]
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_tuning_never_reads_the_test_split(task, tuned):
    # a test split full of NaN, and one whose labels would favour other choices, change nothing
    poisoned = Task(task.model, task.train, task.val, ArrayData(torch.full_like(task.test.x, math.nan), task.test.y),
                    batch_size=32)
    shifted = Task(task.model, task.train, task.val, ArrayData(task.test.x, (task.test.y + 1) % 10), batch_size=32)
    for other in (poisoned, shifted):
        again = tune(other, FACTORIES, GRID, steps=30, seeds=[0, 1])
        assert again.best == tuned.best
        assert [r["score"] for r in again.table] == [r["score"] for r in tuned.table]


def test_tuning_follows_the_validation_split(task):
    # a validation split with permuted labels is a different target: the scores move with it
    relabelled = Task(task.model, task.train, ArrayData(task.val.x, (task.val.y + 3) % 10), task.test, batch_size=32)
    a = tune(task, {"SGD": FACTORIES["SGD"]}, [0.03, 0.3], steps=10)
    b = tune(relabelled, {"SGD": FACTORIES["SGD"]}, [0.03, 0.3], steps=10)
    assert [r["score"] for r in a.table] != [r["score"] for r in b.table]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_selects(task, criterion):
    result = tune(task, {"Momentum": lambda lr: momentum(lr, 0.9)}, [0.01, 1e30], steps=10, criterion=criterion)
    assert result.best == {"Momentum": 0.01} and result.criterion == criterion


@pytest.mark.parametrize("call, match", [
    (lambda t: tune(Task(t.model, t.train, test=t.test, batch_size=32), FACTORIES, [0.1], steps=2),
     r"no validation split.*n_val"),
    (lambda t: tune(t.train, FACTORIES, [0.1], steps=2), "task"),
    (lambda t: tune(t, {}, [0.1], steps=2), "factories"),
    (lambda t: tune(t, {"SGD": "sgd"}, [0.1], steps=2), "factories"),
    (lambda t: tune(t, {"SGD": lambda lr: "sgd"}, [0.1], steps=2), "Transform"),
    (lambda t: tune(t, FACTORIES, [], steps=2), "grid"),
    (lambda t: tune(t, FACTORIES, [-0.1], steps=2), "grid"),
    (lambda t: tune(t, FACTORIES, {"SGD": [0.1]}, steps=2), "grid must name"),
    (lambda t: tune(t, FACTORIES, [0.1], steps=0), "steps"),
    (lambda t: tune(t, FACTORIES, [0.1], steps=2, seeds=[]), "seeds"),
    (lambda t: tune(t, FACTORIES, [0.1], steps=2, criterion="test_accuracy"), "criterion"),
    (lambda t: tune(t, FACTORIES, [0.1], steps=2, eval_every=0), "eval_every"),
])
def test_bad_inputs_are_refused(task, call, match):
    with pytest.raises(ValueError, match=match):
        call(task)


# ----------------------------------------------------------------------------- the other tuners share the rule
def test_mlrsnet_comparison_never_picks_a_diverged_setting():
    from l2o_lib.mlrsnet import Comparison

    def rec(setting, seed, val, diverged_at=None):
        return {"method": "Fixed", "setting": setting, "seed": seed, "accuracy": 0.5, "loss": 1.0,
                "val_accuracy": val, "val_loss": 1.0, "diverged_at": diverged_at}

    # lr=3 has the higher mean validation accuracy, but one of its runs went NaN
    cmp = Comparison([rec("lr=3", 0, 0.9), rec("lr=3", 1, 0.8, diverged_at=7), rec("lr=1", 0, 0.6), rec("lr=1", 1, 0.6)],
                     {}, {}, None)
    assert cmp.best() == {"Fixed": "lr=1"} and cmp.top(["Fixed"]) == "Fixed"


def test_l3rs_tune_baselines_uses_the_shared_rule(digits_data):
    from types import SimpleNamespace

    from l2o_lib.finetuning import FinetuneTask
    from l2o_lib.l3rs import tune_baselines

    model = FlatModel(build_model("mlp", (64,), 10, seed=0, hidden=(8,)))
    family = SimpleNamespace(model=model, sample=lambda split, seed: FinetuneTask(model.flatten(), digits_data,
                                                                                  digits_data, list(range(10)), seed))
    out = tune_baselines(family, {"SGD": sgd}, [1e30, 1e-3, 0.1], seeds=[0, 1], steps=5, batch_size=32, desc=None)
    assert out["SGD"]["lr"] == 0.1 and out["SGD"]["scores"][1e30] == INF
