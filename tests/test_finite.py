"""No trainer returns NaN weights silently (issue 20, item 1): a NaN / inf injected into training
ends either with finite weights and a recorded event, or with a NonFiniteError naming the step;
non-finite data is refused before any work, and a NaN learning-rate schedule is refused where it
is cheap to see (item 8)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import l2o_lib.mlrsnet as mlrsnet
import l2o_lib.mlrsnet.meta_training as mlrsnet_meta_training
from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.finite import NonFiniteError
from l2o_lib.functional import FlatModel
from l2o_lib.finetuning import FinetuneTask, finetune
from l2o_lib.meta import nes_train
from l2o_lib.models import build_model
from l2o_lib.optim import momentum, sgd
from l2o_lib.optim.schedules import exponential
from l2o_lib.pbfgs import pbfgs, train_pbfgs
from l2o_lib.population import Rule, schedule_table, train_population, transform_rule
from l2o_lib.sl2o import LSTMRule, Problem, meta_train, rnnprop, run_task
from l2o_lib.subspace import random_subspace
from l2o_lib.tasks import Task
from l2o_lib.training import train_flat, train_module
from l2o_lib.tune import tune

INF = float("inf")

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n=256, width=8, classes=3):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, width, generator=g), torch.randint(classes, (n,), generator=g)
    return FlatModel(build_model("mlp", (width,), classes, seed=0, hidden=(16,))), ArrayData(x, y)


class InfAt(BatchSampler):
    """A BatchSampler whose ``at``-th batch (0-based) holds an inf input."""

    def __init__(self, data, batch_size, *, at, seed=0, **kwargs):
        super().__init__(data, batch_size, seed=seed, **kwargs)
        self.at, self.calls = at, 0

    def sample(self):
        x, y = super().sample()
        if self.calls == self.at:
            x = x.clone()
            x[0, 0] = INF
        self.calls += 1
        return x, y


def finite(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ----------------------------------------------------------------------------- train_flat / module


def test_train_flat_names_the_step_of_an_inf_batch_or_records_it():
    model, data = toy()
    with pytest.raises(NonFiniteError, match="step 6 ") as err:
        train_flat(model, momentum(lr=0.1), InfAt(data, 32, at=6), steps=10)
    assert err.value.step == 6 and "learning rate" in str(err.value)
    hist = train_flat(model, momentum(lr=0.1), InfAt(data, 32, at=6), steps=10, on_nonfinite="record")
    assert hist.extra["nonfinite_step"] == 6


def test_train_flat_and_module_refuse_an_inf_training_example_before_work():
    model, data = toy()
    x = data.x.clone()
    x[40, 2] = INF
    sampler = InfAt(ArrayData(x, data.y), 32, at=-1)
    with pytest.raises(ValueError, match=r"sampler\.data\.x .*non-finite.*index \(40, 2\)"):
        train_flat(model, sgd(0.1), sampler, steps=3)
    assert sampler.calls == 0   # refused before the loop drew a batch
    net = nn.Linear(8, 3)
    with pytest.raises(ValueError, match=r"eval_data\[0\] .*non-finite"):
        train_module(net, torch.optim.SGD(net.parameters(), lr=0.1), BatchSampler(data, 32, seed=0), steps=3,
                     eval_data=(x, data.y))


def test_train_module_names_the_step_of_a_nan_loss():
    model, data = toy()
    calls = []

    def nan_at_4(out, y):
        calls.append(None)
        loss = F.cross_entropy(out, y)
        return loss * float("nan") if len(calls) == 5 else loss

    net = nn.Linear(8, 3)
    with pytest.raises(NonFiniteError, match="step 4 ") as err:
        train_module(net, torch.optim.SGD(net.parameters(), lr=0.1), BatchSampler(data, 32, seed=0), steps=8,
                     loss_fn=nan_at_4)
    assert err.value.step == 4


def test_a_nan_schedule_is_refused_at_its_step():
    model, data = toy()
    schedule = lambda t: float("nan") if t == 3 else 0.1  # noqa: E731
    with pytest.raises(ValueError, match="schedule returned nan at step 3"):
        train_flat(model, momentum(lr=schedule), BatchSampler(data, 32, seed=0), steps=6)
    with pytest.raises(ValueError, match=r"schedules\[1\] returned nan at step 3"):
        schedule_table([lambda t: 0.1, schedule], 6)
    # exponential growth overflows a float: refused with the step, not an OverflowError mid-run
    with pytest.raises(ValueError, match=r"schedules\[0\] returned inf at step 2"):
        schedule_table([exponential(1.0, 10.0 ** 200)], 3)
    with pytest.raises(ValueError, match="schedule returned inf at step 2"):
        train_flat(model, sgd(exponential(1.0, 10.0 ** 200)), BatchSampler(data, 32, seed=0), steps=3)


def test_a_diverging_lr_of_a_grid_is_recorded_and_scores_inf():
    model, data = toy()
    result = tune(Task(model, data, val=data, batch_size=32), {"SGD": sgd}, [0.1, 1e30], steps=5)
    assert result.best == {"SGD": 0.1} and result.scores("SGD")[1e30] == math.inf
    hist = train_flat(model, sgd(1e30), BatchSampler(data, 32, seed=0), steps=5, on_nonfinite="record")
    assert hist.extra["nonfinite_step"] <= 4


def test_finetune_raises_or_records_a_diverged_run():
    model, data = toy()
    task = FinetuneTask(model.flatten(), data, data, [0, 1, 2], 0)
    with pytest.raises(NonFiniteError, match="fine-tuning diverged"):
        finetune(model, sgd(1e30), task, steps=5, batch_size=32)
    hist = finetune(model, sgd(1e30), task, steps=5, batch_size=32, on_nonfinite="record")
    assert "nonfinite_step" in hist.extra


# ------------------------------------------------------------------------------------------ P-BFGS


def test_pbfgs_plus_names_the_step_and_plain_pbfgs_records_it():
    model, data = toy()
    space = random_subspace(model.dim, 4, origin=model.flatten(), seed=0)
    with pytest.raises(NonFiniteError, match="P-BFGS training diverged.*step 3 ") as err:
        train_pbfgs(model, pbfgs(space, plus=True), InfAt(data, 32, at=3), steps=6)
    assert err.value.step == 3
    # Without the P⁺ part a non-finite loss only fails the line search: finite weights, the step recorded.
    hist = train_pbfgs(model, pbfgs(space), InfAt(data, 32, at=3), steps=6)
    assert torch.isfinite(hist.theta).all() and hist.extra["nonfinite_step"] == 3


# -------------------------------------------------------------------------------------- population


def test_population_names_the_run_and_step_or_records_them():
    model, data = toy()
    thetas = model.flatten().expand(3, -1).clone()
    calls = []

    def inf_in_run_2_at_step_5(x, generator):
        calls.append(None)
        if len(calls) == 6:
            x = x.clone().view(3, 32, -1)
            x[2, 0, 0] = INF
            x = x.flatten(0, 1)
        return x

    kwargs = dict(thetas=thetas, steps=8, batch_size=32, augment=inf_in_run_2_at_step_5)
    with pytest.raises(NonFiniteError, match="run 2 .*step 5 ") as err:
        train_population(model, data, transform_rule(momentum(lr=0.1)), **kwargs)
    assert err.value.step == 5
    calls.clear()
    hist = train_population(model, data, transform_rule(momentum(lr=0.1)), on_nonfinite="record", **kwargs)
    assert hist.extra["nonfinite_step"] == [None, None, 5]
    assert torch.isfinite(hist.thetas[:2]).all()


def test_population_refuses_non_finite_data_before_work():
    model, data = toy()
    x = data.x.clone()
    x[7, 1] = float("nan")
    rule = Rule(lambda t: pytest.fail("work started"), None)
    with pytest.raises(ValueError, match=r"data\.x .*non-finite.*index \(7, 1\)"):
        train_population(model, ArrayData(x, data.y), rule, thetas=model.flatten()[None], steps=3, batch_size=32)


# ------------------------------------------------------------------------------------------- SL2O


def sl2o_problem(d=5):
    model, data = toy()
    space = random_subspace(model.dim, d, origin=model.flatten(), seed=0)
    return Problem(model, (data.x, data.y), 32, space, val=(data.x, data.y))


def test_sl2o_inf_batch_in_the_last_unroll_is_rolled_back_and_recorded():
    problem = sl2o_problem()
    batches, calls = problem.batches, []

    def inf_at_inner_step_15(generator, k):
        calls.append(None)
        x, y = batches(generator, k)
        if len(calls) == 16:
            x = x.clone()
            x[..., 0, 0] = INF
        return x, y

    problem.batches = inf_at_inner_step_15
    rule = LSTMRule(seed=0)
    history = meta_train(rule, problem, epochs=1, steps_per_task=20, unroll=10, select="final_val")
    assert finite(rule.state_dict().values())
    assert len(history.events) == 1 and history.events[0].step == 1 and "non-finite" in history.events[0].reason
    # The epoch is scored by what it ended with (the rolled-back rule run on the epoch's task), not
    # by the untrained start its refused last unroll restarted from.
    z = run_task(problem, rnnprop(rule), torch.Generator().manual_seed(0), steps=20, unroll=20, tasks=1,
                 first_order=True, on_unroll=lambda value, objective: True)
    ended = problem.model.evaluate(problem.lift(z[0]), *problem.val)["loss"]
    start = problem.model.evaluate(problem.lift(problem.start()[0]), *problem.val)["loss"]
    assert history.epoch_val_loss == [float(ended)] and float(ended) != float(start)


# ---------------------------------------------------------------------------------------- MLR-SNet


def mlrsnet_run(data, **kwargs):
    train, val = data.subset(torch.arange(192)), data.subset(torch.arange(192, 256))
    model = FlatModel(build_model("mlp", (8,), 3, seed=0, hidden=(16,)))
    return mlrsnet.meta_train(model, train, val, num_classes=3, batch_size=32, val_batch_size=32, desc=None,
                              eval_data=(data.x, data.y), **kwargs)


def test_mlrsnet_inf_batch_after_the_last_meta_step_is_rolled_back(monkeypatch):
    _, data = toy()
    monkeypatch.setattr(mlrsnet_meta_training, "BatchSampler",
                        lambda d, b, *, seed: InfAt(d, b, seed=seed, at=195 if seed == 0 else -1))
    res = mlrsnet_run(data, steps=200, t_val=100)
    h = res.history
    assert torch.isfinite(h.theta).all() and np.isfinite(h.test_loss).all()
    events = h.extra["guard_events"]
    assert [e[0] for e in events] == [195] and "non-finite training loss" in events[0][1]
    assert "rolled back to its state at step 100" in events[0][1]
    clean = mlrsnet_run(data, steps=100, t_val=100)
    assert torch.equal(h.theta, clean.history.theta)  # the state of the last good check (the meta-step)


def test_mlrsnet_gives_up_with_a_clear_error_when_it_keeps_diverging(monkeypatch):
    _, data = toy()

    class InfFrom(InfAt):
        def sample(self):
            self.calls += 1
            x, y = BatchSampler.sample(self)
            return (x.clone().fill_(INF) if self.calls > self.at else x), y

    monkeypatch.setattr(mlrsnet_meta_training, "BatchSampler", lambda d, b, *, seed: InfFrom(d, b, seed=seed,
                                                                               at=1 if seed == 0 else 10**9))
    with pytest.raises(NonFiniteError, match="non-finite at step 1 .*3 times in a row") as err:
        mlrsnet_run(data, steps=40, t_val=5, patience=3)
    assert err.value.step == 1


def test_mlrsnet_refuses_an_inf_training_example_before_work():
    _, data = toy()
    x = data.x.clone()
    x[100, 3] = INF
    with pytest.raises(ValueError, match=r"train\.x .*non-finite"):
        mlrsnet_run(ArrayData(x, data.y), steps=20, t_val=5)


# -------------------------------------------------------------------------------------------- NES


def test_nes_never_keeps_an_overflowed_step():
    # SGD at lr 1e37 on an estimate of size ~1 / sigma overflows float32: the generation must be refused.
    result = nes_train(torch.zeros(4), lambda members, t: -((members - 1) ** 2).sum(1), generations=3, pairs=2,
                       sigma=1e-3, optimizer="sgd", lr=1e37, desc=None)
    assert torch.isfinite(result.phi).all()
    assert [e["generation"] for e in result.events] == [0, 1, 2]
    assert all("non-finite" in e["reason"] for e in result.events)
