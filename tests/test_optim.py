"""Contract tests for every registered optimizer and step-for-step equivalence with torch.optim."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_lib.functional import FlatModel
from l2o_lib.optim import OPTIMIZERS, FlatOptimizer, get_optimizer, lamb, lion, momentum

STEPS = 100


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 64, 32), nn.ReLU(), nn.Linear(32, 10),
    ).to(dtype)


# name, our hyper-parameters, torch.optim class, its kwargs
TORCH_TWINS = [
    ("sgd", dict(lr=0.05), torch.optim.SGD, dict(lr=0.05)),
    ("sgd", dict(lr=0.05, weight_decay=1e-3), torch.optim.SGD, dict(lr=0.05, weight_decay=1e-3)),
    ("momentum", dict(lr=0.05, momentum=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9)),
    ("momentum", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=5e-4), torch.optim.SGD,
     dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=5e-4)),
    ("nesterov", dict(lr=0.05, momentum=0.9), torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("adam", dict(lr=1e-3), torch.optim.Adam, dict(lr=1e-3)),
    ("adam", dict(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-3), torch.optim.Adam,
     dict(lr=1e-3, betas=(0.8, 0.99), weight_decay=1e-3)),
    ("adamw", dict(lr=1e-3, weight_decay=0.05), torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.05)),
    ("rmsprop", dict(lr=1e-3), torch.optim.RMSprop, dict(lr=1e-3)),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True), torch.optim.RMSprop,
     dict(lr=1e-3, momentum=0.9, centered=True)),
    ("adamax", dict(lr=2e-3), torch.optim.Adamax, dict(lr=2e-3)),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(TORCH_TWINS)]
# torch.optim ends SGD-type steps with ``param.add_(buf, alpha=-lr)``, which the CPU kernel fuses
# into one multiply-add rounding that a returned ``delta`` cannot reproduce; training amplifies
# that last-bit difference. So every twin is compared in float64 (where a wrong formula shows at
# once), and the twins whose kernels we mirror operation for operation also in float32.
BITWISE_FLOAT32 = {"sgd-0", "adam-5", "adam-6", "rmsprop-8", "adamax-10"}
CASES = [pytest.param(*twin, torch.float64, id=f"{i}-float64") for i, twin in zip(IDS, TORCH_TWINS)] + [
    pytest.param(*twin, torch.float32, id=f"{i}-float32") for i, twin in zip(IDS, TORCH_TWINS) if i in BITWISE_FLOAT32]


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def batches(x, y, steps, bs=64):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(len(x), (bs,), generator=g)
        yield x[idx], y[idx]


@pytest.mark.parametrize("name,ours,torch_cls,theirs,dtype", CASES)
def test_adapter_matches_torch_optim(digits_images, name, ours, torch_cls, theirs, dtype):
    x, y = (t.to(dtype) if t.is_floating_point() else t for t in digits_images)
    ref, mine = make_model(dtype=dtype), make_model(dtype=dtype)
    opt_ref = torch_cls(ref.parameters(), **theirs, foreach=False)
    opt_mine = FlatOptimizer(mine.parameters(), name, **ours)
    worst = 0.0
    for xb, yb in batches(x, y, STEPS):
        for model, opt in ((ref, opt_ref), (mine, opt_mine)):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        worst = max(worst, rel(flat_params(mine), flat_params(ref)))
    moved = rel(flat_params(ref), flat_params(make_model(dtype=dtype)))
    assert moved > 1e-3, "the reference barely moved: the comparison would be vacuous"
    assert worst < 1e-6, f"{name}: relative deviation {worst:.2e} from torch.optim"


@pytest.mark.parametrize("name,ours,torch_cls,theirs,dtype", CASES)
def test_functional_matches_torch_optim(digits_images, name, ours, torch_cls, theirs, dtype):
    x, y = (t.to(dtype) if t.is_floating_point() else t for t in digits_images)
    ref = make_model(dtype=dtype)
    opt_ref = torch_cls(ref.parameters(), **theirs, foreach=False)
    fm = FlatModel(make_model(dtype=dtype))
    buffers = fm.init_buffers()
    theta = fm.flatten()
    tx = get_optimizer(name, **ours)
    state = tx.init(theta)
    for step, (xb, yb) in enumerate(batches(x, y, STEPS)):
        opt_ref.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        opt_ref.step()
        _, g = fm.loss_and_grad(theta, (xb, yb), buffers)
        delta, state = tx.update(g, state, theta, step)
        theta = theta + delta
    assert rel(theta, flat_params(ref)) < 1e-6


def test_adapter_works_with_lr_scheduler_and_param_groups(digits_images):
    x, y = (t.double() if t.is_floating_point() else t for t in digits_images)
    ref, mine = make_model(dtype=torch.float64), make_model(dtype=torch.float64)
    groups = lambda m: [{"params": list(m[:3].parameters()), "lr": 0.1},
                        {"params": list(m[3:].parameters())}]
    opt_ref = torch.optim.SGD(groups(ref), lr=0.05, momentum=0.9, foreach=False)
    opt_mine = FlatOptimizer(groups(mine), "momentum", lr=0.05, momentum=0.9)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=10, gamma=0.5) for o in (opt_ref, opt_mine)]
    for xb, yb in batches(x, y, 30):
        for model, opt in ((ref, opt_ref), (mine, opt_mine)):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        for s in scheds:
            s.step()
    assert opt_mine.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5 ** 3)
    assert rel(flat_params(mine), flat_params(ref)) < 1e-6


def test_state_dict_round_trip(digits_images):
    x, y = digits_images
    model = make_model()
    opt = FlatOptimizer(model.parameters(), "adam", lr=1e-3)
    for xb, yb in batches(x, y, 5):
        opt.zero_grad(); F.cross_entropy(model(xb), yb).backward(); opt.step()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_opt = copy.deepcopy(opt.state_dict())  # like torch.optim, state_dict() holds live references
    # continue the original for 5 steps
    for xb, yb in batches(x, y, 5):
        opt.zero_grad(); F.cross_entropy(model(xb), yb).backward(); opt.step()
    # a fresh model + optimizer restored from the snapshot must follow the same path
    clone = make_model(seed=3)
    clone.load_state_dict(saved_model)
    opt2 = FlatOptimizer(clone.parameters(), "adam", lr=1e-3)
    opt2.load_state_dict(saved_opt)
    for xb, yb in batches(x, y, 5):
        opt2.zero_grad(); F.cross_entropy(clone(xb), yb).backward(); opt2.step()
    assert torch.equal(flat_params(clone), flat_params(model))


def test_closure_returns_loss(digits_images):
    x, y = digits_images
    model = make_model()
    opt = FlatOptimizer(model.parameters(), "sgd", lr=0.1)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x[:64]), y[:64])
        loss.backward()
        return loss

    first = opt.step(closure).item()
    for _ in range(20):
        last = opt.step(closure).item()
    assert last < first


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_contract(name):
    """Every registered optimizer: finite deltas of the right shape, a state of fixed structure,
    no in-place change of its inputs, and descent on a well-conditioned quadratic."""
    torch.manual_seed(0)
    A = torch.diag(torch.linspace(1, 3, 20))
    theta = torch.randn(20)
    lrs = {"lion": 0.01, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "lamb": 0.05, "adamax": 0.05}
    tx = get_optimizer(name, lr=lrs.get(name, 0.02))
    state = tx.init(theta)
    f0 = 0.5 * theta @ A @ theta
    for step in range(200):
        g = A @ theta
        g_copy, theta_copy = g.clone(), theta.clone()
        delta, new_state = tx.update(g, state, theta, step)
        assert torch.equal(g, g_copy) and torch.equal(theta, theta_copy), "update modified its inputs"
        assert delta.shape == theta.shape and torch.isfinite(delta).all()
        assert type(new_state) is type(state) and len(new_state) == len(state)
        theta, state = theta + delta, new_state
    assert 0.5 * theta @ A @ theta < 0.1 * f0


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-1.0), "lr"), (dict(lr=float("nan")), "lr"), (dict(lr=0.1, momentum=1.5), "momentum"),
    (dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        momentum(**kwargs)


def test_unknown_name_and_hyperparameter():
    with pytest.raises(ValueError, match="optimizer='adamm'.*adam"):
        get_optimizer("adamm")
    with pytest.raises(ValueError, match="betas"):
        get_optimizer("adam", lr=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="momentumm"):
        get_optimizer("momentum", momentumm=0.9)
    with pytest.raises(ValueError, match="momentumm"):
        FlatOptimizer(make_model().parameters(), "momentum", momentumm=0.9)


def test_lion_follows_its_sign_rule():
    theta = torch.tensor([1.0, -2.0, 3.0])
    tx = lion(lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    g = torch.tensor([0.5, -0.1, 0.0])
    delta, state = tx.update(g, tx.init(theta), theta, 0)
    expected = -0.1 * (torch.sign(0.1 * g) + 0.5 * theta)
    assert torch.allclose(delta, expected)
    assert torch.allclose(state.buf, 0.01 * g)


def test_lamb_trust_ratio_is_per_segment():
    """With beta1 = beta2 = 0 the Adam ratio is sign(g) (up to eps): each segment's step then has
    exactly lr · ‖theta_segment‖ norm, whatever the gradient scale."""
    theta = torch.cat([torch.full((4,), 2.0), torch.full((9,), -0.5)])
    g = torch.cat([torch.full((4,), 1e-3), torch.full((9,), 7.0)])
    tx = lamb(lr=0.1, betas=(0.0, 0.0), eps=1e-12, segments=[4, 9])
    delta, _ = tx.update(g, tx.init(theta), theta, 0)
    assert delta[:4].norm().item() == pytest.approx(0.1 * theta[:4].norm().item(), rel=1e-5)
    assert delta[4:].norm().item() == pytest.approx(0.1 * theta[4:].norm().item(), rel=1e-5)
    with pytest.raises(ValueError, match="segments"):
        lamb(segments=[4, 8]).update(g, tx.init(theta), theta, 0)


class TwoHeads(nn.Module):
    """A trunk with two heads; a loss that reads only some heads leaves the others with ``grad None``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh())
        self.head_a = nn.Linear(32, 10)
        self.head_b = nn.Linear(32, 10)

    def forward(self, x, heads):
        h = self.trunk(x)
        return sum(getattr(self, f"head_{k}")(h) for k in heads)


@pytest.mark.parametrize("name,ours,torch_cls,theirs", [twin for twin in TORCH_TWINS], ids=IDS)
def test_adapter_leaves_parameters_without_grad_alone_like_torch_optim(digits_images, name, ours, torch_cls, theirs):
    # head b is unused for 10 steps (weight decay and momentum must not move it, its step count must
    # not advance), then used: its momentum buffer / bias correction start there, as in torch.optim.
    x, y = digits_images[0].double(), digits_images[1]
    ref, mine = TwoHeads().double(), TwoHeads().double()
    opt_ref = torch_cls(ref.parameters(), **theirs, foreach=False)
    opt_mine = FlatOptimizer(mine.parameters(), name, **ours)
    start_b = mine.head_b.weight.detach().clone()
    for step, (xb, yb) in enumerate(batches(x, y, 25)):
        heads = "a" if step < 10 else "ab"
        for model, opt in ((ref, opt_ref), (mine, opt_mine)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb, heads), yb).backward()
            opt.step()
        if step == 9:
            assert torch.equal(mine.head_b.weight, start_b), "a parameter without a gradient moved"
        assert rel(flat_params(mine), flat_params(ref)) < 1e-9, f"step {step}"
    assert not torch.equal(mine.head_b.weight, start_b)


def test_adapter_state_dict_round_trip_keeps_per_parameter_steps(digits_images):
    x, y = digits_images
    model = TwoHeads()
    opt = FlatOptimizer(model.parameters(), "adam", lr=1e-3)
    for step, (xb, yb) in enumerate(batches(x, y, 6)):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb, "a" if step < 3 else "ab"), yb).backward()
        opt.step()
    clone = copy.deepcopy(model)
    opt2 = FlatOptimizer(clone.parameters(), "adam", lr=1e-3)
    opt2.load_state_dict(opt.state_dict())
    for xb, yb in batches(x, y, 3):
        for m, o in ((model, opt), (clone, opt2)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(xb, "ab"), yb).backward()
            o.step()
    assert torch.equal(flat_params(clone), flat_params(model))


def test_adapter_with_a_subspace_rule_leaves_parameters_without_grad_alone(digits_images):
    # Momentum† couples coordinates, so it cannot run on a subset: the unused head gets a zero
    # gradient inside the rule but must still not move.
    from l2o_lib.subspace import dagger, random_subspace

    x, y = digits_images
    model = TwoHeads()
    dim = sum(p.numel() for p in model.parameters())
    space = random_subspace(dim, 8, origin=flat_params(model), seed=0)
    opt = FlatOptimizer(model.parameters(), lambda lr=0.1: dagger(momentum(lr=lr), space))
    start_b = model.head_b.weight.detach().clone()
    start_a = model.head_a.weight.detach().clone()
    for xb, yb in batches(x, y, 5):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb, "a"), yb).backward()
        opt.step()
    assert torch.equal(model.head_b.weight, start_b)
    assert not torch.equal(model.head_a.weight, start_a)
