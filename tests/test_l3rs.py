"""L3RS (per-layer mix of normalised base directions) and the NES machinery that meta-trains it."""

import math

import pytest
import torch

from l2o_lib.finetuning import finetune, pretrain_backbone
from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import (L3RS, L3RSConfig, baseline_factories, combine, init_phi, l3rs, population_fitness,
                          population_losses, unpack_phi)
from l2o_lib.meta import antithetic_noise, centered_ranks, nes_estimate, nes_gradient, nes_members, nes_train
from l2o_lib.models import build_model
from l2o_lib.optim import head_only, segment_ids
from l2o_lib.results import Run

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(seed=0):
    return FlatModel(build_model("mlp", (6,), 3, seed=seed, hidden=(8,)))


def _batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(3, (n,), generator=g)


def _set_output(phi, cfg, bias):
    """phi with a zero output layer and the given output bias: constant lambda and mu."""
    phi = phi.clone()
    p = unpack_phi(phi, cfg)
    p["w3"].zero_()
    p["b3"].copy_(torch.tensor(bias))
    return phi


@pytest.fixture(scope="module")
def family(l3rs_family_parts):
    return l3rs_family_parts


# ------------------------------------------------------------------------------ the update rule


def test_one_hot_mu_on_sgd_with_constant_lambda_is_normalised_sgd():
    model = _model()
    theta = model.flatten()
    seg = model.segments()
    ids = segment_ids(seg)
    cfg = L3RSConfig(n_layers=len(seg), bases=("sgd", "adam"), base_lr=0.01)
    # combine() exactly: one-hot mu on SGD, constant lambda.
    _, g = model.loss_and_grad(theta, _batch())
    norms = torch.zeros(len(seg)).index_add(0, ids, g * g).sqrt()
    lam = torch.full((len(seg),), 0.3)
    mu = torch.tensor([[1.0, 0.0]]).expand(len(seg), 2)
    dirs = torch.stack([-g, torch.randn_like(g)])
    got = combine(dirs, torch.stack([norms, torch.ones_like(norms)]), lam, mu, ids)
    # Bit for bit the normalised SGD step lam * (-g) / ||g|| (same operation order).
    assert torch.equal(got, (lam / norms)[ids] * -g)
    # The whole transform with an output layer forcing mu = (1, 0) and a constant lambda.
    c = 0.7
    phi = _set_output(init_phi(cfg), cfg, [c, 60.0, -60.0])
    tx = l3rs(phi, cfg, total_steps=5, segments=seg)
    state = tx.init(theta)
    lam_expected = 0.01 * torch.tensor(seg, dtype=torch.float32).sqrt() * math.exp(5 * math.tanh(c / 5))
    for k in range(3):
        loss, g = model.loss_and_grad(theta, _batch(k))
        delta, state = tx.update(g, state, theta, k, loss=loss)
        norms = torch.zeros(len(seg)).index_add(0, ids, g * g).sqrt()
        torch.testing.assert_close(delta, -lam_expected[ids] * g / norms[ids], rtol=1e-5, atol=1e-8)
        theta = theta + delta


def test_untrained_phi_is_an_even_mix_at_base_lr_and_lambda_is_bounded():
    model = _model()
    seg = model.segments()
    cfg = L3RSConfig(n_layers=len(seg), base_lr=1e-3)
    tx = l3rs(init_phi(cfg), cfg, total_steps=10, segments=seg)
    theta = model.flatten()
    loss, g = model.loss_and_grad(theta, _batch())
    _, state = tx.update(g, tx.init(theta), theta, 0, loss=loss)
    torch.testing.assert_close(state.mu, torch.full_like(state.mu, 0.5), atol=0.05, rtol=0)
    root_n = torch.tensor(seg, dtype=torch.float32).sqrt()
    torch.testing.assert_close(state.lam / (1e-3 * root_n), torch.ones(len(seg)), atol=0.1, rtol=0)
    # However large the network's output, lambda stays within e^{+-B} of base_lr sqrt(n).
    huge = _set_output(init_phi(cfg), cfg, [1e4, 0.0, 0.0])
    _, state = l3rs(huge, cfg, total_steps=10, segments=seg).update(g, tx.init(theta), theta, 0, loss=loss)
    assert torch.all(state.lam <= 1e-3 * root_n * math.exp(cfg.max_log_scale) * 1.0001)


def test_adam_betas_are_meta_parameters_and_zero_direction_gives_no_nan():
    model = _model()
    seg = model.segments()
    cfg = L3RSConfig(n_layers=len(seg), bases=("adam",))
    phi = init_phi(cfg, betas=(0.9, 0.999))
    torch.testing.assert_close(torch.sigmoid(unpack_phi(phi, cfg)["adam_beta_logits"]), torch.tensor([0.9, 0.999]))
    theta = model.flatten()
    updates = []
    for betas in ((0.9, 0.999), (0.5, 0.9)):
        tx = l3rs(init_phi(cfg, betas=betas), cfg, total_steps=4, segments=seg)
        state, th = tx.init(theta), theta
        for k in range(3):
            loss, g = model.loss_and_grad(th, _batch(k))
            d, state = tx.update(g, state, th, k, loss=loss)
            th = th + d
        updates.append(d)
    assert not torch.allclose(updates[0], updates[1])
    tx = l3rs(phi, cfg, total_steps=4, segments=seg)
    d, _ = tx.update(torch.zeros_like(theta), tx.init(theta), theta, 0, loss=1.0)
    assert torch.isfinite(d).all() and torch.equal(d, torch.zeros_like(d))


@pytest.mark.parametrize("bases", [("adam", "lion", "lamb"), ("adamax", "sgd", "lamb"),
                                   ("sgd", "adam", "adamax", "lion", "lamb", "weight_decay")])
def test_ablation_base_sets_run_and_mix_on_the_simplex(bases):
    model = _model()
    seg = model.segments()
    cfg = L3RSConfig(n_layers=len(seg), bases=bases)
    tx = l3rs(init_phi(cfg), cfg, total_steps=5, segments=seg)
    theta, state = model.flatten(), None
    state = tx.init(theta)
    for k in range(3):
        loss, g = model.loss_and_grad(theta, _batch(k))
        d, state = tx.update(g, state, theta, k, loss=loss)
        theta = theta + d
    assert torch.isfinite(theta).all()
    assert state.mu.shape == (len(seg), len(bases))
    torch.testing.assert_close(state.mu.sum(-1), torch.ones(len(seg)))


def test_torch_optimizer_adapter_matches_the_transform():
    model = _model()
    seg = model.segments()
    cfg = L3RSConfig(n_layers=len(seg), base_lr=1e-2)
    phi = init_phi(cfg, seed=3) + 0.1 * torch.randn(cfg.dim, generator=torch.Generator().manual_seed(1))
    # Pure transform with phi, then the torch.optim adapter built from a copy.
    theta = model.flatten()
    tx = l3rs(phi, cfg, total_steps=4, segments=seg)
    state = tx.init(theta)
    for k in range(3):
        loss, g = model.loss_and_grad(theta, _batch(k))
        d, state = tx.update(g, state, theta, k, loss=loss)
        theta = theta + d
    module = build_model("mlp", (6,), 3, seed=0, hidden=(8,))
    opt = L3RS(module.parameters(), phi.clone(), cfg, total_steps=4)
    for k in range(3):
        x, y = _batch(k)
        opt.zero_grad()

        def closure():
            loss = torch.nn.functional.cross_entropy(module(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    torch.testing.assert_close(FlatModel(module).flatten(), theta, rtol=1e-5, atol=1e-7)
    lam, mu = opt.mixing()
    torch.testing.assert_close(lam, state.lam)


def test_bad_arguments_raise_value_errors_naming_the_parameter():
    with pytest.raises(ValueError, match="bases"):
        L3RSConfig(n_layers=3, bases=("sgd", "rmsprop"))
    with pytest.raises(ValueError, match="n_layers"):
        L3RSConfig(n_layers=0)
    with pytest.raises(ValueError, match="ema_decays"):
        L3RSConfig(n_layers=2, ema_decays=(0.5, 1.5, 0.9))
    with pytest.raises(ValueError, match="base_lr"):
        L3RSConfig(n_layers=2, base_lr=-1.0)
    cfg = L3RSConfig(n_layers=4)
    with pytest.raises(ValueError, match="segments"):
        l3rs(init_phi(cfg), cfg, total_steps=3, segments=[3, 4])
    with pytest.raises(ValueError, match="total_steps"):
        l3rs(init_phi(cfg), cfg, total_steps=0, segments=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="phi"):
        l3rs(torch.zeros(5), cfg, total_steps=3, segments=[1, 2, 3, 4])
    f = lambda m, t: -m.pow(2).sum(1)  # noqa: E731
    for kwargs, name in [({"pairs": 0}, "pairs"), ({"sigma": -1.0}, "sigma"), ({"optimizer": "rmsprop"}, "optimizer"),
                         ({"generations": 0}, "generations"), ({"halve_every": 0}, "halve_every")]:
        args = {"generations": 2, "pairs": 2, "desc": None, **kwargs}
        with pytest.raises(ValueError, match=name):
            nes_train(torch.zeros(3), f, **args)
    with pytest.raises(ValueError, match="distributed"):
        nes_train(torch.zeros(3), f, generations=1, pairs=2, distributed=True, desc=None)


# ------------------------------------------------------------------------------ NES


def test_centered_ranks_are_invariant_to_monotone_transforms_and_rank_nan_last():
    f = torch.randn(21, generator=torch.Generator().manual_seed(0))
    ranks = centered_ranks(f)
    for transform in (lambda v: 3 * v + 1, torch.exp, lambda v: v ** 3, torch.sigmoid):
        torch.testing.assert_close(centered_ranks(transform(f)), ranks)
    assert ranks.min() == -0.5 and ranks.max() == 0.5 and abs(float(ranks.sum())) < 1e-9
    g = f.clone()
    g[3], g[7] = float("nan"), float("inf")
    shaped = centered_ranks(g)
    assert shaped[3] == shaped[7] == shaped.min()  # tied for last
    assert shaped[3] < centered_ranks(f)[3] or centered_ranks(f)[3] == -0.5


def test_nes_estimate_aligns_with_the_true_gradient_of_a_quadratic():
    d = 20
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g)
    A = a @ a.T / d + torch.eye(d)
    b = torch.randn(d, generator=g)
    phi = torch.randn(d, generator=g)

    def fitness(m):  # maximise -f(phi)
        return -(0.5 * ((m @ A) * m).sum(1) - m @ b)

    est, _ = nes_estimate(phi, fitness, pairs=200, sigma=0.01, seed=1)
    true = -(A @ phi - b)
    assert torch.nn.functional.cosine_similarity(est, true, dim=0) > 0.9


def _quadratic_fitness(members, generation):
    target = torch.linspace(-1, 1, members.shape[1])
    return -((members - target) ** 2).sum(1)


def test_nes_train_improves_halves_lr_and_sigma_and_refuses_non_finite_generations():
    res = nes_train(torch.zeros(6), _quadratic_fitness, generations=60, pairs=8, sigma=0.1, lr=0.05, halve_every=20,
                    desc=None)
    h = res.history
    assert h["fitness_mean"][-1] > h["fitness_mean"][0]
    assert math.isclose(h["lr"][20], 0.025) and math.isclose(h["sigma"][40], 0.025)

    def nan_sometimes(m, t):
        f = _quadratic_fitness(m, t)
        if t == 1:
            return torch.full_like(f, float("nan"))  # every member diverged: no estimate
        f[0] = float("nan")  # one diverged member: ranks last, the generation goes ahead
        return f

    seen = {}
    res = nes_train(torch.zeros(6), nan_sometimes, generations=3, pairs=4, desc=None,
                    on_generation=lambda t, phi, rec: seen.__setitem__(t, phi.clone()))
    assert res.history["accepted"] == [True, False, True]
    assert torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert res.events[0]["generation"] == 1 and torch.isfinite(res.phi).all()


def test_nes_checkpoints_and_resumes_to_the_same_result(tmp_path):
    kwargs = dict(pairs=4, sigma=0.1, lr=0.05, halve_every=3, desc=None, checkpoint_every=2)
    full = nes_train(torch.zeros(5), _quadratic_fitness, generations=6, **kwargs)
    run = Run("nes", root=tmp_path, params={"x": 1})
    nes_train(torch.zeros(5), _quadratic_fitness, generations=4, run=run, **kwargs)
    resumed = nes_train(torch.zeros(5), _quadratic_fitness, generations=6, run=Run("nes", root=tmp_path), **kwargs)
    assert resumed.start == 4
    torch.testing.assert_close(resumed.phi, full.phi)
    assert resumed.history["fitness_mean"] == pytest.approx(full.history["fitness_mean"])


def _distributed_worker(rank, world, init_file, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = nes_train(torch.zeros(7), _quadratic_fitness, generations=3, pairs=4, sigma=0.1, lr=0.05,
                        distributed=True, desc=None)
        if rank == 0:
            torch.save({"phi": res.phi, "fitness": res.history["fitness_mean"]}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_population_gives_the_same_update_as_one_process(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "phi.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    single = nes_train(torch.zeros(7), _quadratic_fitness, generations=3, pairs=4, sigma=0.1, lr=0.05, desc=None)
    torch.testing.assert_close(got["phi"], single.phi)
    assert got["fitness"] == pytest.approx(single.history["fitness_mean"])


def test_nes_gradient_checks_shapes():
    noise = antithetic_noise(3, 4, seed=0, generation=0)
    assert torch.equal(noise, antithetic_noise(3, 4, seed=0, generation=0))
    members = nes_members(torch.zeros(4), noise, 0.5)
    assert members.shape == (6, 4) and torch.equal(members[:3], -members[3:])
    with pytest.raises(ValueError, match="fitness"):
        nes_gradient(noise, torch.zeros(5), 0.1)


# ------------------------------------------------------------------------------ tasks, population, baselines


def test_vmapped_population_fitness_equals_a_per_member_loop(family):
    fam, _, _ = family
    cfg = L3RSConfig(n_layers=len(fam.model.names), base_lr=1e-2)
    phis = init_phi(cfg) + 0.05 * torch.randn(4, cfg.dim, generator=torch.Generator().manual_seed(0))
    task = fam.sample("train", 0)
    vmapped = population_losses(fam.model, phis, cfg, task, steps=6, batch_size=16, chunk_size=3)
    looped = population_losses(fam.model, phis, cfg, task, steps=6, batch_size=16, vectorize=False)
    torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-6)
    # The same run through the single-task path (finetune with the pure transform).
    hist = finetune(fam.model, l3rs(phis[1], cfg, total_steps=6, segments=fam.model.segments()), task, steps=6,
                    batch_size=16, eval_every=6)
    assert hist.train_loss.shape == (6,)
    fit = population_fitness(fam.model, phis, cfg, [task, fam.sample("train", 1)], steps=6, batch_size=16)
    assert fit.shape == (4,) and torch.isfinite(fit).all()


def test_tasks_are_seeded_pools_disjoint_and_backbones_cached(family):
    fam, cache, data = family
    a, b = fam.sample("train", 3), fam.sample("train", 3)
    assert torch.equal(a.theta0, b.theta0) and a.classes == b.classes and len(a.train) == 100
    assert set(fam.sample("test", 3).classes) <= {4, 5} and set(a.classes) <= {2, 3}
    files = list(cache.iterdir())
    assert len(files) == 1
    again = pretrain_backbone("mlp", data, [0, 1], steps=60, lr=1e-2, batch_size=64, cache_dir=cache,
                              model_kwargs={"hidden": (16,)}, desc=None)
    assert all(torch.equal(again[k], fam.backbone[k]) for k in again) and len(list(cache.iterdir())) == 1
    # The backbone part of theta0 is the pretrained one; the head is fresh.
    mask = fam.head_mask().bool()
    assert mask.sum() == 16 * 2 + 2 and not torch.equal(a.theta0[mask], fam.sample("train", 4).theta0[mask])


def test_baselines_and_head_only_freeze_the_backbone(family):
    fam, _, _ = family
    mask = fam.head_mask()
    factories = baseline_factories(10, mask)
    assert set(factories) == {"Adam (cosine)", "Adam (const)", "SGD-momentum (cosine)", "Adam (cosine, head)",
                              "Adam (const, head)"}
    task = fam.sample("test", 0)
    hist = finetune(fam.model, factories["Adam (const, head)"](1e-2), task, steps=5, batch_size=16, eval_every=5)
    moved = hist.theta != task.theta0
    assert moved[mask.bool()].any() and not moved[~mask.bool()].any()
    with pytest.raises(ValueError, match="split"):
        fam.sample("val", 0)
    assert head_only is not None
