"""Subspaces: DLDR (against planted subspaces, an SVD and scikit-learn's PCA), random subspaces,
coordinates, the † optimizers and trajectory sampling."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import adam, momentum, sgd
from l2o_lib.subspace import (DaggerState, Subspace, Trajectory, dagger, dldr, random_subspace,
                              sample_trajectory)
from l2o_lib.training import train_flat

F64 = torch.float64


# ----------------------------------------------------------------------------------- helpers
def orthonormal(D, k, seed):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=F64))
    return q


def planted(t, D, k, *, seed=0, noise=0.0, offset=0.0):
    """Checkpoints ``mean + coeffs @ Qᵀ (+ noise)`` in float32, with ``Q`` (D, k) orthonormal and
    well-separated coefficient scales; returns the checkpoints, Q and the centred coefficients."""
    g = torch.Generator().manual_seed(seed)
    q = orthonormal(D, k, seed + 1)
    scales = 2.0 ** -torch.arange(k, dtype=F64) * 4
    coeffs = torch.randn(t, k, generator=g, dtype=F64) * scales
    mean = offset * torch.randn(D, generator=g, dtype=F64)
    x = mean + coeffs @ q.T + noise * torch.randn(t, D, generator=g, dtype=F64)
    return x.float(), q, coeffs - coeffs.mean(0)


def random_walk(t, D, *, seed=0, offset=0.1):
    """A trajectory with structure: cumulative sums of random steps from a random start."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randn(t, D, generator=g) * 0.01
    return offset * torch.randn(D, generator=g) + steps.cumsum(0)


def cosines(basis, q):
    """Cosines of the principal angles between the rows of ``basis`` and the columns of ``q``."""
    return torch.linalg.svdvals(basis.to(F64) @ q.to(F64))


def align(a, b):
    """``a`` with each row's sign flipped to match the corresponding row of ``b``."""
    return a * torch.sign((a * b).sum(-1, keepdim=True))


def orth_error(basis):
    b = basis.to(F64)
    return torch.linalg.matrix_norm(b @ b.T - torch.eye(len(b), dtype=F64)).item()


def centred64(x):
    x = torch.as_tensor(np.asarray(x)).to(F64)
    return x - x.mean(0)


def small_model(seed=0):
    return FlatModel(build_model("mlp", (64,), 10, seed=seed, hidden=(16,)))


# ------------------------------------------------------------------------------------- DLDR
@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_dldr_recovers_planted_subspace(offset):
    x, q, c = planted(25, 300, 4, offset=offset)
    sub = dldr(x, 4)
    assert sub.basis.shape == (4, 300) and sub.origin.shape == (300,)
    assert cosines(sub.basis, q).min() > 1 - 1e-5
    # σ_i are the singular values of the centred coefficients; the origin is the mean.
    assert torch.allclose(sub.singular_values.to(F64), torch.linalg.svdvals(c), rtol=1e-4)
    assert torch.allclose(sub.origin, x.to(F64).mean(0).float(), atol=1e-6)
    # The planted directions carry all the variance.
    assert abs(sub.explained_variance_ratio.sum().item() - 1) < 1e-5
    # Every checkpoint is reproduced by its coordinates.
    assert torch.allclose(sub.reconstruct(x), x, atol=1e-4 * (1 + offset))


def test_dldr_with_small_noise_still_finds_the_subspace():
    x, q, _ = planted(30, 400, 3, noise=1e-4, seed=3)
    assert cosines(dldr(x, 3).basis, q).min() > 1 - 1e-4


def test_explained_variance_ratios():
    x = random_walk(12, 60, seed=1)
    full = dldr(x, 11).explained_variance_ratio  # d = t - 1
    assert full.shape == (11,)
    assert torch.all(full[1:] <= full[:-1])
    assert torch.all((full >= 0) & (full <= 1))
    assert abs(full.sum().item() - 1) < 1e-5
    # d < t - 1: the top eigenvalue shares of the D × D covariance, computed independently.
    xc = centred64(x).numpy()
    evals = np.linalg.eigvalsh(xc.T @ xc)[::-1]
    ratio = dldr(x, 5).explained_variance_ratio.numpy()
    np.testing.assert_allclose(ratio, evals[:5] / evals.sum(), atol=1e-6, rtol=1e-5)
    assert ratio.sum() < 1


def test_gram_route_matches_svd_and_sklearn_pca():
    x = random_walk(20, 500, seed=2)
    sub = dldr(x, 8)
    # SVD of the centred checkpoints (float64).
    _, s, vh = torch.linalg.svd(centred64(x), full_matrices=False)
    assert cosines(sub.basis, vh[:8].T).min() > 1 - 1e-5
    row_cos = (sub.basis.to(F64) * vh[:8]).sum(1).abs()
    assert row_cos.min() > 1 - 1e-5  # direction by direction, not just the same span
    torch.testing.assert_close(sub.singular_values.to(F64), s[:8], rtol=1e-4, atol=0)
    # scikit-learn's PCA on the same checkpoints.
    pca = PCA(n_components=8, svd_solver="full").fit(x.numpy().astype(np.float64))
    np.testing.assert_allclose(sub.explained_variance_ratio.numpy(), pca.explained_variance_ratio_,
                               rtol=1e-4, atol=1e-6)
    comps = torch.as_tensor(pca.components_)
    np.testing.assert_allclose(align(sub.basis.to(F64), comps).numpy(), comps.numpy(), atol=1e-4)
    np.testing.assert_allclose(sub.origin.numpy(), pca.mean_, atol=1e-6)


@pytest.mark.parametrize("case", ["walk_full_rank", "planted_offset", "walk_far_from_zero"])
def test_basis_rows_are_orthonormal(case):
    if case == "walk_full_rank":
        x, d = random_walk(16, 800, seed=4), 15
    elif case == "planted_offset":
        x, d = planted(20, 800, 6, offset=10.0, seed=5)[0], 6
    else:
        x, d = random_walk(16, 800, seed=6, offset=3.0), 10
    assert orth_error(dldr(x, d).basis) < 1e-5


def test_blockwise_and_memmap_give_the_same_basis(tmp_path):
    x = random_walk(15, 2003, seed=7)  # D not a multiple of any block size
    ref = dldr(x, 6)
    for block in (7, 1000, 2003, 5000):
        sub = dldr(x, 6, block=block)
        torch.testing.assert_close(align(sub.basis, ref.basis), ref.basis, atol=1e-6, rtol=0)
        torch.testing.assert_close(sub.singular_values, ref.singular_values, rtol=1e-6, atol=0)
        torch.testing.assert_close(sub.explained_variance_ratio, ref.explained_variance_ratio, rtol=1e-6, atol=0)
        torch.testing.assert_close(sub.origin, ref.origin, atol=1e-7, rtol=0)
    on_disk = Trajectory(20, 2003, store=tmp_path / "traj.npy")
    in_memory = Trajectory(20, 2003)
    for k, row in enumerate(x):
        on_disk.append(row, k)
        in_memory.append(row, k)
    assert isinstance(on_disk.checkpoints, np.memmap) and on_disk.checkpoints.shape == (15, 2003)
    assert isinstance(in_memory.checkpoints, torch.Tensor)
    a = dldr(in_memory.checkpoints, 6)
    for block in (None, 7):
        b = dldr(on_disk.checkpoints, 6, block=block)
        torch.testing.assert_close(align(b.basis, a.basis), a.basis, atol=1e-6, rtol=0)
        torch.testing.assert_close(b.origin, a.origin)
        torch.testing.assert_close(b.singular_values, a.singular_values, rtol=1e-6, atol=0)
    torch.testing.assert_close(align(a.basis, ref.basis), ref.basis, atol=1e-6, rtol=0)


def test_dldr_origin_and_device_arguments():
    x = random_walk(10, 100, seed=8)
    origin = torch.randn(100)
    sub = dldr(x, 3, origin=origin, device="cpu")
    assert torch.equal(sub.origin, origin)
    torch.testing.assert_close(align(sub.basis, dldr(x, 3).basis), dldr(x, 3).basis)
    x64 = x.double()
    sub64 = dldr(x64, 3)  # float64 checkpoints are accepted (the basis is float32)
    assert sub64.basis.dtype == torch.float32
    torch.testing.assert_close(align(sub64.basis, sub.basis), sub.basis, atol=1e-6, rtol=0)
    # The checkpoints are read, never modified (not even when no conversion is needed).
    assert torch.equal(x64, x.double())
    array = x.double().numpy()
    dldr(array, 3)
    np.testing.assert_array_equal(array, x.double().numpy())


def test_dldr_rejects_bad_arguments():
    x = random_walk(10, 50, seed=9)
    with pytest.raises(ValueError, match=r"d=10 must be <= t - 1 = 9"):
        dldr(x, 10)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=r"^d must"):
            dldr(x, bad)
    with pytest.raises(ValueError, match="checkpoints must be"):
        dldr(x[0], 1)
    with pytest.raises(ValueError, match="checkpoints must be"):
        dldr(x.reshape(2, 5, 50), 1)
    with pytest.raises(ValueError, match="origin"):
        dldr(x, 2, origin=torch.zeros(49))
    with pytest.raises(ValueError, match="block"):
        dldr(x, 2, block=0)
    bad = x.clone()
    bad[3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        dldr(bad, 2)


@pytest.mark.parametrize("offset", [0.0, 10.0])
def test_dldr_rejects_d_above_the_rank(offset):
    x, _, _ = planted(20, 5000, 3, offset=offset, seed=10)  # rank 3 after centring
    dldr(x, 3)
    with pytest.raises(ValueError, match="span fewer than d=4"):
        dldr(x, 4)
    with pytest.raises(ValueError, match="span fewer"):
        dldr(torch.ones(5, 30), 1)  # identical checkpoints: nothing to span


# ------------------------------------------------------------------------- the Subspace class
def test_project_lift_round_trip_and_orthogonal_part():
    D, d = 50, 5
    sub = random_subspace(D, d, origin=torch.randn(D), seed=11)
    z = torch.randn(3, 4, d)
    x = sub.lift(z)  # points in the subspace, with leading batch dims
    assert x.shape == (3, 4, D)
    torch.testing.assert_close(sub.project(x), z, atol=1e-5, rtol=0)
    torch.testing.assert_close(sub.lift(sub.project(x)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(sub.reconstruct(x), x, atol=1e-5, rtol=0)
    # Batched projection equals row-by-row projection.
    y = torch.randn(3, 4, D)
    rows = torch.stack([sub.project(v) for v in y.reshape(-1, D)]).reshape(3, 4, d)
    torch.testing.assert_close(sub.project(y), rows)
    # The orthogonal part has no component along the basis and completes the projection.
    v = torch.randn(6, D)
    w = sub.orthogonal_part(v)
    assert (w @ sub.basis.T).abs().max() < 1e-5
    torch.testing.assert_close(w + sub.lift_delta(sub.project_grad(v)), v, atol=1e-6, rtol=0)
    # reconstruct is the closest point: the residual is orthogonal to the subspace.
    assert ((sub.reconstruct(y) - y) @ sub.basis.T).abs().max() < 1e-5
    assert sub.dim == d and sub.ambient_dim == D


def test_subspace_shape_errors():
    sub = random_subspace(10, 3)
    with pytest.raises(ValueError, match="D=10"):
        sub.project(torch.zeros(9))
    with pytest.raises(ValueError, match="d=3"):
        sub.lift(torch.zeros(4))
    with pytest.raises(ValueError, match="basis must be"):
        Subspace(torch.zeros(10), torch.zeros(3, 9))
    with pytest.raises(ValueError, match="basis must be"):
        Subspace(torch.zeros(10, 1), torch.zeros(3, 10))


def test_with_origin_and_to():
    sub = random_subspace(8, 2, seed=1)
    moved = sub.with_origin(torch.ones(8, dtype=F64))
    assert moved.basis is sub.basis and moved.origin.dtype == torch.float32
    assert torch.equal(moved.origin, torch.ones(8))
    assert sub.to(dtype=F64).basis.dtype == F64


def test_top_keeps_the_leading_directions_and_dldr_agrees():
    x, _, _ = planted(30, 400, 6, offset=0.0, seed=5)
    full = dldr(x, 6, origin=x[0])
    three = full.top(3)
    assert three.dim == 3 and three.origin is full.origin
    assert torch.equal(three.basis, full.basis[:3])
    assert torch.equal(three.explained_variance_ratio, full.explained_variance_ratio[:3])
    # the top 3 of a 6-d DLDR are the 3-d DLDR (same eigendecomposition)
    torch.testing.assert_close(three.basis, dldr(x, 3, origin=x[0]).basis, atol=1e-5, rtol=0)
    assert random_subspace(9, 2).top(1).explained_variance_ratio is None
    for bad in (0, 7, 2.5):
        with pytest.raises(ValueError, match="d"):
            full.top(bad)


def test_relative_error_is_zero_inside_one_orthogonal_and_scale_free():
    sub = random_subspace(40, 4, origin=torch.randn(40), seed=2)
    inside = sub.lift(torch.randn(5, 4))
    assert sub.relative_error(inside).abs().max() < 1e-5
    normal = torch.randn(40)
    normal = sub.orthogonal_part(normal)
    torch.testing.assert_close(sub.relative_error(sub.origin + 3 * normal), torch.tensor(1.0), atol=1e-5, rtol=0)
    # half in, half out: ‖out‖ / ‖in + out‖ (= 1/√2 for equal lengths)
    part = sub.lift_delta(torch.tensor([1.0, 0, 0, 0])) + normal / normal.norm()
    torch.testing.assert_close(sub.relative_error(sub.origin + 2 * part), torch.tensor(2 ** -0.5), atol=1e-5, rtol=0)
    assert sub.relative_error(sub.origin[None]).item() == 0.0  # the origin itself: 0, not 0 / 0


def test_random_subspace():
    a = random_subspace(200, 12, seed=3)
    assert a.basis.shape == (200, 12)[::-1] and a.basis.dtype == torch.float32
    assert orth_error(a.basis) < 1e-5
    assert torch.equal(a.origin, torch.zeros(200))
    assert torch.equal(random_subspace(200, 12, seed=3).basis, a.basis)  # seeded
    assert not torch.allclose(random_subspace(200, 12, seed=4).basis, a.basis)
    assert orth_error(random_subspace(7, 7, seed=0).basis) < 1e-5  # d = D is allowed
    origin = torch.randn(200)
    assert torch.equal(random_subspace(200, 12, origin=origin).origin, origin)
    through = random_subspace(200, 12, origin=origin.double())  # takes the basis's dtype
    assert through.origin.dtype == torch.float32
    torch.testing.assert_close(through.project(origin), torch.zeros(12))
    with pytest.raises(ValueError, match="d=8 must be <= ambient_dim=7"):
        random_subspace(7, 8)
    with pytest.raises(ValueError, match="^d must"):
        random_subspace(7, 0)
    with pytest.raises(ValueError, match="ambient_dim"):
        random_subspace(0, 1)


# ------------------------------------------------------------------------------ † optimizers
@pytest.mark.parametrize("name, make", [
    ("sgd", lambda: sgd(0.1)),
    ("momentum", lambda: momentum(0.05, 0.9)),
    ("adam", lambda: adam(1e-2)),
])
def test_dagger_with_identity_basis_equals_inner(digits_data, name, make):
    model = small_model()
    D = model.dim
    identity = Subspace(torch.zeros(D), torch.eye(D))
    plain = train_flat(model, make(), BatchSampler(digits_data, 32, seed=0), steps=40)
    dag = train_flat(model, dagger(make(), identity), BatchSampler(digits_data, 32, seed=0), steps=40)
    assert (dag.theta - plain.theta).abs().max().item() <= 1e-6
    np.testing.assert_allclose(dag.train_loss, plain.train_loss, rtol=0, atol=1e-6)
    assert plain.train_loss[-5:].mean() < plain.train_loss[:5].mean()  # it did train


def test_dagger_step_is_the_projected_step():
    sub = random_subspace(30, 4, origin=torch.randn(30), seed=2)
    tx = dagger(sgd(0.1), sub)
    theta = sub.lift(torch.randn(4))
    state = tx.init(theta)
    assert isinstance(state, DaggerState)
    torch.testing.assert_close(state.z, sub.project(theta))
    g = torch.randn(30)
    delta, new = tx.update(g, state, theta, 0)
    torch.testing.assert_close(delta, -0.1 * sub.basis.T @ (sub.basis @ g), atol=1e-6, rtol=0)
    torch.testing.assert_close(new.z, state.z - 0.1 * sub.basis @ g, atol=1e-6, rtol=0)
    torch.testing.assert_close(new.z, sub.project(theta + delta), atol=1e-5, rtol=0)


def test_dagger_iterates_stay_in_the_affine_subspace(digits_data):
    model = small_model(seed=1)
    theta0 = model.flatten()
    # A real low-dimensional subspace: DLDR of a short SGD trajectory, through the start.
    _, traj = sample_trajectory(model, sgd(0.1), BatchSampler(digits_data, 32, seed=1), steps=20, every=2)
    sub = dldr(traj.checkpoints, 5).with_origin(theta0)
    assert sub.dim == 5 < model.dim
    seen = []
    hist = train_flat(model, dagger(sgd(0.1), sub), BatchSampler(digits_data, 32, seed=2), steps=30,
                      theta=theta0, on_step=lambda k, th: seen.append(th))
    assert len(seen) == 30
    moved = torch.stack(seen) - theta0
    assert moved.norm(dim=1).min() > 1e-3  # it did move
    residual = sub.orthogonal_part(moved).norm(dim=1)
    assert residual.max().item() <= 1e-5 * max(1.0, moved.norm(dim=1).max().item())
    assert hist.train_loss[-5:].mean() < hist.train_loss[:5].mean()


# ------------------------------------------------------------------------------ trajectories
def test_sample_trajectory(digits_data, tmp_path):
    model = small_model(seed=2)
    theta0 = model.flatten()
    hist, traj = sample_trajectory(model, sgd(0.1), BatchSampler(digits_data, 32, seed=3), steps=12, every=4)
    assert len(traj) == 12 // 4 + 1 and traj.steps == [0, 4, 8, 12]
    ckpt = traj.checkpoints
    assert ckpt.shape == (4, model.dim)
    assert torch.equal(ckpt[0], theta0)
    assert torch.equal(ckpt[-1], hist.theta)
    # checkpoint k is the parameters after 4k steps
    part = train_flat(model, sgd(0.1), BatchSampler(digits_data, 32, seed=3), steps=4)
    assert torch.equal(ckpt[1], part.theta)
    assert len(torch.unique(ckpt, dim=0)) == 4

    path = tmp_path / "sub" / "traj.npy"
    hist2, on_disk = sample_trajectory(model, sgd(0.1), BatchSampler(digits_data, 32, seed=3), steps=12, every=4,
                                       store=path)
    assert path.exists()
    assert isinstance(on_disk.checkpoints, np.memmap)
    np.testing.assert_array_equal(np.asarray(on_disk.checkpoints), ckpt.numpy())
    np.testing.assert_array_equal(np.load(path)[: len(on_disk)], ckpt.numpy())
    assert torch.equal(hist2.theta, hist.theta)

    _, partial = sample_trajectory(model, sgd(0.1), BatchSampler(digits_data, 32, seed=3), steps=10, every=4,
                                   include_initial=False)
    assert len(partial) == 10 // 4 and partial.steps == [4, 8]
    with pytest.raises(ValueError, match="every"):
        sample_trajectory(model, sgd(0.1), BatchSampler(digits_data, 32, seed=3), steps=3, every=4)


def test_trajectory_capacity():
    traj = Trajectory(2, 3)
    traj.append(torch.zeros(3), 0)
    traj.append(torch.ones(3), 1)
    with pytest.raises(ValueError, match="full"):
        traj.append(torch.ones(3), 2)
    with pytest.raises(ValueError, match="capacity"):
        Trajectory(0, 3)


def test_sample_until_keeps_only_the_first_part():
    torch.manual_seed(0)
    fm = FlatModel(torch.nn.Linear(6, 3))
    x, y = torch.randn(64, 6), torch.randint(3, (64,))
    sampler = BatchSampler(ArrayData(x, y), 16, seed=0)
    history, traj = sample_trajectory(fm, sgd(lr=0.1), sampler, steps=20, every=4, sample_until=10)
    assert traj.steps == [0, 4, 8] and len(history.train_loss) == 20
    with pytest.raises(ValueError, match="sample_until"):
        sample_trajectory(fm, sgd(lr=0.1), sampler, steps=20, every=4, sample_until=30)
