"""Tasks: a model, its start, a training split, a validation split carved from the training data, a test split."""

import pytest
import torch

from l2o_lib.data import ArrayData, Dataset
from l2o_lib.finetuning import TaskFamily as FinetuneFamily
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.tasks import Task, TaskFamily, make_task, split_validation

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(digits_split):
    train, test = digits_split
    return Dataset("digits", train, test, (64,), 10)


def _model(seed=0):
    return FlatModel(build_model("mlp", (64,), 10, seed=seed, hidden=(16,)))


def test_split_validation_is_a_seeded_partition(digits_data):
    train, val = split_validation(digits_data, 100, seed=3)
    assert len(train) == len(digits_data) - 100 and len(val) == 100
    rows = {tuple(r.tolist()) for r in torch.cat([train.x, val.x])}
    assert len(rows) == len({tuple(r.tolist()) for r in digits_data.x})  # every example once, none twice
    again, _ = split_validation(digits_data, 100, seed=3)
    other, _ = split_validation(digits_data, 100, seed=4)
    assert torch.equal(again.x, train.x) and not torch.equal(other.x, train.x)


def test_split_validation_is_still_importable_from_mlrsnet():
    from l2o_lib import mlrsnet

    assert mlrsnet.split_validation is split_validation


def test_make_task_carves_validation_from_the_training_data(digits):
    task = make_task(digits, _model(), n_val=200, seed=1, batch_size=32)
    assert len(task.train) + len(task.val) == len(digits.train)
    assert task.test is digits.test
    assert torch.equal(task.theta0, task.model.flatten())
    assert task.split("val")[0] is task.val.x and task.without_test().test is None
    named = make_task("digits", "mlp", n_val=100, model_kwargs={"hidden": (8,)})
    assert len(named.val) == 100 and named.model.dim == 64 * 8 + 8 + 8 * 10 + 10


def test_a_finetuning_family_is_a_task_family():
    assert isinstance(FinetuneFamily.__new__(FinetuneFamily), TaskFamily)
    assert not isinstance(object(), TaskFamily)


@pytest.mark.parametrize("build, match", [
    (lambda d, m: Task(m.module, d.train), "model"),
    (lambda d, m: Task(m, (d.train.x, d.train.y)), "train must be an ArrayData"),
    (lambda d, m: Task(m, d.train, val=d.train.x), "val must be an ArrayData or None"),
    (lambda d, m: Task(m, d.train, test=ArrayData(d.test.x[:, :10], d.test.y)), "test"),
    (lambda d, m: Task(m, d.train, val=ArrayData(d.train.x[:0], d.train.y[:0])), "val must hold"),
    (lambda d, m: Task(m, d.train, batch_size=0), "batch_size"),
    (lambda d, m: Task(m, d.train, batch_size=len(d.train) + 1), "batch_size"),
    (lambda d, m: Task(m, d.train, theta0=torch.zeros(3)), "theta0"),
    (lambda d, m: Task(m, d.train, augment=3), "augment"),
    (lambda d, m: Task(m, d.train).split("validation"), "name"),
    (lambda d, m: make_task(d, m, n_val=0), "n_val"),
    (lambda d, m: make_task(d, m, n_val=len(d.train)), "n_val"),
    (lambda d, m: make_task(d.train, m, n_val=10), "dataset"),
    (lambda d, m: make_task(d, m.module, n_val=10), "model"),
    (lambda d, m: make_task(d, m, n_val=10, seed=-1), "seed"),
])
def test_bad_tasks_are_refused(digits, build, match):
    with pytest.raises(ValueError, match=match):
        build(digits, _model())
