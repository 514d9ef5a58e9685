"""MLR-SNet: the γ bound and its guards, the schedule network, the torch.optim scheduler, the exact
look-ahead meta-gradient, meta-training (guard rollback, resume, a real learning signal),
hypergradient descent, corruptions, the population trainer and argument validation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_lib.corruptions import corrupt
from l2o_lib.data import ArrayData, Dataset
from l2o_lib.functional import FlatModel
from l2o_lib.mlrsnet import (LRCarry, MLRSNet, MLRSNetScheduler, TrainedSchedule, baseline_configs,
                             compare_schedules, gamma_bound, hand_schedule, lookahead_meta_loss, meta_train,
                             mlrsnet_lr, mlrsnet_lr_reference, mlrsnet_rule, snapshot_index, snapshot_steps,
                             split_validation)
from l2o_lib.optim import hypergradient_sgd, momentum
from l2o_lib.population import mixed_rule, train_population, transform_rule
from l2o_lib.results import Run

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed=0, dtype=torch.float32, hidden=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)).to(dtype)


def constant_net(p_logit: float, hidden=8) -> MLRSNet:
    """A network whose output σ(b3) ignores its input."""
    net = MLRSNet(hidden, seed=0)
    with torch.no_grad():
        net.out.weight.zero_()
        net.out.bias.fill_(p_logit)
    return net


# ------------------------------------------------------------------------------------- γ bound
def test_gamma_matches_paper_formula_where_defined():
    for f0, c in [(math.log(10), 10), (math.log(100), 100), (1.7, 10), (0.5, 100)]:
        paper = math.sqrt(f0) * math.log(abs(f0 * c)) / (4 * c ** 0.25)
        assert gamma_bound(f0, c) == pytest.approx(paper, rel=1e-12)
    assert gamma_bound(math.log(10), 10) == pytest.approx(0.6691, abs=1e-4)


def test_gamma_guards_degenerate_cases():
    c = 10
    # f0·C = 1: the paper's γ is 0 (training would stop); the floor keeps it positive.
    assert gamma_bound(0.1, c) == pytest.approx(math.sqrt(0.1) / (4 * c ** 0.25))
    # f0·C < 1: the paper's γ is negative (ascent); ours stays positive.
    assert gamma_bound(0.01, c) > 0
    # f0 <= 0 or non-finite: the uniform-prediction loss log C stands in.
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        assert gamma_bound(bad, c) == pytest.approx(gamma_bound(math.log(c), c))
    f0 = torch.tensor([math.log(10), 0.1, 0.01, 0.0, -2.0, float("nan")])
    got = gamma_bound(f0, c)
    want = [gamma_bound(float(v), c) for v in f0]
    assert torch.allclose(got, torch.tensor(want, dtype=got.dtype))
    assert (got > 0).all()


# ------------------------------------------------------------------------------ the network
def test_functional_core_matches_readable_equations_and_stays_in_bounds():
    net = MLRSNet(12, seed=3)
    params = net.params()
    carry = LRCarry(torch.randn(5, 12), torch.randn(5, 12))
    loss = torch.tensor([2.3, 1.0, 0.1, 5.0, 0.0])
    lr, c1 = mlrsnet_lr(params, loss, carry, 0.7)
    ref, c2 = mlrsnet_lr_reference(params, loss, carry, 0.7)
    assert torch.allclose(lr, ref, atol=1e-6) and torch.allclose(c1.h, c2.h, atol=1e-6)
    assert torch.allclose(c1.c, c2.c, atol=1e-6)
    assert lr.shape == (5,) and ((lr > 0) & (lr < 0.7)).all()
    single, _ = mlrsnet_lr(params, loss[1], LRCarry(carry.h[1], carry.c[1]), 0.7)  # unbatched
    assert torch.allclose(single, lr[1], atol=1e-6)


def test_initial_lr_near_half_gamma():
    net = MLRSNet(seed=0)
    with torch.no_grad():
        lr, _ = net(torch.tensor(2.3), net.init_carry(), 1.0)
    assert 0.3 < float(lr) < 0.7


# ---------------------------------------------------------------------------- the scheduler
def test_scheduler_with_constant_network_equals_fixed_lr_sgd(digits_split):
    train, _ = digits_split
    batches = [(train.x[i:i + 64], train.y[i:i + 64]) for i in range(0, 640, 64)]
    schedule = TrainedSchedule([constant_net(0.4).state_dict()], hidden=8)

    def run(scheduled, fixed_lr=None):
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=fixed_lr or 1.0, momentum=0.9, weight_decay=5e-4)
        sched = MLRSNetScheduler(opt, schedule, total_steps=len(batches), gamma=0.5) if scheduled else None
        lrs = []
        for x, y in batches:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            if sched is not None:
                lrs.append(sched.step(loss))
            opt.step()
        return model, lrs

    scheduled, lrs = run(True)
    assert all(torch.equal(lrs[0], v) for v in lrs)
    fixed, _ = run(False, fixed_lr=float(lrs[0]))
    assert float(lrs[0]) == pytest.approx(0.5 * torch.sigmoid(torch.tensor(0.4)).item())
    for a, b in zip(scheduled.parameters(), fixed.parameters()):
        assert torch.equal(a, b)


def test_scheduler_switches_snapshots_at_thirds():
    snaps = [constant_net(v).state_dict() for v in (2.0, 0.0, -2.0)]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = MLRSNetScheduler(opt, TrainedSchedule(snaps, hidden=8), total_steps=9, num_classes=10, as_float=True)
    lrs = [float(sched.step(torch.tensor(2.0))) for _ in range(9)]
    assert isinstance(opt.param_groups[0]["lr"], float)
    assert lrs[0] == lrs[2] > lrs[3] == lrs[5] > lrs[6] == lrs[8]
    assert sched.gamma == pytest.approx(gamma_bound(2.0, 10))
    assert [snapshot_index(t, 9, 3) for t in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert snapshot_steps(10, 3) == [4, 7, 10]


# ------------------------------------------------------------------------- meta-gradient
def test_lookahead_meta_gradient_matches_finite_differences(digits_split):
    train, _ = digits_split
    model = FlatModel(mlp(dtype=F64, hidden=8))
    theta = model.flatten()
    x, y = train.x[:64].to(F64), train.y[:64]
    loss, grad = model.loss_and_grad(theta, (x, y))
    direction = grad + 0.1 * torch.randn_like(grad, dtype=F64)
    val = (train.x[64:192].to(F64), train.y[64:192])
    net = MLRSNet(6, seed=1).to(F64)
    carry = LRCarry(torch.randn(6, dtype=F64) * 0.3, torch.randn(6, dtype=F64) * 0.3)
    names = list(net.params())

    def meta(values):
        return lookahead_meta_loss(model, dict(zip(names, values)), loss, carry, 0.9, theta, direction, val)

    values = [p.detach().clone().requires_grad_(True) for p in net.params().values()]
    grads = torch.autograd.grad(meta(values), values)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = [torch.randn(p.shape, generator=g, dtype=F64) for p in values]
        eps = 1e-5
        plus = meta([p.detach() + eps * d for p, d in zip(values, v)])
        minus = meta([p.detach() - eps * d for p, d in zip(values, v)])
        fd = (plus - minus) / (2 * eps)
        analytic = sum((a * d).sum() for a, d in zip(grads, v))
        assert float(analytic) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)
    assert sum(float(a.abs().sum()) for a in grads) > 0


# ------------------------------------------------------------------------- meta-training
def _small_run(digits_split, **kwargs):
    train, test = digits_split
    tr, va = split_validation(train, 200, seed=0)
    model = FlatModel(mlp())
    args = dict(steps=60, num_classes=10, t_val=5, batch_size=64, val_batch_size=64, hidden=8, seed=0,
                eval_data=(test.x, test.y), eval_every=30, desc=None)
    args.update(kwargs)
    return meta_train(model, tr, va, **args)


def test_meta_training_learns_to_lower_a_too_large_lr(digits_split):
    # SGD with momentum 0.9 at γ/2 ≈ 0.36 overshoots on this MLP; the look-ahead must teach the net to go lower.
    res = _small_run(digits_split, steps=150, t_val=1, meta_lr=1e-2, momentum=0.9)
    h = res.history
    assert np.isfinite(h.train_loss).all() and not h.extra["guard_events"]
    assert res.lrs[-30:].mean() < 0.7 * res.lrs[:10].mean()
    assert h.extra["meta_loss"][-20:].mean() < h.extra["meta_loss"][0]
    assert h.test_loss[-1] < h.test_loss[0]
    assert len(res.schedule) == 3 and res.schedule.info["snapshot_steps"] == [50, 100, 150]


def test_guard_rolls_back_an_injected_nan(digits_split):
    def fault(step, meta_loss):
        return meta_loss * float("nan") if step == 20 else meta_loss

    res = _small_run(digits_split, fault=fault)
    events = res.history.extra["guard_events"]
    assert [e[0] for e in events] == [20] and "non-finite" in events[0][1]
    assert torch.isfinite(res.history.theta).all()
    assert all(torch.isfinite(p).all() for p in res.net.parameters())
    assert 20 not in res.history.extra["meta_steps"] and 25 in res.history.extra["meta_steps"]
    assert np.isnan(res.history.train_loss[20]) and np.isfinite(np.delete(res.history.train_loss, 20)).all()


def test_resume_reproduces_an_uninterrupted_run(digits_split, tmp_path):
    whole = _small_run(digits_split, steps=40, t_val=2)

    class Crash(Exception):
        pass

    def crash(step, meta_loss):
        if step == 26:
            raise Crash
        return meta_loss

    params = {"case": "resume"}
    with pytest.raises(Crash):
        _small_run(digits_split, steps=40, t_val=2, run=Run("m", root=tmp_path, params=params), checkpoint_every=10,
                   fault=crash)
    resumed = _small_run(digits_split, steps=40, t_val=2, run=Run("m", root=tmp_path, params=params), checkpoint_every=10)
    assert resumed.history.extra["resumed_at"] == 20
    assert torch.equal(resumed.history.theta, whole.history.theta)
    np.testing.assert_array_equal(resumed.lrs, whole.lrs)
    np.testing.assert_array_equal(resumed.history.test_accuracy, whole.history.test_accuracy)
    for a, b in zip(resumed.schedule.snapshots, whole.schedule.snapshots):
        assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------- hypergradient descent
def test_hypergradient_descent():
    theta = torch.randn(20)
    grad = torch.randn(20)
    hd = hypergradient_sgd(0.05, 1e-12, momentum=0.9)
    ref = momentum(lr=0.05, momentum=0.9)
    s1, s2 = hd.init(theta), ref.init(theta)
    for step in range(3):
        d1, s1 = hd.update(grad, s1, theta, step)
        d2, s2 = ref.update(grad, s2, theta, step)
        assert torch.allclose(d1, d2, atol=1e-8)
    # Gradients that keep pointing the same way mean the LR is too small: HD raises it.
    hd = hypergradient_sgd(0.01, 1e-3, momentum=0.0)
    s = hd.init(theta)
    for step in range(5):
        _, s = hd.update(torch.ones(20), s, theta, step)
    assert float(s.lr) == pytest.approx(0.01 + 4 * 1e-3 * 20)
    batched = hypergradient_sgd(torch.tensor([[0.01], [0.02]]), 1e-3).init(torch.zeros(2, 5))
    assert batched.lr.shape == (2, 1)


# ------------------------------------------------------------------------ corruptions
def test_corruptions():
    x = torch.randn(6, 40)
    data = Dataset("toy", ArrayData(x, torch.zeros(6, dtype=torch.long)), ArrayData(x.clone(), torch.zeros(6, dtype=torch.long)),
                   (40,), 2)
    noisy = corrupt(data, "noise", 0.5, seed=1)
    assert not torch.equal(noisy.train.x, x) and torch.equal(noisy.train.y, data.train.y)
    assert torch.equal(corrupt(data, "noise", 0.5, seed=1).train.x, noisy.train.x)
    low = corrupt(data, "contrast", 0.5)
    assert torch.allclose(low.train.x.std(1), 0.5 * x.std(1), atol=1e-5)
    blurred = corrupt(data, "blur", 3, splits=("train",))
    assert blurred.train.x.shape == x.shape and torch.equal(blurred.test.x, x)
    assert blurred.train.x.diff(dim=1).abs().mean() < x.diff(dim=1).abs().mean()
    images = Dataset("img", ArrayData(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)),
                     ArrayData(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), (3, 8, 8), 2)
    assert corrupt(images, "blur", 3).train.x.shape == (2, 3, 8, 8)


# ---------------------------------------------------------------------------- populations
def test_population_vectorised_equals_looped_and_mixed_rules_split(digits_split):
    train, test = digits_split
    model = FlatModel(mlp())
    thetas = torch.stack([FlatModel(mlp(s)).flatten() for s in range(4)])
    rule = mixed_rule([(2, transform_rule(momentum(lr=0.1, momentum=0.9))),
                       (2, transform_rule(hypergradient_sgd(0.1, 1e-4)))])
    kw = dict(thetas=thetas, steps=15, batch_size=32, seed=3, eval_data=(test.x, test.y), eval_every=5)
    a = train_population(model, train, rule, vectorize=True, **kw)
    b = train_population(model, train, rule, vectorize=False, **kw)
    assert torch.allclose(a.thetas, b.thetas, atol=1e-5)
    np.testing.assert_allclose(a.test_accuracy, b.test_accuracy, atol=1e-6)
    assert a.test_accuracy.shape == (4, 4) and list(a.eval_steps) == [0, 5, 10, 15]
    assert np.isnan(a.lr[:2]).all() and (a.lr[2:] > 0).all()


def test_compare_schedules_runs_mlrsnet_and_tuned_baselines(digits_split):
    train, test = digits_split
    data = Dataset("digits", train, test, (64,), 10)
    configs = baseline_configs(sgd_lrs=(0.05, 0.2), methods=["Fixed", "Cosine", "Adam"])
    schedule = TrainedSchedule([MLRSNet(8, seed=s).state_dict() for s in range(3)], hidden=8)
    cmp = compare_schedules("mlp", data, configs, seeds=[0, 1], steps=30, schedule=schedule, batch_size=32,
                            eval_every=15, model_kwargs={"hidden": (16,)}, n_val=200)
    assert len(cmp.records) == (len(configs) + 1) * 2
    assert set(cmp.best()) == {"Fixed", "Cosine", "Adam", "MLR-SNet"}
    assert {r["method"] for r in cmp.tuned(["Fixed"])} == {"Fixed"}
    lr = cmp.lr_curves[("MLR-SNet", "transferred")]
    assert lr.shape == (30,) and (lr > 0).all()
    np.testing.assert_allclose(cmp.lr_curves[("Cosine", "lr=0.2")], [hand_schedule("Cosine", 0.2, 30)(t) for t in range(30)],
                               rtol=1e-6)


def test_a_diverging_baseline_setting_is_kept_and_marked(digits_split):
    train, test = digits_split
    data = Dataset("digits", train, test, (64,), 10)
    configs = baseline_configs(sgd_lrs=(0.05, 1e30), methods=["Fixed"])
    cmp = compare_schedules("mlp", data, configs, seeds=[0], steps=6, batch_size=32, eval_every=6,
                            model_kwargs={"hidden": (16,)}, n_val=200)
    marks = {r["setting"]: r["diverged_at"] for r in cmp.records}
    assert marks["lr=0.05"] is None and 0 <= marks["lr=1e+30"] < 6
    assert cmp.best() == {"Fixed": "lr=0.05"}


def test_fewer_steps_than_the_run_holds_is_refused(digits_split, tmp_path):
    _small_run(digits_split, steps=20, run=Run("few", root=tmp_path, params={}), checkpoint_every=10)
    with pytest.raises(ValueError, match="steps=10 is smaller than the 20 the run already holds"):
        _small_run(digits_split, steps=10, run=Run("few", root=tmp_path), checkpoint_every=10)


def test_mlrsnet_rule_matches_the_scheduler():
    schedule = TrainedSchedule([MLRSNet(8, seed=s).state_dict() for s in range(3)], hidden=8)
    losses = torch.linspace(2.3, 0.5, 12)
    rule = mlrsnet_rule(schedule, total_steps=12, num_classes=10, f0=torch.tensor([2.3]))
    thetas = torch.zeros(1, 3)
    state = rule.init(thetas)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = MLRSNetScheduler(opt, schedule, total_steps=12, num_classes=10, f0=2.3)
    for t, f in enumerate(losses):
        _, state, lr = rule.update(torch.ones(1, 3), f.reshape(1), state, thetas, t)
        assert float(lr[0]) == pytest.approx(float(sched.step(f)), rel=1e-6)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("call,name", [
    (lambda: gamma_bound(2.0, 1), "num_classes"),
    (lambda: gamma_bound(2.0, 10, min_log=0), "min_log"),
    (lambda: gamma_bound("2", 10), "f0"),
    (lambda: MLRSNet(0), "hidden"),
    (lambda: MLRSNet(init_range=-1), "init_range"),
    (lambda: hypergradient_sgd(-0.1), "lr"),
    (lambda: hypergradient_sgd(0.1, 0.0), "hyper_lr"),
    (lambda: hypergradient_sgd(0.1, momentum=1.0), "momentum"),
    (lambda: baseline_configs(sgd_lrs=()), "sgd_lrs"),
    (lambda: baseline_configs(methods=["L4"]), "methods"),
    (lambda: hand_schedule("Linear", 0.1, 10), "method"),
    (lambda: TrainedSchedule([]), "snapshots"),
    (lambda: TrainedSchedule([MLRSNet(8).state_dict()], hidden=4), "snapshots"),
    (lambda: TrainedSchedule.from_state({"format": "other"}), "state"),
    (lambda: MLRSNetScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), MLRSNet(8), total_steps=5),
     "num_classes"),
    (lambda: MLRSNetScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)]), MLRSNet(8), total_steps=0,
                              num_classes=10), "total_steps"),
    (lambda: split_validation(ArrayData(torch.zeros(5, 2), torch.zeros(5)), 5), "n_val"),
])
def test_bad_arguments_raise_naming_the_parameter(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize("kwargs,name", [
    ({"t_val": 0}, "t_val"), ({"steps": 0}, "steps"), ({"momentum": 1.5}, "momentum"),
    ({"meta_lr": 0.0}, "meta_lr"), ({"batch_size": 10_000}, "batch_size"), ({"val_batch_size": 0}, "val_batch_size"),
    ({"num_classes": 1}, "num_classes"), ({"snapshots": 100, "steps": 10}, "snapshots"),
    ({"checkpoint_every": 0}, "checkpoint_every"), ({"run": "runs/x"}, "run"),
])
def test_meta_train_validates_before_work(digits_split, kwargs, name):
    with pytest.raises(ValueError, match=name):
        _small_run(digits_split, **kwargs)


def test_corrupt_and_population_validation(digits_split):
    train, test = digits_split
    data = Dataset("digits", train, test, (64,), 10)
    with pytest.raises(ValueError, match="kind"):
        corrupt(data, "fog", 1.0)
    with pytest.raises(ValueError, match="severity"):
        corrupt(data, "blur", 2)
    model = FlatModel(mlp())
    rule = transform_rule(momentum(lr=0.1))
    with pytest.raises(ValueError, match="theta"):
        train_population(model, train, rule, thetas=torch.zeros(2, 3), steps=2)
    with pytest.raises(ValueError, match="batch_size"):
        train_population(model, train, rule, thetas=model.flatten()[None], steps=2, batch_size=10_000)
    with pytest.raises(ValueError, match="parts"):
        mixed_rule([(0, rule)])
    bn = FlatModel(nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10)))
    with pytest.raises(ValueError, match="vectorize"):
        train_population(bn, train, rule, thetas=bn.flatten()[None].repeat(2, 1), steps=2, vectorize=True)


def test_evaluate_members_uses_each_members_batchnorm_state():
    # Members trained apart carry their own BatchNorm statistics; evaluating one with another's (or
    # the module's) statistics gives other numbers, so the per-member path must pass each its own.
    from l2o_lib.population import evaluate_members

    torch.manual_seed(0)
    model = FlatModel(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)))
    thetas = torch.stack([model.flatten(), model.flatten() + 0.1])
    buffers = [model.init_buffers() for _ in range(2)]
    for i, b in enumerate(buffers):
        b["1.running_mean"].fill_(float(i + 1))
        b["1.running_var"].fill_(2.0 + i)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    got = evaluate_members(model, thetas, x, y, buffers)
    for i in range(2):
        want = model.evaluate(thetas[i], x, y, buffers[i])
        assert torch.equal(got["loss"][i], want["loss"]) and torch.equal(got["accuracy"][i], want["accuracy"])
    assert not torch.equal(got["loss"], evaluate_members(model, thetas, x, y)["loss"])
