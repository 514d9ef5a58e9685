"""The run engine: one model or K vmapped members, one result type, the same batches either way."""

import numpy as np
import pytest
import torch
from torch import nn

from l2o_lib.data import BatchSampler, Dataset
from l2o_lib.finite import NonFiniteError
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import adam, momentum, sgd
from l2o_lib.runs import run, run_members
from l2o_lib.tasks import Task, make_task
from l2o_lib.training import mean_curve, train_flat

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(digits_split):
    train, test = digits_split
    data = Dataset("digits", train, test, (64,), 10)
    return make_task(data, FlatModel(build_model("mlp", (64,), 10, seed=0, hidden=(16,))), n_val=200, batch_size=32)


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=what)


def test_k_vmapped_members_equal_k_single_runs(task):
    seeds = [0, 1, 5]
    transforms = [momentum(0.1, 0.9), momentum(0.1, 0.9), adam(1e-2)]
    loop = run_members(task, transforms, seeds, steps=12, eval_every=5, vectorize=False)
    vmapped = run_members(task, transforms, seeds, steps=12, eval_every=5, vectorize=True)
    for a, b in zip(loop, vmapped):
        _close(a.train_loss, b.train_loss, "training losses")
        _close(a.val_loss, b.val_loss, "validation losses")
        _close(a.test_accuracy, b.test_accuracy, "test accuracies")
        torch.testing.assert_close(a.theta, b.theta, rtol=1e-4, atol=1e-5)
        assert list(a.eval_steps) == list(b.eval_steps) == [0, 5, 10, 12]
    # and a loop member is exactly the plain train_flat run with that seed's sampler
    plain = train_flat(task.model, adam(1e-2), BatchSampler(task.train, 32, seed=5), steps=12, eval_every=5,
                       eval_data=task.split("test"))
    assert np.array_equal(plain.train_loss, loop[2].train_loss)


def test_members_with_different_seeds_see_different_batches(task):
    a, b = run(task, sgd(0.1), steps=4, seeds=[0, 1])
    assert not np.allclose(a.train_loss, b.train_loss)
    c, d = run(task, sgd(0.1), steps=4, seeds=[2, 2])
    assert np.array_equal(c.train_loss, d.train_loss)


def test_run_evaluates_validation_and_test_on_one_cadence(task):
    (h,) = run(task, lambda: sgd(0.1), steps=7, eval_every=3)
    assert list(h.eval_steps) == [0, 3, 6, 7]
    assert h.val_loss.shape == h.test_loss.shape == (4,)
    assert not np.allclose(h.val_loss, h.test_loss)
    (n,) = run(task.without_test(), sgd(0.1), steps=7, eval_every=3)
    assert len(n.test_loss) == 0 and np.allclose(n.val_loss, h.val_loss)
    curve = mean_curve([h, n], "val_loss")
    assert list(curve["x"]) == [0, 3, 6, 7] and np.allclose(curve["y"], h.val_loss)


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_diverging_member_raises_or_is_recorded(task, vectorize):
    with pytest.raises(NonFiniteError):
        run_members(task, [sgd(0.1), sgd(1e30)], [0, 0], steps=5, vectorize=vectorize)
    ok, bad = run_members(task, [sgd(0.1), sgd(1e30)], [0, 0], steps=5, vectorize=vectorize, on_nonfinite="record")
    assert "nonfinite_step" not in ok.extra and bad.extra["nonfinite_step"] <= 4


@pytest.mark.parametrize("call, match", [
    (lambda t: run(t.train, sgd(0.1), steps=2), "task"),
    (lambda t: run(t, "sgd", steps=2), "Transform"),
    (lambda t: run(t, lambda: "sgd", steps=2), "build a Transform"),
    (lambda t: run(t, sgd(0.1), steps=0), "steps"),
    (lambda t: run(t, sgd(0.1), steps=2, seeds=[]), "seeds"),
    (lambda t: run(t, sgd(0.1), steps=2, seeds=[0.5]), "seeds"),
    (lambda t: run(t, sgd(0.1), steps=2, eval_every=0), "eval_every"),
    (lambda t: run(t, sgd(0.1), steps=2, vectorize="yes"), "vectorize"),
    (lambda t: run(t, sgd(0.1), steps=2, on_nonfinite="skip"), "on_nonfinite"),
    (lambda t: run_members(t, [sgd(0.1)], [0, 1], steps=2), "one per member"),
])
def test_bad_inputs_are_refused(task, call, match):
    with pytest.raises(ValueError, match=match):
        call(task)


def test_vectorize_true_refuses_a_model_with_buffers(task):
    model = FlatModel(nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)))
    bn = Task(model, task.train, val=task.val, batch_size=16)
    with pytest.raises(ValueError, match="vectorize=False"):
        run(bn, sgd(0.1), steps=2, seeds=[0, 1], vectorize=True)
    assert len(run(bn, sgd(0.1), steps=2, seeds=[0, 1])) == 2  # the default loops over members
