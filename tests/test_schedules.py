"""Our schedules equal torch.optim.lr_scheduler's closed forms, value for value."""

import pytest
import torch

from l2o_lib.optim import constant, cosine, exponential, get_schedule, multistep, sgdr


def torch_lrs(make_scheduler, steps, lr=0.1):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("ours,theirs", [
    (multistep(0.1, [30, 80], gamma=0.2), lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [30, 80], gamma=0.2)),
    (exponential(0.1, 0.97), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.97)),
    (cosine(0.1, 120, min_lr=1e-3), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 120, eta_min=1e-3)),
    (sgdr(0.1, 10, t_mult=2, min_lr=1e-4),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 10, T_mult=2, eta_min=1e-4)),
    (sgdr(0.1, 7, t_mult=1), lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 7, T_mult=1)),
], ids=["multistep", "exponential", "cosine", "sgdr", "sgdr-constant-period"])
def test_matches_torch(ours, theirs):
    expected = torch_lrs(theirs, 120)
    got = [ours(t) for t in range(120)]
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_cosine_warmup_and_constant():
    s = cosine(1.0, 110, warmup=10)
    assert [s(t) for t in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s(10) == pytest.approx(1.0) and s(110) == pytest.approx(0.0) and s(500) == pytest.approx(0.0)
    assert constant(0.3)(12345) == 0.3


@pytest.mark.parametrize("name,kwargs,match", [
    ("cosine", dict(lr=0.1, total_steps=0), "total_steps"),
    ("cosine", dict(lr=0.1, total_steps=10, warmup=10), "warmup"),
    ("exponential", dict(lr=0.1, gamma=-1.0), "gamma"),
    ("sgdr", dict(lr=float("nan"), period=5), "lr"),
    ("multistep", dict(lr=0.1, milestones=[-3]), "milestones"),
    ("cosinee", dict(lr=0.1), "schedule='cosinee'"),
])
def test_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_schedule(name, **kwargs)
