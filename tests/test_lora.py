"""LoRA coordinates: layout, exact start at the origin, the closed-form pullback against autograd,
the rank of the weight change, training through ``lora_dagger`` and argument validation."""

import pytest
import torch

from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import Transform, adamw, sgd
from l2o_lib.lora import LoRASpace, LoRAState, lora_dagger, lora_space
from l2o_lib.training import train_flat

F64 = torch.float64


@pytest.fixture(scope="module")
def vit():
    return FlatModel(build_model("vit_tiny", (3, 32, 32), 10, seed=0))


@pytest.fixture(scope="module")
def batch_data():
    g = torch.Generator().manual_seed(0)
    return ArrayData(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g))


def targeted(model, suffixes=("q", "v")):
    """Names of the weights LoRA should touch, found independently of the implementation."""
    return {n for n in model.names for t in suffixes if n.endswith(f".attn.{t}.weight")}


def random_z(space, seed, dtype=torch.float32, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(space.dim, generator=g, dtype=F64) * scale).to(dtype)


# ------------------------------------------------------------------------------------ layout
def test_default_layout_matches_sl2o_vit_setting(vit):
    space = lora_space(vit)
    assert isinstance(space, LoRASpace)
    assert set(space.names) == targeted(vit) and len(space.names) == 8  # 4 blocks × {q, v}
    assert space.dim == 4 * 2 * 16 * (64 + 64)
    assert space.ambient_dim == vit.dim
    assert space.rank == 16 and space.scale == 1.0  # alpha defaults to r


def test_dim_is_sum_of_r_in_plus_out():
    model = FlatModel(build_model("vit_tiny", (3, 32, 32), 10, seed=0, mlp_ratio=3))
    space = lora_space(model, rank=5, targets=("k", "proj", "0"))  # "0" is the MLP's first Linear
    shapes = dict(zip(model.names, model.shapes))
    want = {n for n in model.names if n.endswith((".attn.k.weight", ".attn.proj.weight", ".mlp.0.weight"))}
    assert set(space.names) == want
    assert any(shapes[n][0] != shapes[n][1] for n in want)  # a non-square target (192 × 64)
    assert space.dim == sum(5 * (shapes[n][0] + shapes[n][1]) for n in want)


def test_single_string_target_and_origin(vit):
    origin = torch.randn(vit.dim, generator=torch.Generator().manual_seed(1))
    space = lora_space(vit, rank=2, targets="k", origin=origin)
    assert set(space.names) == targeted(vit, ("k",))
    assert torch.equal(space.lift(space.init()), origin)


def test_lift_of_init_is_origin_exactly_and_b_is_zero(vit):
    space = lora_space(vit)
    z0 = space.init()
    assert torch.equal(space.lift(z0), vit.flatten())
    assert torch.equal(space.init(), z0)  # seeded
    assert not torch.equal(lora_space(vit, seed=1).init(), z0)
    for A, B in space.factors(z0):
        assert torch.count_nonzero(B) == 0
        assert torch.count_nonzero(A) == A.numel()  # A random, so the B-gradient is not zero
        assert A.abs().max() <= 1 / 64 ** 0.5  # Kaiming-uniform bound 1/sqrt(in)


def test_only_targeted_segments_change(vit):
    space = lora_space(vit)
    origin = vit.flatten()
    theta = space.lift(random_z(space, 0))
    new, old = vit.unflatten(theta), vit.unflatten(origin)
    hit = targeted(vit)
    for n in vit.names:
        if n in hit:
            assert (new[n] != old[n]).all(), n  # a generic z changes every entry of the weight
        else:
            assert torch.equal(new[n], old[n]), n


def test_lift_is_w0_plus_scaled_b_a(vit):
    space = lora_space(vit, rank=4, alpha=12.0)
    z = random_z(space, 1)
    new, old = vit.unflatten(space.lift(z)), vit.unflatten(space.origin)
    for name, (A, B) in zip(space.names, space.factors(z)):
        assert torch.allclose(new[name], old[name] + 3.0 * B @ A, atol=1e-6)
    # The factors are read from z's layout: A then B, target by target.
    A0, B0 = space.factors(z)[0]
    assert torch.equal(A0.reshape(-1), z[:4 * 64]) and torch.equal(B0.reshape(-1), z[4 * 64:8 * 64])


# --------------------------------------------------------------------------------- pullback
@pytest.mark.parametrize("alpha", [None, 40.0])
def test_pullback_equals_autograd(vit, alpha):
    space = lora_space(vit, alpha=alpha)
    for seed in range(2):
        z = random_z(space, seed).requires_grad_(True)
        g = torch.randn(vit.dim, generator=torch.Generator().manual_seed(10 + seed))
        (auto,) = torch.autograd.grad(space.lift(z) @ g, z)
        assert torch.allclose(space.pullback(g, z.detach()), auto, rtol=1e-5, atol=1e-5)


def test_pullback_equals_autograd_float64_non_square():
    model = FlatModel(build_model("vit_tiny", (3, 32, 32), 10, seed=0, depth=1))
    space = lora_space(model, rank=3, targets=("q", "0", "2"), alpha=7.0).to(dtype=F64)
    z = random_z(space, 3, F64).requires_grad_(True)
    g = torch.randn(model.dim, generator=torch.Generator().manual_seed(4), dtype=F64)
    (auto,) = torch.autograd.grad(space.lift(z) @ g, z)
    assert torch.allclose(space.pullback(g, z.detach()), auto, rtol=1e-12, atol=1e-12)


def test_pullback_at_init_only_moves_b(vit):
    space = lora_space(vit)
    z0 = space.init()
    gz = space.pullback(torch.randn(vit.dim, generator=torch.Generator().manual_seed(0)), z0)
    for dA, dB in space.factors(gz):
        assert torch.count_nonzero(dA) == 0 and torch.count_nonzero(dB) == dB.numel()


# ------------------------------------------------------------------------------------- rank
def test_weight_change_has_rank_at_most_r(vit):
    r = 6
    space = lora_space(vit, rank=r).to(dtype=F64)
    z = random_z(space, 5, F64)
    name = space.names[1]
    delta = (space.lift(z) - space.origin)[vit.unflatten(torch.arange(vit.dim))[name].reshape(-1)]
    s = torch.linalg.svdvals(delta.view(64, 64))
    assert s[r - 1] > 1e-3 * s[0]  # rank exactly r for a generic z
    assert s[r] < 1e-12 * s[0]
    assert torch.allclose(delta.view(64, 64), space.weight_deltas(z)[name])


# -------------------------------------------------------------------------------- training
def test_lora_dagger_sgd_trains_vit_and_iterates_are_lifts(vit, batch_data):
    space = lora_space(vit)
    origin = vit.flatten()
    inner = lora_dagger(sgd(2.0), space)
    seen = {}

    def update(grad, state, theta, step):  # record the tracked coordinates of every step
        delta, state = inner.update(grad, state, theta, step)
        assert isinstance(state, LoRAState)
        seen["z"] = state.z
        return delta, state

    frozen = torch.ones(vit.dim, dtype=torch.bool)
    for name, view in vit.unflatten(torch.arange(vit.dim)).items():
        if name in targeted(vit):
            frozen[view.reshape(-1)] = False
    gaps = []

    def on_step(k, theta):
        gaps.append(float((theta - space.lift(seen["z"])).abs().max()))
        assert torch.equal(theta[frozen], origin[frozen]), k

    hist = train_flat(vit, Transform(inner.init, update), BatchSampler(batch_data, 32, seed=0), steps=30,
                      on_step=on_step)
    assert len(gaps) == 30 and max(gaps) < 1e-6
    assert not torch.equal(hist.theta[~frozen], origin[~frozen])
    full = (batch_data.x, batch_data.y)
    before, after = float(vit.loss(origin, full)), float(vit.loss(hist.theta, full))
    assert after < before - 0.1, (before, after)
    assert hist.train_loss[-5:].mean() < hist.train_loss[:5].mean()


def test_lora_dagger_equals_inner_on_loss_of_lift(batch_data):
    """lora_dagger(adamw) must be adamw run on z ↦ loss(lift(z)) with autograd: state threaded, and
    the decay acting on the coordinates z (not on theta)."""
    model = FlatModel(build_model("vit_tiny", (3, 32, 32), 10, seed=1, depth=1))
    space = lora_space(model, rank=4, alpha=8.0)
    hist = train_flat(model, lora_dagger(adamw(1e-2, weight_decay=0.5), space), BatchSampler(batch_data, 16, seed=3),
                      steps=4)

    opt, sampler = adamw(1e-2, weight_decay=0.5), BatchSampler(batch_data, 16, seed=3)
    z = space.init()
    state = opt.init(z)
    for k in range(4):
        batch = sampler.sample()
        zl = z.detach().requires_grad_(True)
        (gz,) = torch.autograd.grad(model.loss(space.lift(zl), batch), zl)
        dz, state = opt.update(gz, state, z, k)
        z = z + dz
    assert torch.allclose(hist.theta, space.lift(z), atol=1e-5)
    assert not torch.equal(hist.theta, space.origin)


def test_lora_dagger_requires_start_at_origin(vit):
    space = lora_space(vit)
    t = lora_dagger(sgd(0.1), space)
    assert torch.equal(t.init(vit.flatten()).z, space.init())
    with pytest.raises(ValueError, match="origin"):
        t.init(vit.flatten() + 1e-3)


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("rank", [0, -1, 65, 2.0, True])
def test_bad_rank(vit, rank):
    with pytest.raises(ValueError, match="rank"):
        lora_space(vit, rank=rank)


def test_rank_bound_is_min_of_out_and_in():
    model = FlatModel(build_model("vit_tiny", (3, 32, 32), 10, seed=0))
    lora_space(model, rank=10, targets=("head",))  # head is 10 × 64
    with pytest.raises(ValueError, match=r"rank=11.*head\.weight"):
        lora_space(model, rank=11, targets=("head",))


@pytest.mark.parametrize("targets", [("nope",), ("q", "nope"), ("norm1",), (), "", [1]])
def test_bad_targets(vit, targets):
    with pytest.raises(ValueError, match="targets"):
        lora_space(vit, targets=targets)


def test_unmatched_target_lists_available_weights(vit):
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q\.weight") as info:
        lora_space(vit, targets=("qq",))
    assert "norm1" not in str(info.value)  # only 2-D weights are offered


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), "8"])
def test_bad_alpha(vit, alpha):
    with pytest.raises(ValueError, match="alpha"):
        lora_space(vit, alpha=alpha)


def test_bad_origin_and_coordinates(vit):
    with pytest.raises(ValueError, match="origin"):
        lora_space(vit, origin=torch.zeros(vit.dim + 1))
    space = lora_space(vit)
    with pytest.raises(ValueError, match="dim"):
        space.lift(torch.zeros(space.dim - 1))
    with pytest.raises(ValueError, match="grad"):
        space.pullback(torch.zeros(3), space.init())
