"""The divergence guard and meta-checkpoints shared by the meta-trainers."""

import pytest
import torch
from torch import nn

from l2o_lib.finite import NonFiniteError
from l2o_lib.meta import DivergenceGuard, load_meta_state, meta_state, nes_train, resume_meta, save_meta
from l2o_lib.results import Run


def setup(lr=0.1):
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    return net, opt


def good_step(net, opt, guard, step):
    opt.zero_grad()
    loss = net(torch.ones(1, 3)).pow(2).sum()
    loss.backward()
    return guard.step(step, loss.detach())


def test_good_steps_go_through_and_are_committed():
    net, opt = setup()
    guard = DivergenceGuard(net, opt)
    before = [p.clone() for p in net.parameters()]
    assert good_step(net, opt, guard, 0) and good_step(net, opt, guard, 1)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert guard.events == [] and guard.reference is not None


@pytest.mark.parametrize("poison, reason", [("loss", "non-finite meta-loss"), ("grad", "non-finite meta-gradient"),
                                            ("explode", "exploded")])
def test_bad_steps_roll_back_parameters_and_optimizer_state(poison, reason):
    net, opt = setup()
    guard = DivergenceGuard(net, opt, explode=100.0)
    good_step(net, opt, guard, 0)
    params = {k: v.clone() for k, v in net.state_dict().items()}
    exp_avg = opt.state[net.weight]["exp_avg"].clone()

    opt.zero_grad()
    loss = net(torch.ones(1, 3)).pow(2).sum()
    loss.backward()
    if poison == "grad":
        net.weight.grad[0, 0] = float("inf")
    value = {"loss": torch.tensor(float("nan")), "grad": loss.detach(), "explode": loss.detach() * 1e6}[poison]
    # A half-applied bad update (as if something had written into the weights) is undone too.
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not guard.step(1, value)
    assert reason in guard.events[-1].reason and guard.events[-1].step == 1
    for k, v in net.state_dict().items():
        assert torch.equal(v, params[k])
    assert torch.equal(opt.state[net.weight]["exp_avg"], exp_avg)
    assert all(p.grad is None for p in net.parameters())
    assert good_step(net, opt, guard, 2)   # and training goes on


def test_patience_raises_a_clear_error():
    net, opt = setup()
    guard = DivergenceGuard(net, opt, patience=3)
    assert not guard.check(0, float("nan"))
    assert not guard.check(1, float("inf"))
    with pytest.raises(RuntimeError, match="3 bad meta-steps in a row"):
        guard.check(2, float("nan"))


def test_validation():
    net, opt = setup()
    with pytest.raises(ValueError, match="module"):
        DivergenceGuard(object(), opt)
    with pytest.raises(ValueError, match="optimizer"):
        DivergenceGuard(net, object())
    with pytest.raises(ValueError, match="explode"):
        DivergenceGuard(net, opt, explode=0)
    with pytest.raises(ValueError, match="patience"):
        DivergenceGuard(net, opt, patience=0)


def test_meta_state_round_trip(tmp_path):
    net, opt = setup()
    guard = DivergenceGuard(net, opt)
    good_step(net, opt, guard, 0)
    path = tmp_path / "ckpt.pt"
    torch.save(meta_state(net, opt, epoch=3), path)
    net2, opt2 = setup(lr=0.5)
    extra = load_meta_state(torch.load(path, weights_only=True), net2, opt2)
    assert extra == {"epoch": 3}
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="missing"):
        load_meta_state({"module": {}}, net2)


def test_an_update_that_overflows_is_rolled_back_and_counted():
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1e37)   # finite loss and gradient, but weights beyond float32
    guard = DivergenceGuard(net, opt, patience=2)
    before = {k: v.clone() for k, v in net.state_dict().items()}

    def overflowing_step(step):
        opt.zero_grad()
        loss = net(torch.full((1, 3), 100.0)).pow(2).sum()
        loss.backward()
        return guard.step(step, loss.detach())

    assert not overflowing_step(0)
    assert "non-finite meta-parameters" in guard.events[-1].reason and guard.events[-1].step == 0
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    with pytest.raises(NonFiniteError, match="2 bad meta-steps in a row"):
        overflowing_step(1)


def test_nes_refuses_fewer_generations_than_the_run_holds(tmp_path):
    def fitness(members, t):
        return -((members - 1) ** 2).sum(1)

    nes_train(torch.zeros(3), fitness, generations=4, pairs=2, run=Run("nes", root=tmp_path, params={}), desc=None)
    with pytest.raises(ValueError, match="generations=2 is smaller than the 4 the run already holds"):
        nes_train(torch.zeros(3), fitness, generations=2, pairs=2, run=Run("nes", root=tmp_path), desc=None)


def test_resume_meta_restores_what_save_meta_wrote(tmp_path):
    net, opt = setup()
    guard = DivergenceGuard(net, opt)
    good_step(net, opt, guard, 0)
    run = Run("m", root=tmp_path, params={})
    run.log_metrics(5, loss=1.0)
    assert resume_meta(None, kind="x", module=net, optimizer=opt, total_name="epochs", total=3) == (0, None)
    assert resume_meta(run, kind="x", module=net, optimizer=opt, total_name="epochs", total=3) == (0, None)
    save_meta(run, 2, kind="x", module=net, optimizer=opt, guard=guard, history=[1.0])
    net2, opt2 = setup(lr=0.5)
    guard2 = DivergenceGuard(net2, opt2)
    start, extra = resume_meta(run, kind="x", module=net2, optimizer=opt2, guard=guard2, total_name="epochs", total=3)
    assert start == 2 and extra == {"history": [1.0], "reference": guard.reference}
    assert guard2.reference == guard.reference is not None
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))
    assert opt2.param_groups[0]["lr"] == 0.1 and opt2.state_dict()["state"][0]["step"] == 1
    # The guard committed the loaded state: a refused step rolls back to it, not to the fresh one.
    net2.weight.grad = torch.full_like(net2.weight, float("nan"))
    assert not guard2.check(3, 1.0) and torch.equal(net2.weight, net.weight)
    assert run.metrics == []  # rewound to the checkpoint's step
    with pytest.raises(ValueError, match="'x' meta-training, not 'y'"):
        resume_meta(run, kind="y", module=net2, optimizer=opt2, total_name="epochs", total=3)
    with pytest.raises(ValueError, match="epochs=1 is smaller than the 2"):
        resume_meta(run, kind="x", module=net2, optimizer=opt2, total_name="epochs", total=1)


def test_a_checkpoint_in_mlrsnets_former_nested_layout_still_loads():
    net, opt = setup()
    old = {"theta": torch.ones(2), "reference": 0.5, "meta": meta_state(net, opt, kind="mlrsnet")}
    net2, opt2 = setup(lr=0.5)
    extra = load_meta_state(old, net2, opt2, kind="mlrsnet")
    assert set(extra) == {"theta", "reference"} and opt2.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match="'mlrsnet' meta-training, not 'sl2o'"):
        load_meta_state(old, net2, opt2, kind="sl2o")
