"""Every bad input to a public library function is refused with a ``ValueError`` that names the
argument, before any work starts (issue 20, item 6 and the library half of the bad-input table).

One table, one row per bad input: ``(id, call, match)``. ``call(env)`` makes the bad call on
tiny objects from :func:`env`; ``match`` is a regular expression that must name the parameter.
"Before work" is proved for every row by the same three spies: the network's forward never runs
(a forward pre-hook counts calls, and it also sees ``loss_and_grad``'s private copy of the
module), no linear algebra of DLDR / random subspaces runs (``torch.linalg.qr`` / ``eigh``
patched to count), and nothing is written under ``env.root`` (a fresh temporary directory).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import numpy as np

from l2o_lib import (corruptions, distill, finetuning, l3rs, landscape, meta, mlrsnet, pbfgs, population, runs, sl2o,
                     subspace, symbolic, tasks, training, tune)
from l2o_lib.config import check_seed
from l2o_lib.data import ArrayData, BatchSampler, load_dataset, random_quadratic, split_classes
from l2o_lib.functional import FlatModel
from l2o_lib.lora import lora_space
from l2o_lib.models import build_model
from l2o_lib.optim import get_optimizer, momentum, sgd
from l2o_lib.results import Run

WIDTH, CLASSES, N = 40, 10, 64


class _Spy:
    """Counts calls of the network's forward and of the subspace linear algebra."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def hook(self):
        """A forward pre-hook. A plain function, not a bound method: ``copy.deepcopy`` (which makes
        ``loss_and_grad``'s private module) would copy the spy along with a bound method."""
        calls = self.calls
        return lambda module, args: calls.append("forward")

    def wrap(self, name: str, fn):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)
        return counted


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Tiny, valid objects (a 40-input MLP, data that fits it, a subspace, a sampler) and the spies."""
    g = torch.Generator().manual_seed(0)
    module = build_model("mlp", (WIDTH,), CLASSES, hidden=(4,), seed=0)
    model = FlatModel(module)
    theta = model.flatten()
    x, y = torch.randn(N, WIDTH, generator=g), torch.randint(CLASSES, (N,), generator=g)
    data = ArrayData(x, y)
    narrow = ArrayData(torch.randn(N, WIDTH - 1, generator=g), y)
    space = subspace.random_subspace(model.dim, 3, origin=theta, seed=0)
    spy = _Spy()
    module.register_forward_pre_hook(spy.hook())
    for name in ("qr", "eigh"):
        monkeypatch.setattr(torch.linalg, name, spy.wrap(name, getattr(torch.linalg, name)))
    root = tmp_path / "root"
    root.mkdir()
    return SimpleNamespace(model=model, module=module, theta=theta, x=x, y=y, data=data, narrow=narrow,
                           space=space, sampler=BatchSampler(data, 8, seed=0),
                           narrow_sampler=BatchSampler(narrow, 8, seed=0), spy=spy, root=root,
                           problem=lambda **kw: sl2o.Problem(model, kw.pop("train", (x, y)), 8, space, **kw))


def _task(env, data):
    return finetuning.FinetuneTask(env.theta, data, data, [0, 1], 0)


def _population_losses(env, task):
    config = l3rs.L3RSConfig(n_layers=len(env.model.segments()))
    return l3rs.population_losses(env.model, l3rs.init_phi(config)[None], config, task, steps=2, batch_size=8)


def _mlrs(env, **kw):
    args = dict(train=env.data, val=env.data, steps=4, num_classes=CLASSES, batch_size=8, val_batch_size=8,
                hidden=4, snapshots=1, desc=None)
    args.update(kw)
    return mlrsnet.meta_train(env.model, args.pop("train"), args.pop("val"), **args)


def _nes(**kw):
    args = dict(generations=2, pairs=2, desc=None)
    args.update(kw)
    return meta.nes_train(torch.zeros(3), lambda members, t: -members.square().sum(1), **args)


def _population(env, **kw):
    args = dict(thetas=env.theta.expand(2, -1).clone(), steps=2, batch_size=8)
    args.update(kw)
    return population.train_population(env.model, args.pop("data", env.data),
                                       population.transform_rule(momentum(lr=0.1)), **args)


def _plane(env):
    return landscape.Plane(env.theta, torch.ones_like(env.theta), -torch.ones_like(env.theta))


_F64 = torch.float64
_CASES = [
    # ------------------------------------------------------------------ FlatModel (functional)
    ("loss_and_grad theta wrong size", lambda e: e.model.loss_and_grad(e.theta[:-1], (e.x, e.y)), r"theta.*\(\d+,\)"),
    ("loss_and_grad theta float64", lambda e: e.model.loss_and_grad(e.theta.double(), (e.x, e.y)), r"theta.*float32"),
    ("loss_and_grad theta long", lambda e: e.model.loss_and_grad(e.theta.long(), (e.x, e.y)), r"theta.*float32"),
    ("loss_and_grad theta other device", lambda e: e.model.loss_and_grad(e.theta.to("meta"), (e.x, e.y)),
     r"theta.*device"),
    ("loss_and_grad theta not a tensor", lambda e: e.model.loss_and_grad(e.theta.tolist(), (e.x, e.y)), r"theta"),
    ("loss_and_grad x too narrow", lambda e: e.model.loss_and_grad(e.theta, (e.narrow.x, e.y)), r"x.*\(N, 40\)"),
    ("loss_and_grad float labels", lambda e: e.model.loss_and_grad(e.theta, (e.x, e.y.float())), r"y.*long"),
    ("loss_and_grad x float64", lambda e: e.model.loss_and_grad(e.theta, (e.x.double(), e.y)), r"x.*float32"),
    ("loss_and_grad x, y lengths differ", lambda e: e.model.loss_and_grad(e.theta, (e.x, e.y[:-1])),
     r"same number of examples"),
    ("loss_and_grad batch not a pair", lambda e: e.model.loss_and_grad(e.theta, e.x), r"batch"),
    ("loss theta float64", lambda e: e.model.loss(e.theta.double(), (e.x, e.y)), r"theta.*float32"),
    ("loss x too narrow", lambda e: e.model.loss(e.theta, (e.narrow.x, e.y)), r"x.*\(N, 40\)"),
    ("apply theta wrong size", lambda e: e.model.apply(e.theta[1:], e.x), r"theta"),
    ("apply x too narrow", lambda e: e.model.apply(e.theta, e.narrow.x), r"x.*\(N, 40\)"),
    ("evaluate x too narrow", lambda e: e.model.evaluate(e.theta, e.narrow.x, e.y), r"x.*\(N, 40\)"),
    ("evaluate float labels", lambda e: e.model.evaluate(e.theta, e.x, e.y.float()), r"y.*long"),
    ("evaluate theta long", lambda e: e.model.evaluate(e.theta.long(), e.x, e.y), r"theta.*float32"),
    ("evaluate batch_size 0", lambda e: e.model.evaluate(e.theta, e.x, e.y, batch_size=0), r"batch_size"),
    ("batched_evaluate x too narrow", lambda e: e.model.batched_evaluate(e.theta.expand(2, -1), e.narrow.x, e.y),
     r"x.*\(N, 40\)"),
    ("FlatModel not a module", lambda e: FlatModel("mlp"), r"module"),
    ("FlatModel bad input_shape", lambda e: FlatModel(e.module, input_shape=(0,)), r"input_shape"),
    # ------------------------------------------------------------------ training loops
    ("train_flat sampler too narrow", lambda e: training.train_flat(e.model, sgd(), e.narrow_sampler, steps=2),
     r"sampler.*\(N, 40\)"),
    ("train_flat eval_data too narrow", lambda e: training.train_flat(
        e.model, sgd(), e.sampler, steps=2, eval_data=(e.narrow.x, e.y)), r"eval_data.*\(N, 40\)"),
    ("train_flat eval_data float labels", lambda e: training.train_flat(
        e.model, sgd(), e.sampler, steps=2, eval_data=(e.x, e.y.float())), r"eval_data.*long"),
    ("train_flat float labels", lambda e: training.train_flat(
        e.model, sgd(), BatchSampler(ArrayData(e.x, e.y.float()), 8), steps=2), r"sampler.*long"),
    ("train_flat theta float64", lambda e: training.train_flat(e.model, sgd(), e.sampler, steps=2,
                                                               theta=e.theta.double()), r"theta.*float32"),
    ("train_flat steps 0", lambda e: training.train_flat(e.model, sgd(), e.sampler, steps=0), r"steps"),
    ("train_module eval_data too narrow", lambda e: training.train_module(
        e.module, torch.optim.SGD(e.module.parameters(), lr=0.1), e.sampler, steps=2, eval_data=(e.narrow.x, e.y)),
     r"eval_data.*\(N, 40\)"),
    ("train_module sampler too narrow", lambda e: training.train_module(
        e.module, torch.optim.SGD(e.module.parameters(), lr=0.1), e.narrow_sampler, steps=2), r"sampler.*\(N, 40\)"),
    ("tune float seed", lambda e: tune.tune(tasks.Task(e.model, e.data, val=e.data, batch_size=8), {"sgd": sgd},
                                            [0.1], steps=2, seeds=[0.5]), r"seeds.*integer"),
    ("tune task without a validation split", lambda e: tune.tune(tasks.Task(e.model, e.data, test=e.data, batch_size=8),
                                                                 {"sgd": sgd}, [0.1], steps=2), r"validation.*n_val"),
    ("run float seed", lambda e: runs.run(tasks.Task(e.model, e.data, batch_size=8), sgd(), steps=2, seeds=[0.5]),
     r"seeds.*integer"),
    ("Task eval split too narrow", lambda e: tasks.Task(e.model, e.data, val=e.narrow), r"val.*\(N, 40\)"),
    ("run seeds not a sequence", lambda e: runs.run(tasks.Task(e.model, e.data, batch_size=8), sgd(), steps=2, seeds=3),
     r"seeds.*sequence"),
    ("run empty seeds", lambda e: runs.run(tasks.Task(e.model, e.data, batch_size=8), sgd(), steps=2, seeds=[]), r"seeds"),
    # ------------------------------------------------------------------ data
    ("load_dataset unknown name", lambda e: load_dataset("mnist2d", root=e.root), r"dataset.*mnist1d"),
    ("load_dataset n_train 0", lambda e: load_dataset("mnist1d", root=e.root, n_train=0), r"n_train"),
    ("load_dataset float seed", lambda e: load_dataset("mnist1d", root=e.root, seed=0.5), r"seed"),
    ("load_dataset bool seed", lambda e: load_dataset("mnist1d", root=e.root, seed=True), r"seed"),
    ("load_dataset unknown option", lambda e: load_dataset("mnist1d", root=e.root, dim=3), r"option.*dim"),
    ("load_dataset unknown device", lambda e: load_dataset("mnist1d", root=e.root, device="tpu"), r"device"),
    ("load_dataset logistic dim 0", lambda e: load_dataset("logistic", root=e.root, dim=0), r"dim"),
    ("BatchSampler batch_size 0", lambda e: BatchSampler(e.data, 0), r"batch_size"),
    ("BatchSampler batch_size > split", lambda e: BatchSampler(e.data, N + 1), r"batch_size"),
    ("BatchSampler negative seed", lambda e: BatchSampler(e.data, 8, seed=-1), r"seed"),
    ("ArrayData lengths differ", lambda e: ArrayData(e.x, e.y[:-1]), r"same length"),
    ("random_quadratic cond < 1", lambda e: random_quadratic(4, cond=0.5), r"cond"),
    ("split_classes n_source too big", lambda e: split_classes(10, 10), r"n_source"),
    # ------------------------------------------------------------------ models
    ("build_model unknown", lambda e: build_model("mlpp", (WIDTH,), CLASSES), r"model.*mlp"),
    ("build_model input_shape 0", lambda e: build_model("mlp", (0,), CLASSES), r"input_shape"),
    ("build_model image model on signals", lambda e: build_model("resnet20", (WIDTH,), CLASSES), r"input_shape"),
    ("build_model float seed", lambda e: build_model("mlp", (WIDTH,), CLASSES, seed=0.5), r"seed"),
    ("build_model one class", lambda e: build_model("mlp", (WIDTH,), 1), r"num_classes"),
    # ------------------------------------------------------------------ optim
    ("sgd negative lr", lambda e: get_optimizer("sgd", lr=-0.1), r"lr"),
    ("adam beta 1.5", lambda e: get_optimizer("adam", betas=(1.5, 0.9)), r"beta"),
    ("momentum 1.5", lambda e: get_optimizer("momentum", momentum=1.5), r"momentum"),
    ("unknown optimizer", lambda e: get_optimizer("adamm"), r"optimizer.*adam"),
    # ------------------------------------------------------------------ subspace
    ("random_subspace float seed", lambda e: subspace.random_subspace(10, 3, seed=0.5), r"seed.*integer"),
    ("random_subspace d 0", lambda e: subspace.random_subspace(10, 0), r"\bd\b"),
    ("random_subspace d > D", lambda e: subspace.random_subspace(10, 11), r"\bd\b"),
    ("dldr on a list", lambda e: subspace.dldr([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]], 1), r"checkpoints.*list"),
    ("dldr d > checkpoints - 1", lambda e: subspace.dldr(torch.randn(4, 10), 4), r"\bd=4"),
    ("dldr d 0", lambda e: subspace.dldr(torch.randn(4, 10), 0), r"\bd\b"),
    ("sample_trajectory every > steps", lambda e: subspace.sample_trajectory(
        e.model, sgd(), e.sampler, steps=2, every=3), r"every"),
    # ------------------------------------------------------------------ pbfgs
    ("pbfgs c 1.5", lambda e: pbfgs.pbfgs(e.space, c=1.5), r"\bc\b"),
    ("pbfgs beta 0", lambda e: pbfgs.pbfgs(e.space, beta=0.0), r"beta"),
    ("pbfgs not a subspace", lambda e: pbfgs.pbfgs(e.theta), r"subspace"),
    ("train_pbfgs sampler too narrow", lambda e: pbfgs.train_pbfgs(
        e.model, pbfgs.pbfgs(e.space), e.narrow_sampler, steps=2), r"sampler.*\(N, 40\)"),
    ("train_pbfgs eval_data float labels", lambda e: pbfgs.train_pbfgs(
        e.model, pbfgs.pbfgs(e.space), e.sampler, steps=2, eval_data=(e.x, e.y.float())), r"eval_data.*long"),
    # ------------------------------------------------------------------ sl2o
    ("Problem x, y lengths differ", lambda e: e.problem(train=(e.x, e.y[:-3])), r"train.*same number"),
    ("Problem float64 inputs", lambda e: e.problem(train=(e.x.double(), e.y)), r"train.*float32"),
    ("Problem inputs too narrow", lambda e: e.problem(train=(e.narrow.x, e.y)), r"train.*\(N, 40\)"),
    ("Problem float labels", lambda e: e.problem(train=(e.x, e.y.float())), r"train.*long"),
    ("Problem val too narrow", lambda e: e.problem(val=(e.narrow.x, e.y)), r"val.*\(N, 40\)"),
    ("Problem theta0 float64", lambda e: e.problem(theta0=e.theta.double()), r"theta.*float32"),
    ("Problem train not a pair", lambda e: e.problem(train=e.data), r"train"),
    ("sl2o meta_train float seed", lambda e: sl2o.meta_train(sl2o.LSTMRule(), e.problem(), epochs=1,
                                                             steps_per_task=2, unroll=1, seed=0.5), r"seed.*integer"),
    ("sl2o meta_train unroll > steps", lambda e: sl2o.meta_train(sl2o.LSTMRule(), e.problem(), epochs=1,
                                                                 steps_per_task=2, unroll=3), r"unroll"),
    ("sl2o meta_gradient not a Problem", lambda e: sl2o.meta_gradient(sl2o.LSTMRule(), (e.x, e.y)), r"problem"),
    ("sl2o meta_gradient float seed", lambda e: sl2o.meta_gradient(sl2o.LSTMRule(), e.problem(), seed=0.5),
     r"seed.*integer"),
    ("LSTMRule float seed", lambda e: sl2o.LSTMRule(seed=0.5), r"seed.*integer"),
    # ------------------------------------------------------------------ mlrsnet
    ("mlrsnet eval_data too narrow", lambda e: _mlrs(e, eval_data=(e.narrow.x, e.y)), r"eval_data.*\(N, 40\)"),
    ("mlrsnet train too narrow", lambda e: _mlrs(e, train=e.narrow), r"train.*\(N, 40\)"),
    ("mlrsnet val float labels", lambda e: _mlrs(e, val=ArrayData(e.x, e.y.float())), r"val.*long"),
    ("mlrsnet float seed", lambda e: _mlrs(e, seed=0.5), r"seed"),
    ("mlrsnet snapshots > steps", lambda e: _mlrs(e, snapshots=5), r"snapshots"),
    ("mlrsnet theta float64", lambda e: _mlrs(e, theta=e.theta.double()), r"theta.*float32"),
    ("MLRSNet hidden 0", lambda e: mlrsnet.MLRSNet(0), r"hidden"),
    ("corrupt unknown kind", lambda e: corruptions.corrupt(load_dataset("logistic", root=e.root, n_train=8, n_test=8),
                                                       "fog", 1.0), r"kind.*noise"),
    ("split_validation n_val too big", lambda e: mlrsnet.split_validation(e.data, N), r"n_val"),
    # ------------------------------------------------------------------ l3rs and NES
    ("L3RSConfig n_layers 0", lambda e: l3rs.L3RSConfig(n_layers=0), r"n_layers"),
    ("L3RSConfig unknown base", lambda e: l3rs.L3RSConfig(n_layers=2, bases=("sgd", "adagrad")), r"bases"),
    ("init_phi float seed", lambda e: l3rs.init_phi(l3rs.L3RSConfig(n_layers=4), seed=0.5), r"seed"),
    ("l3rs total_steps 0", lambda e: l3rs.l3rs(l3rs.init_phi(l3rs.L3RSConfig(n_layers=4)), l3rs.L3RSConfig(n_layers=4),
                                               total_steps=0, segments=e.model.segments()), r"total_steps"),
    ("finetune task too narrow", lambda e: finetuning.finetune(e.model, sgd(), _task(e, e.narrow), steps=2),
     r"task.*\(N, 40\)"),
    ("population_losses task too narrow", lambda e: _population_losses(e, _task(e, e.narrow)), r"task.*\(N, 40\)"),
    ("compare_methods float seed", lambda e: l3rs.compare_methods(None, {"sgd": sgd}, seeds=[0.5], steps=2),
     r"seeds.*integer"),
    ("tune_baselines float seed", lambda e: l3rs.tune_baselines(None, {"sgd": sgd}, [0.1], seeds=[1.5], steps=2),
     r"seeds.*integer"),
    ("nes_train pairs 0", lambda e: _nes(pairs=0), r"pairs"),
    ("nes_train negative sigma", lambda e: _nes(sigma=-0.1), r"sigma"),
    ("nes_train unknown optimizer", lambda e: _nes(optimizer="lbfgs"), r"optimizer"),
    ("nes_train float seed", lambda e: _nes(seed=0.5), r"seed"),
    ("antithetic_noise negative seed", lambda e: meta.antithetic_noise(2, 3, seed=-1, generation=0), r"seed"),
    ("nes_estimate float seed", lambda e: meta.nes_estimate(torch.zeros(3), lambda m: m.sum(1), pairs=2, sigma=0.1,
                                                            seed=0.5), r"seed.*integer"),
    # ------------------------------------------------------------------ population
    ("train_population data too narrow", lambda e: _population(e, data=e.narrow), r"data.*\(N, 40\)"),
    ("train_population eval_data float labels", lambda e: _population(e, eval_data=(e.x, e.y.float())),
     r"eval_data.*long"),
    ("train_population thetas float64", lambda e: _population(e, thetas=e.theta.double().expand(2, -1)),
     r"theta.*float32"),
    ("train_population batch_size > data", lambda e: _population(e, batch_size=N + 1), r"batch_size"),
    ("train_population float seed", lambda e: _population(e, seed=0.5), r"seed"),
    # ------------------------------------------------------------------ results.Run
    ("Run name with a separator", lambda e: Run("a/b", root=e.root), r"name"),
    ("Run empty name", lambda e: Run("", root=e.root), r"name"),
    ("Run bad resume", lambda e: Run("r", root=e.root, resume="yes"), r"resume"),
    ("Run params not a dict", lambda e: Run("r", root=e.root, params=[1, 2]), r"params"),
    # ------------------------------------------------------------------ landscape and LoRA
    ("random_plane float seed", lambda e: landscape.random_plane(e.model, e.theta, seed=0.5), r"seed"),
    ("grid resolution 1", lambda e: landscape.grid(e.model, _plane(e), e.x, e.y, resolution=1), r"resolution"),
    ("grid bad span", lambda e: landscape.grid(e.model, _plane(e), e.x, e.y, span=(1, -1, 0, 1)), r"span"),
    ("grid x too narrow", lambda e: landscape.grid(e.model, _plane(e), e.narrow.x, e.y, resolution=2),
     r"x.*\(N, 40\)"),
    ("interpolate float labels", lambda e: landscape.interpolate(e.model, e.theta, e.theta, (e.x, e.y.float()),
                                                                 steps=2), r"y.*long"),
    ("interpolate steps 1", lambda e: landscape.interpolate(e.model, e.theta, e.theta, (e.x, e.y), steps=1),
     r"steps"),
    ("lora_space rank 0", lambda e: lora_space(e.model, rank=0), r"rank"),
    ("lora_space float seed", lambda e: lora_space(e.model, seed=0.5), r"seed"),
    ("Samples.subsample float seed", lambda e: distill.Samples(np.zeros((4, 2)), np.zeros(4), ("a", "b"), "lr")
     .subsample(2, seed=0.5), r"seed.*integer"),
    ("symbolic.fit float seed", lambda e: symbolic.fit(np.zeros((4, 2)), np.zeros(4), ("a", "b"), seed=0.5),
     r"seed"),
    # ------------------------------------------------------------------ the shared helper itself
    ("check_seed float", lambda e: check_seed("seed", 0.5), r"seed.*integer"),
    ("check_seed bool", lambda e: check_seed("seed", True), r"seed.*integer"),
    ("check_seed negative", lambda e: check_seed("seed", -1), r"seed.*>= 0"),
]


@pytest.mark.parametrize("call, match", [pytest.param(c, m, id=i) for i, c, m in _CASES])
def test_bad_input_is_refused_before_work(env, call, match):
    with pytest.raises(ValueError, match=match):
        call(env)
    assert env.spy.calls == [], f"work started before the refusal: {env.spy.calls}"
    assert not any(env.root.iterdir()), "a file was written before the refusal"


def test_table_is_large_and_ids_are_unique():
    ids = [i for i, _, _ in _CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 50


def test_good_inputs_still_pass_the_checks(env):
    """The checks refuse only what is wrong: the same calls with good inputs do the work."""
    loss, grad = env.model.loss_and_grad(env.theta, (env.x, env.y))
    assert grad.shape == env.theta.shape and torch.isfinite(loss)
    assert env.spy.calls == ["forward"]
    assert check_seed("seed", 3) == 3
    sl2o.Problem(env.model, (env.x, env.y), 8, env.space, val=(env.x, env.y))
