"""Baselines are tuned on validation data carved from the training split, never on the test split."""

import pytest
import torch
from sklearn.datasets import load_digits

from l2o_lib.data import ArrayData, Dataset
from l2o_lib.mlrsnet import Comparison, baseline_configs, compare_schedules


def _record(method, setting, seed, val, test):
    return {"method": method, "setting": setting, "seed": seed, "accuracy": test, "loss": 1 - test,
            "val_accuracy": val, "val_loss": None if val is None else 1 - val}


def test_best_and_top_choose_on_validation_not_test():
    # lr=0.1 wins on test, lr=0.3 on validation: the choice must follow validation.
    records = [_record("Fixed", "lr=0.1", s, val=0.70, test=0.90) for s in (0, 1)]
    records += [_record("Fixed", "lr=0.3", s, val=0.80, test=0.60) for s in (0, 1)]
    records += [_record("Cosine", "lr=0.1", s, val=0.75, test=0.95) for s in (0, 1)]
    cmp = Comparison(records, {}, {}, None)
    assert cmp.best() == {"Fixed": "lr=0.3", "Cosine": "lr=0.1"}
    assert cmp.top(["Fixed", "Cosine"]) == "Fixed"
    assert {r["accuracy"] for r in cmp.tuned(["Fixed"])} == {0.60}


def test_best_refuses_runs_without_a_validation_split():
    cmp = Comparison([_record("Fixed", "lr=0.1", 0, val=None, test=0.9)], {}, {}, None)
    with pytest.raises(ValueError, match="n_val"):
        cmp.best()


def test_compare_schedules_evaluates_a_held_out_validation_split():
    d = load_digits()
    x, y = torch.tensor(d.data, dtype=torch.float32) / 16, torch.tensor(d.target)
    data = Dataset("digits", ArrayData(x[:1000], y[:1000]), ArrayData(x[1000:], y[1000:]), (64,), 10)
    configs = baseline_configs(sgd_lrs=(0.05, 0.2), methods=["Fixed"])
    cmp = compare_schedules("mlp", data, configs, seeds=[0], steps=20, batch_size=32, eval_every=10,
                            model_kwargs={"hidden": (16,)}, n_val=300)
    assert all(0 <= r["val_accuracy"] <= 1 for r in cmp.records)
    # the validation numbers are not the test numbers relabelled
    assert [r["val_accuracy"] for r in cmp.records] != [r["accuracy"] for r in cmp.records]
    assert set(cmp.best()) == {"Fixed"}
    with pytest.raises(ValueError, match="n_val"):
        compare_schedules("mlp", data, configs, seeds=[0], steps=5, n_val=-1)
