"""P-BFGS / P⁺-BFGS: the BFGS algebra, the Armijo search, the P⁺ momentum part, the training loop,
the torch.optim adapter and argument validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_lib.data import ArrayData, BatchSampler, random_quadratic
from l2o_lib.functional import FlatModel
from l2o_lib.optim import momentum
from l2o_lib.pbfgs import (PBFGS, LineSearchTransform, PBFGSState, batched_train_loss, bfgs_update,
                           line_search_step, pbfgs, train_pbfgs)
from l2o_lib.subspace import Subspace, dldr, random_subspace, sample_trajectory

F64 = torch.float64


def mlp(seed=0, dtype=torch.float32, batchnorm=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(64, 32)] + ([nn.BatchNorm1d(32)] if batchnorm else []) + [nn.ReLU(), nn.Linear(32, 10)]
    return nn.Sequential(*layers).to(dtype)


class FixedBatches:
    """A sampler replaying a fixed list of batches (so two paths see the same data)."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def sample(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b


def batches_of(x, y, n, size=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        i = torch.randint(len(x), (size,), generator=g)
        out.append((x[i].to(dtype), y[i]))
    return out


def identity_subspace(dim, dtype=F64):
    return Subspace(torch.zeros(dim, dtype=dtype), torch.eye(dim, dtype=dtype))


def quadratic_in_subspace(D, d, cond, seed):
    """A quadratic, a random d-dim subspace through x0, its projected Hessian and restricted min."""
    q = random_quadratic(D, cond=cond, seed=seed, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=F64))[0].T.contiguous()
    x0 = torch.randn(D, generator=g, dtype=F64)
    H = basis @ q.A @ basis.T
    z = torch.linalg.solve(H, basis @ (q.b - q.A @ x0))
    return q, Subspace(x0.clone(), basis), x0, H, q.loss(x0 + z @ basis)


# ----------------------------------------------------------------------- quadratic behaviour
@pytest.mark.parametrize("D,d,cond,seed", [(6, 6, 10.0, 0), (20, 6, 10.0, 1), (30, 10, 50.0, 3)])
def test_converges_on_quadratic_and_B_approaches_inverse_projected_hessian(D, d, cond, seed):
    q, sub, x0, H, fmin = quadratic_in_subspace(D, d, cond, seed)
    method = pbfgs(sub)
    theta, state = x0.clone(), method.init(x0)
    for k in range(3 * d):
        s_used = state.prev_s  # the step the update at k pairs with y
        delta, state, info = method.update(q.grad(theta), state, theta, k, q.loss)
        theta = theta + delta
        if q.loss(theta) - fmin < 1e-10:
            break
    assert q.loss(theta) - fmin < 1e-8, f"not converged in {3 * d} iterations"
    # Moves stay in x0 + span(basis).
    assert torch.allclose(sub.orthogonal_part(theta - x0), torch.zeros(D, dtype=F64), atol=1e-12)
    # BFGS learned the curvature: B ≈ (basis A basisᵀ)⁻¹ (starts at I, relative error 1 to 4 here).
    Hinv = torch.linalg.inv(H)
    assert torch.linalg.matrix_norm(state.B - Hinv, 2) / torch.linalg.matrix_norm(Hinv, 2) < 0.05
    # Hessian action on the latest pair: B H s = s (y = H s on a quadratic, up to rounding in y).
    assert not info["skipped"]
    assert torch.allclose(state.B @ (H @ s_used), s_used, atol=1e-6 * s_used.norm(), rtol=0)


def test_bfgs_update_secant_symmetry_positive_definite_and_product_form():
    g = torch.Generator().manual_seed(0)
    d = 7
    M = torch.randn(d, d, generator=g, dtype=F64)
    B = M @ M.T + 0.1 * torch.eye(d, dtype=F64)
    for _ in range(5):
        s = torch.randn(d, generator=g, dtype=F64)
        y = s + 0.3 * torch.randn(d, generator=g, dtype=F64)
        assert y @ s > 0
        new = bfgs_update(B, s, y)
        assert torch.allclose(new @ y, s, atol=1e-10, rtol=0)
        assert torch.equal(new, new.T)
        assert torch.linalg.eigvalsh(new).min() > 0
        rho = 1 / (y @ s)
        V = torch.eye(d, dtype=F64) - rho * torch.outer(y, s)
        assert torch.allclose(new, V.T @ B @ V + rho * torch.outer(s, s), atol=1e-10, rtol=1e-10)
        B = new


def test_state_B_after_one_step_satisfies_secant_with_actual_step():
    q, sub, x0, H, _ = quadratic_in_subspace(12, 5, 10.0, 4)
    method = pbfgs(sub)
    theta, state = x0.clone(), method.init(x0)
    delta, state, _ = method.update(q.grad(theta), state, theta, 0, q.loss)
    g0, s = sub.project_grad(q.grad(theta)), sub.project_grad(delta)
    assert torch.allclose(state.prev_s, s, atol=1e-12)  # s̃ is the subspace step actually taken
    theta = theta + delta
    _, state, info = method.update(q.grad(theta), state, theta, 1, q.loss)
    y = sub.project_grad(q.grad(theta)) - g0
    assert not info["skipped"]
    assert torch.allclose(state.B @ y, s, atol=1e-10)
    assert torch.equal(state.B, state.B.T) and torch.linalg.eigvalsh(state.B).min() > 0


def _first_step(theta0, loss):
    """Step 0 on f = 0.5‖θ‖² (α = 1 lands on 0): returns the method, the state and s̃ = -θ0."""
    method = pbfgs(identity_subspace(len(theta0)))
    delta, state, info = method.update(theta0.clone(), method.init(theta0), theta0, 0, loss)
    assert info["alpha"] == 1.0
    return method, state, theta0 + delta


@pytest.mark.parametrize("kind", ["negative", "zero", "near_orthogonal"])
def test_update_skipped_when_curvature_too_small_and_B_unchanged(kind):
    theta0 = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    loss = lambda th: 0.5 * th @ th
    method, state, theta1 = _first_step(theta0, loss)
    s = state.prev_s
    u = torch.tensor([2.0, -1.0, 0.0], dtype=F64)  # u ⟂ s
    y = {"negative": -s, "zero": torch.zeros(3, dtype=F64),
         # yᵀs ≈ 1.4e-8 passes the reference's absolute 1e-20 test, but cos ∠(y, s) ≈ 1e-12
         "near_orthogonal": 1e3 * u + 1e-9 * s}[kind]
    if kind == "near_orthogonal":
        assert y @ s > 1e-20 and y @ s < 1e-10 * y.norm() * s.norm()
    B_before = state.B.clone()
    _, state, info = method.update(state.prev_gz + y, state, theta1, 1, loss)
    assert info["skipped"]
    assert torch.equal(state.B, B_before)


def test_update_is_scale_aware_not_absolute():
    # Aligned y and s of tiny magnitude: yᵀs = 1.4e-23 < 1e-20, which the reference would skip.
    theta0 = 1e-12 * torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    loss = lambda th: 0.5 * th @ th
    method, state, theta1 = _first_step(theta0, loss)
    s = state.prev_s
    y = 2.0 * s
    assert 0 < y @ s < 1e-20
    _, state, info = method.update(state.prev_gz + y, state, theta1, 1, loss)
    assert not info["skipped"]
    assert torch.allclose(state.B @ y, s, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------------- line search
def _overshoot():
    # f = 5‖θ‖²: with B = I the unit step θ - 10θ overshoots; Armijo needs α ≤ 0.12.
    sub = identity_subspace(2)
    theta = torch.tensor([1.0, -1.0], dtype=F64)
    loss = lambda th: 5.0 * th @ th
    return sub, theta, loss, 10.0 * theta


def test_armijo_backtracks_by_powers_of_beta_to_first_acceptable_step():
    sub, theta, loss, grad = _overshoot()
    calls = []
    counted = lambda th: calls.append(1) or loss(th)
    method = pbfgs(sub, c=0.4, beta=0.55)
    delta, state, info = method.update(grad, method.init(theta), theta, 0, counted, loss(theta))
    assert info["alpha"] == pytest.approx(0.55 ** 4, rel=1e-15)
    assert info["evals"] == len(calls) == 5  # 1, β, β², β³ rejected; β⁴ accepted
    assert info["accepted"] and not info["skipped"]
    slope = -(grad @ grad)
    a = info["alpha"]
    assert loss(theta + delta) <= loss(theta) + 0.4 * a * slope  # Armijo holds …
    assert loss(theta - (a / 0.55) * grad) > loss(theta) + 0.4 * (a / 0.55) * slope  # … not one step earlier
    assert torch.allclose(delta, -a * grad, atol=1e-15)


def test_loss0_is_computed_when_not_given():
    sub, theta, loss, grad = _overshoot()
    method = pbfgs(sub)
    _, _, info = method.update(grad, method.init(theta), theta, 0, loss)
    assert info["evals"] == 6


def test_failed_line_search_takes_zero_step_and_next_update_is_skipped():
    sub, theta, loss, grad = _overshoot()
    method = pbfgs(sub, max_backtracks=5)
    never = lambda th: torch.tensor(float("inf"), dtype=F64)
    delta, state, info = method.update(grad, method.init(theta), theta, 0, never, loss(theta))
    assert info == {"alpha": 0.0, "evals": 5, "skipped": False, "accepted": False, "reset": False}
    assert torch.equal(delta, torch.zeros(2, dtype=F64)) and torch.equal(state.prev_s, torch.zeros(2, dtype=F64))
    _, state2, info2 = method.update(grad * 0.5, state, theta, 1, loss)
    assert info2["skipped"] and torch.equal(state2.B, state.B)


def test_zero_projected_gradient_takes_zero_step_without_evaluations():
    sub, theta, loss, _ = _overshoot()
    method = pbfgs(sub)
    delta, _, info = method.update(torch.zeros(2, dtype=F64), method.init(theta), theta, 0, loss, loss(theta))
    assert torch.equal(delta, torch.zeros(2, dtype=F64)) and info["evals"] == 0 and info["accepted"]
    assert not info["reset"]


def test_non_descent_direction_resets_B_to_identity():
    sub, theta, loss, grad = _overshoot()
    method = pbfgs(sub)
    state = method.init(theta)._replace(B=-torch.eye(2, dtype=F64))  # p = +g̃ would go uphill
    delta, new_state, info = method.update(grad, state, theta, 0, loss, loss(theta))
    assert info["reset"] and info["accepted"]
    assert torch.equal(new_state.B, torch.eye(2, dtype=F64))
    assert torch.allclose(delta, -info["alpha"] * grad, atol=1e-15)


def test_batched_candidates_match_sequential_and_continue_sequentially():
    sub, theta, loss, grad = _overshoot()
    many_calls = []

    def loss_many(thetas):
        many_calls.append(len(thetas))
        return torch.stack([loss(t) for t in thetas])

    method = pbfgs(sub, candidates=3)
    delta, _, info = method.update(grad, method.init(theta), theta, 0, loss, loss(theta), loss_many=loss_many)
    # 1, β, β² fail in the batch; β³ then β⁴ are tried one by one.
    assert many_calls == [3] and info["evals"] == 5
    assert info["alpha"] == pytest.approx(0.55 ** 4, rel=1e-15)
    method = pbfgs(sub, candidates=8)
    delta8, _, info8 = method.update(grad, method.init(theta), theta, 0, loss, loss(theta), loss_many=loss_many)
    assert many_calls == [3, 8] and info8["evals"] == 8 and torch.equal(delta8, delta)


# ----------------------------------------------------------------------- P⁺ on a real model
def _run(model, method, batches, theta, steps):
    state, thetas, infos = method.init(theta), [], []
    buffers = model.init_buffers()
    for k in range(steps):
        theta, state, _, info = line_search_step(model, method, theta, state, k, batches[k], buffers)
        thetas.append(theta)
        infos.append(info)
    return thetas, infos, state


def test_pplus_with_zero_alpha_equals_pbfgs_exactly(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp())
    sub = random_subspace(model.dim, 6, seed=1)
    batches = batches_of(x, y, 5)
    theta0 = model.flatten()
    plain, _, _ = _run(model, pbfgs(sub), batches, theta0, 5)
    plus, _, state = _run(model, pbfgs(sub, plus=True, alpha=0.0), batches, theta0, 5)
    assert state.buf.shape == (model.dim,) and state.buf.abs().sum() > 0  # the buffer was really kept
    for a, b in zip(plain, plus):
        assert torch.equal(a, b)


def test_pplus_adds_momentum_of_orthogonal_gradient(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp(dtype=F64))
    sub = random_subspace(model.dim, 6, seed=2).to(dtype=F64)
    batches = batches_of(x, y, 3, dtype=F64)
    gamma, alpha = 0.9, 0.05
    plus, plain = pbfgs(sub, plus=True, gamma=gamma, alpha=alpha), pbfgs(sub)
    theta, state = model.flatten(), plus.init(model.flatten())
    buf = None
    for k, batch in enumerate(batches):
        loss0, grad = model.loss_and_grad(theta, batch)
        loss_fn = lambda th: model.loss(th, batch)
        delta, new_state, _ = plus.update(grad, state, theta, k, loss_fn, loss0)
        # The subspace part, from the same state with the plain method:
        sub_delta, _, _ = plain.update(grad, state._replace(buf=theta.new_zeros(0)), theta, k, loss_fn, loss0)
        g_hat = grad - sub.basis.T @ (sub.basis @ grad)
        buf = g_hat if k == 0 else gamma * buf + g_hat
        assert torch.allclose(new_state.buf, buf, atol=1e-14)
        assert torch.allclose(delta - sub_delta, -alpha * buf, atol=1e-13)
        # orthogonal to the subspace (to the float32 orthonormality of random_subspace's basis)
        assert (sub.basis @ buf).norm() < 1e-6 * buf.norm()
        theta, state = theta + delta, new_state


# ----------------------------------------------------------------------------- training loop
def test_train_pbfgs_in_dldr_subspace_decreases_loss(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp(seed=3))
    sampler = BatchSampler(ArrayData(x, y), 64, seed=0)
    theta0 = model.flatten()
    _, traj = sample_trajectory(model, momentum(lr=0.1, momentum=0.9), sampler, steps=30, every=3, theta=theta0)
    sub = dldr(traj.checkpoints, 8)
    hist = train_pbfgs(model, pbfgs(sub), BatchSampler(ArrayData(x, y), 64, seed=1), steps=30, theta=theta0,
                       eval_data=(x, y), eval_every=15)
    assert hist.test_loss[-1] < 0.6 * hist.test_loss[0]
    assert hist.train_loss[-5:].mean() < 0.6 * hist.train_loss[:2].mean()
    assert len(hist.extra["alphas"]) == len(hist.extra["line_search_evals"]) == 30
    assert all(e >= 1 for e in hist.extra["line_search_evals"])
    assert isinstance(hist.extra["skipped_updates"], int)
    # Every move stays in theta0 + span(basis).
    off = sub.orthogonal_part(hist.theta - theta0)
    assert off.norm() < 1e-4 * (hist.theta - theta0).norm()


def test_sample_trajectory_on_step_sees_every_step_after_its_checkpoint(digits_xy):
    # Notebook 02 clocks its phases through this hook; it must see each step once, in order, with the
    # checkpoints kept as without it.
    x, y = digits_xy
    model = FlatModel(mlp(seed=3))
    seen = []
    make = lambda: BatchSampler(ArrayData(x, y), 64, seed=0)
    _, traj = sample_trajectory(model, momentum(lr=0.1, momentum=0.9), make(), steps=12, every=3, sample_until=6,
                                on_step=lambda k, th: seen.append((k, th.clone())))
    assert [k for k, _ in seen] == list(range(1, 13))
    _, plain = sample_trajectory(model, momentum(lr=0.1, momentum=0.9), make(), steps=12, every=3, sample_until=6)
    assert torch.equal(traj.checkpoints, plain.checkpoints) and traj.steps == [0, 3, 6]
    assert torch.equal(seen[5][1], traj.checkpoints[2])  # step 6's hook sees the weights just checkpointed


def test_line_search_trials_do_not_touch_batchnorm_statistics(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp(batchnorm=True))
    sub = random_subspace(model.dim, 4, seed=0)
    batches = batches_of(x, y, 3)
    buffers = model.init_buffers()
    hist = train_pbfgs(model, pbfgs(sub), FixedBatches(batches), steps=3, buffers=buffers)
    assert sum(hist.extra["line_search_evals"]) >= 3
    assert int(buffers["1.num_batches_tracked"]) == 3  # the gradient passes only
    # Same statistics as three train-mode passes at the visited points.
    ref, theta = model.init_buffers(), model.flatten()
    thetas = [theta]
    state, method = pbfgs(sub).init(theta), pbfgs(sub)
    for k in range(2):
        theta, state, _, _ = line_search_step(model, method, theta, state, k, batches[k], model.init_buffers())
        thetas.append(theta)
    for th, b in zip(thetas, batches):
        model.loss(th, b, ref, train=True)
    assert torch.allclose(buffers["1.running_mean"], ref["1.running_mean"], atol=1e-6)


def test_batched_train_loss_matches_sequential_and_leaves_buffers(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp(batchnorm=True))
    buffers = model.init_buffers()
    before = {k: v.clone() for k, v in buffers.items()}
    thetas = model.flatten() + 0.01 * torch.randn(3, model.dim, generator=torch.Generator().manual_seed(0))
    batch = (x[:64], y[:64])
    many = batched_train_loss(model, thetas, batch, buffers)
    seq = torch.stack([model.loss(t, batch, {k: v.clone() for k, v in buffers.items()}, train=True) for t in thetas])
    assert torch.allclose(many, seq, atol=1e-5)
    assert all(torch.equal(buffers[k], before[k]) for k in buffers)


def test_train_pbfgs_batched_candidates_follow_sequential_trajectory(digits_xy):
    x, y = digits_xy
    model = FlatModel(mlp(dtype=F64))
    sub = random_subspace(model.dim, 6, seed=3).to(dtype=F64)
    batches = batches_of(x, y, 4, dtype=F64)
    seq = train_pbfgs(model, pbfgs(sub), FixedBatches(batches), steps=4)
    bat = train_pbfgs(model, pbfgs(sub, candidates=4), FixedBatches(batches), steps=4)
    assert seq.extra["alphas"] == bat.extra["alphas"]
    assert torch.allclose(seq.theta, bat.theta, atol=1e-10)


# ------------------------------------------------------------------------------- the adapter
def _closure(opt, module, batch):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(module(batch[0]), batch[1])
        loss.backward()
        return loss
    return closure


def test_adapter_follows_functional_path_and_state_dict_round_trips(digits_xy):
    x, y = digits_xy
    module = mlp(seed=5)
    model = FlatModel(copy.deepcopy(module))
    sub = random_subspace(model.dim, 8, seed=5)
    batches = batches_of(x, y, 7)
    kwargs = dict(plus=True, alpha=0.02)
    functional, infos, _ = _run(model, pbfgs(sub, **kwargs), batches, model.flatten(), 7)

    opt = PBFGS(module.parameters(), sub, **kwargs)
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    for k in range(5):
        loss = opt.step(_closure(opt, module, batches[k]))
        assert torch.allclose(loss, F.cross_entropy(model.apply(functional[k - 1] if k else model.flatten(),
                                                                batches[k][0]), batches[k][1]), atol=1e-5)
        assert opt.last_info["alpha"] == infos[k]["alpha"]
        assert torch.allclose(flat(module), functional[k], atol=1e-5)
    # .grad is the gradient the last step used, not a trial's.
    _, g = model.loss_and_grad(functional[3], batches[4])
    assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in module.parameters()]), g, atol=1e-6)

    saved = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(module)
    opt2 = PBFGS(twin.parameters(), sub, **kwargs)
    opt2.load_state_dict(saved)
    slot = opt2.state[next(iter(twin.parameters()))]
    assert slot["step"] == 5 and slot["B"].dtype == F64
    assert torch.equal(slot["B"], opt.state[next(iter(module.parameters()))]["B"])
    for k in (5, 6):
        opt.step(_closure(opt, module, batches[k]))
        opt2.step(_closure(opt2, twin, batches[k]))
        assert torch.equal(flat(module), flat(twin))
    assert torch.allclose(flat(module), functional[6], atol=1e-5)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,name", [
    (dict(c=0.0), "c"), (dict(c=1.0), "c"), (dict(c=1.5), "c"),
    (dict(beta=0.0), "beta"), (dict(beta=1.0), "beta"),
    (dict(alpha=-0.1), "alpha"), (dict(gamma=1.0), "gamma"), (dict(gamma=-0.1), "gamma"),
    (dict(max_backtracks=0), "max_backtracks"), (dict(min_curvature=-1.0), "min_curvature"),
    (dict(candidates=0), "candidates"),
])
def test_bad_hyperparameters_raise_naming_them(kwargs, name):
    sub = identity_subspace(3)
    with pytest.raises(ValueError, match=name):
        pbfgs(sub, **kwargs)
    with pytest.raises(ValueError, match=name):
        PBFGS([torch.zeros(3, dtype=F64, requires_grad=True)], sub, **kwargs)


def test_wrong_sizes_and_types_raise():
    sub = identity_subspace(3)
    method = pbfgs(sub)
    loss = lambda th: th @ th
    with pytest.raises(ValueError, match="theta"):
        method.init(torch.zeros(4, dtype=F64))
    state = method.init(torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="grad"):
        method.update(torch.zeros(4, dtype=F64), state, torch.zeros(3, dtype=F64), 0, loss)
    with pytest.raises(ValueError, match="theta"):
        method.update(torch.zeros(3, dtype=F64), state, torch.zeros(2, dtype=F64), 0, loss)
    with pytest.raises(ValueError, match="subspace.to"):  # dtype mismatch with the basis
        method.update(torch.zeros(3), state, torch.zeros(3), 0, loss)
    with pytest.raises(ValueError, match="subspace"):
        pbfgs(torch.eye(3))
    with pytest.raises(ValueError, match="subspace"):
        PBFGS([torch.zeros(4, dtype=F64, requires_grad=True)], sub)
    with pytest.raises(ValueError, match="unknown"):
        PBFGS([torch.zeros(3, dtype=F64, requires_grad=True)], sub, lr=0.1)
    opt = PBFGS([torch.zeros(3, dtype=F64, requires_grad=True)], sub)
    with pytest.raises(ValueError, match="closure"):
        opt.step(None)
    with pytest.raises(ValueError, match="method"):
        train_pbfgs(FlatModel(mlp()), momentum(), FixedBatches([]), steps=1)
    assert isinstance(method, LineSearchTransform) and isinstance(state, PBFGSState)
