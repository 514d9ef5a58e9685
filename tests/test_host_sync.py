"""No host synchronisation inside the inner loops (DESIGN: no ``.item()`` / ``float(t)`` / ``.cpu()``
per step), checked on the CPU: every way a tensor's value reaches Python is counted while a loop
runs, and the count must not grow with the number of steps. On a GPU each of them would block on the
device; here they are just calls, so the property is testable without one."""

import pytest
import torch

from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.finetuning import FinetuneTask
from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import L3RSConfig, init_phi, population_losses
from l2o_lib.mlrsnet import meta_train as mlrsnet_meta_train
from l2o_lib.models import build_model
from l2o_lib.optim import momentum
from l2o_lib.population import train_population, transform_rule
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.runs import run
from l2o_lib.sl2o import Problem, run_task
from l2o_lib.subspace import random_subspace
from l2o_lib.tasks import Task
from l2o_lib.training import train_flat

SYNCING = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def count_syncs(monkeypatch):
    """``count_syncs(fn)`` runs ``fn`` and returns how many times a tensor value went to the host."""

    def run(fn):
        calls = []
        for name in SYNCING:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):
                calls.append(_name)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        try:
            fn()
        finally:
            monkeypatch.undo()
        return calls

    return run


def _toy():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 8, generator=g), torch.randint(3, (256,), generator=g)
    return FlatModel(build_model("mlp", (8,), 3, seed=0, hidden=(16,))), ArrayData(x, y)


def _same_for(count_syncs, loop, short=4, long=12):
    a, b = count_syncs(lambda: loop(short)), count_syncs(lambda: loop(long))
    assert len(a) == len(b), f"{len(b) - len(a)} more host syncs over {long - short} more steps: {b}"


def test_train_flat_loop_has_no_per_step_sync(count_syncs):
    model, data = _toy()
    _same_for(count_syncs, lambda n: train_flat(model, momentum(lr=0.1), BatchSampler(data, 32, seed=0), steps=n))


def test_population_loop_has_no_per_step_sync(count_syncs):
    model, data = _toy()
    thetas = model.flatten().expand(3, -1).clone()
    rule = transform_rule(momentum(lr=0.1))
    _same_for(count_syncs, lambda n: train_population(model, data, rule, thetas=thetas, steps=n, batch_size=32))


@pytest.mark.parametrize("vectorize", [False, True])
def test_run_engine_has_no_per_step_sync(count_syncs, vectorize):
    model, data = _toy()
    task = Task(model, data, val=data.subset(torch.arange(64)), test=data.subset(torch.arange(64, 128)), batch_size=32)
    _same_for(count_syncs, lambda n: run(task, momentum(lr=0.1), steps=n, seeds=[0, 1], eval_every=4,
                                         vectorize=vectorize))


def test_sl2o_meta_training_inner_steps_do_not_sync(count_syncs):
    model, data = _toy()
    space = random_subspace(model.dim, 5, origin=model.flatten(), seed=0)
    problem = Problem(model, (data.x, data.y), 32, space)
    transform = rnnprop(LSTMRule(seed=0), differentiable=True)

    def loop(n):  # one unroll of n steps: the only meta-step (and guard check) is at its end
        gen = torch.Generator().manual_seed(0)
        run_task(problem, transform, gen, steps=n, unroll=n, tasks=1, first_order=True,
                 on_unroll=lambda value, objective: objective.backward() is None)

    _same_for(count_syncs, loop)


def test_mlrsnet_steps_between_meta_updates_do_not_sync(count_syncs):
    model, data = _toy()
    train, val = data.subset(torch.arange(192)), data.subset(torch.arange(192, 256))
    # t_val larger than the run: one meta-update (at step 0) however long the run is
    _same_for(count_syncs, lambda n: mlrsnet_meta_train(model, train, val, steps=n, num_classes=3, t_val=100,
                                                         batch_size=32, val_batch_size=32, desc=None))


def test_l3rs_population_fitness_does_not_sync(count_syncs):
    model, data = _toy()
    config = L3RSConfig(n_layers=len(model.segments()))
    phis = init_phi(config, seed=0).expand(4, -1).clone()
    task = FinetuneTask(model.flatten(), data, data, [0, 1, 2], 0)
    _same_for(count_syncs, lambda n: population_losses(model, phis, config, task, steps=n, batch_size=32))


def test_the_counter_catches_a_per_step_sync(count_syncs):
    model, data = _toy()

    def loop(n):  # what the checks above must catch: a float() of the loss every step
        train_flat(model, momentum(lr=0.1), BatchSampler(data, 32, seed=0), steps=n,
                   on_step=lambda k, theta: float(theta.sum()))

    with pytest.raises(AssertionError, match="more host syncs"):
        _same_for(count_syncs, loop)
