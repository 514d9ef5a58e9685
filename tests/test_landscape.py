"""Loss landscapes: filter normalisation, planes, projection, batched grids against a per-point
loop, interpolation and input validation."""

import numpy as np
import pytest
import torch
from torch import nn

from l2o_lib import landscape as L
from l2o_lib.landscape import grids as LG, planes as LP
from l2o_lib.data import ArrayData
from l2o_lib.functional import FlatModel
from l2o_lib.landscape import (LandscapeGrid, Plane, auto_chunk_size, filter_normalized_direction, grid,
                               grid_values_at, interpolate, pca_plane, plane_through, project, random_plane)
from l2o_lib.models import build_model
from l2o_lib.subspace import Trajectory

F64 = torch.float64


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


def trained_bn_stats(module, seed=0):
    """Non-trivial BatchNorm running statistics, so eval mode differs from train mode."""
    g = torch.Generator().manual_seed(seed)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(2.0 * torch.randn(32, 1, 8, 8, generator=g) + 0.5)
    return module.eval()


@pytest.fixture
def model():
    return FlatModel(trained_bn_stats(small_cnn()))


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 1, 8, 8, generator=g), torch.randint(3, (24,), generator=g)


def parts(model, v):
    return dict(zip(model.names, (t.view(s) for t, s in zip(torch.split(v, model.numels), model.shapes))))


# ------------------------------------------------------------------------ filter normalisation
@pytest.mark.parametrize("build", [
    lambda: FlatModel(small_cnn()),
    lambda: FlatModel(build_model("convnet", (1, 8, 8), 5, seed=0, channels=(6, 4), kernel_sizes=(3, 3))),
])
def test_filter_norms_match_weight_filters_and_1d_parameters_are_zero(build):
    model = build()
    theta = model.flatten()
    d = filter_normalized_direction(model, theta, seed=3)
    assert d.shape == theta.shape and d.dtype == theta.dtype and d.device == theta.device
    dp, wp = parts(model, d), parts(model, theta)
    seen_2d = seen_1d = 0
    for name, shape in zip(model.names, model.shapes):
        if len(shape) >= 2:
            seen_2d += 1
            dn = dp[name].reshape(shape[0], -1).norm(dim=1)
            wn = wp[name].reshape(shape[0], -1).norm(dim=1)
            torch.testing.assert_close(dn, wn, atol=1e-5, rtol=1e-5)
            # A random direction, not the weights themselves.
            assert not torch.allclose(dp[name], wp[name]) and not torch.allclose(dp[name], -wp[name])
        else:
            seen_1d += 1
            assert torch.count_nonzero(dp[name]) == 0, name
    assert seen_2d >= 2 and seen_1d >= 2


def test_1d_parameters_are_filters_of_one_element_when_not_ignored(model):
    theta = model.flatten()
    d = filter_normalized_direction(model, theta, seed=0, ignore_bias_and_bn=False)
    keep = filter_normalized_direction(model, theta, seed=0)
    dp, wp, kp = parts(model, d), parts(model, theta), parts(model, keep)
    signs = []
    for name, shape in zip(model.names, model.shapes):
        if len(shape) >= 2:
            torch.testing.assert_close(dp[name], kp[name])  # the ≥2-D part does not change
        else:
            torch.testing.assert_close(dp[name].abs(), wp[name].abs())
            signs.append(torch.sign(dp[name]) * torch.sign(wp[name]))
    signs = torch.cat(signs)
    assert (signs > 0).any() and (signs < 0).any()  # random signs, not a copy of theta


def test_directions_are_seeded_and_independent_of_the_global_rng(model):
    theta = model.flatten()
    torch.manual_seed(123)
    a = filter_normalized_direction(model, theta, seed=5)
    torch.manual_seed(456)
    b = filter_normalized_direction(model, theta, seed=5)
    c = filter_normalized_direction(model, theta, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    plane = random_plane(model, theta, seed=5)
    assert torch.equal(plane.d1, a) and not torch.allclose(plane.d1, plane.d2)
    assert torch.equal(plane.origin, theta) and plane.origin.data_ptr() != theta.data_ptr()
    d64 = filter_normalized_direction(model, theta.double(), seed=5)
    assert d64.dtype == F64
    torch.testing.assert_close(d64.float(), a, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- projection
def test_points_in_a_random_plane_project_with_zero_residual(model):
    theta = model.flatten()
    plane = random_plane(model, theta, seed=1)
    g = torch.Generator().manual_seed(0)
    coords = torch.randn(9, 2, generator=g, dtype=F64)
    traj = plane.points(coords[:, 0], coords[:, 1])
    got, residual = project(traj, plane)
    assert got.shape == (9, 2) and residual.shape == (9,)
    torch.testing.assert_close(got, coords, atol=1e-5, rtol=0)
    assert float(residual.max()) < 1e-5 * float(traj.norm(dim=1).max())


def test_non_orthogonal_plane_through_recovers_coordinates_and_the_residual():
    g = torch.Generator().manual_seed(0)
    D = 300
    a = torch.randn(D, generator=g, dtype=F64)
    u = torch.randn(D, generator=g, dtype=F64)
    b = a + u
    c = a + 0.8 * u + 0.3 * torch.randn(D, generator=g, dtype=F64)  # strongly non-orthogonal
    plane = plane_through(a, b, c)
    cos = torch.dot(plane.d1, plane.d2) / (plane.d1.norm() * plane.d2.norm())
    assert cos > 0.9
    coords = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.3, -1.7], [-2.0, 0.5]], dtype=F64)
    traj = plane.points(coords[:, 0], coords[:, 1])
    torch.testing.assert_close(traj[:3], torch.stack([a, b, c]))
    got, residual = project(traj, plane)
    torch.testing.assert_close(got, coords, atol=1e-9, rtol=0)
    assert float(residual.max()) < 1e-9
    # A component orthogonal to both directions is exactly the residual, and leaves the
    # coordinates alone.
    basis, _ = torch.linalg.qr(torch.stack([plane.d1, plane.d2], 1))
    w = torch.randn(D, generator=g, dtype=F64)
    w = w - basis @ (basis.T @ w)
    w = 0.7 * w / w.norm()
    got, residual = project(traj + w, plane)
    torch.testing.assert_close(got, coords, atol=1e-9, rtol=0)
    torch.testing.assert_close(residual, torch.full((5,), 0.7, dtype=F64))
    # The plain orthogonal projection (ignoring the angle) would be wrong here.
    naive = (traj - a) @ torch.stack([plane.d1, plane.d2]).T / torch.stack([plane.d1, plane.d2]).norm(dim=1) ** 2
    assert not torch.allclose(naive, coords, atol=1e-3)


def test_project_reads_memmapped_trajectories_in_blocks(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    D = 64
    plane = plane_through(*torch.randn(3, D, generator=g))
    coords = torch.randn(7, 2, generator=g, dtype=F64)
    pts = plane.points(coords[:, 0], coords[:, 1])
    traj = Trajectory(7, D, store=tmp_path / "traj.npy")
    for k, p in enumerate(pts):
        traj.append(p, k)
    monkeypatch.setattr(LP, "PROJECT_BLOCK_BYTES", 8 * D * 3)  # 3 rows per block
    got, residual = project(traj, plane)
    torch.testing.assert_close(got, coords, atol=1e-4, rtol=0)
    assert float(residual.max()) < 1e-4


def test_pca_plane_of_a_planar_trajectory():
    g = torch.Generator().manual_seed(0)
    D = 500
    q, _ = torch.linalg.qr(torch.randn(D, 2, generator=g, dtype=F64))
    start = torch.randn(D, generator=g, dtype=F64)
    steps = torch.randn(20, 2, generator=g, dtype=F64) * torch.tensor([3.0, 1.0], dtype=F64)
    traj = (start + steps.cumsum(0) @ q.T).float()
    plane = pca_plane(traj)
    assert torch.equal(plane.origin, traj[-1])  # endpoint at (0, 0)
    dirs = torch.stack([plane.d1, plane.d2]).double()
    torch.testing.assert_close(dirs @ dirs.T, torch.eye(2, dtype=F64), atol=1e-5, rtol=0)
    # The plane is the planted one: the trajectory lies in it.
    coords, residual = project(traj, plane)
    assert float(residual.max()) < 1e-4 * float(traj.norm(dim=1).max())
    torch.testing.assert_close(coords[-1], torch.zeros(2, dtype=F64), atol=1e-6, rtol=0)
    assert plane.explained_variance_ratio is not None and float(plane.explained_variance_ratio.sum()) > 0.999
    # Another origin.
    assert torch.equal(pca_plane(traj, origin=traj[0]).origin, traj[0])


# -------------------------------------------------------------------------------------- grids
def test_grid_centre_is_the_loss_at_the_origin_in_eval_mode(model, data):
    x, y = data
    theta = model.flatten() + 0.05  # any point, not just the module's own parameters
    plane = random_plane(model, theta, seed=0)
    res = grid(model, plane, x, y, span=(-0.5, 0.5, -2.0, 2.0), resolution=7)
    assert isinstance(res, LandscapeGrid)
    assert res.loss.shape == res.accuracy.shape == (7, 7) and isinstance(res.loss, np.ndarray)
    assert res.alphas[3] == 0.0 and res.betas[3] == 0.0
    eval_loss = float(model.loss(theta, (x, y), train=False))
    train_loss = float(model.loss(theta, (x, y), train=True))
    assert abs(res.loss[3, 3] - eval_loss) < 1e-5
    assert abs(eval_loss - train_loss) > 1e-3  # eval mode is a real difference here
    assert model.module.training is False


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 100])
def test_batched_grid_equals_a_per_point_loop(model, data, chunk_size):
    x, y = data
    theta = model.flatten()
    plane = random_plane(model, theta, seed=2)
    span = (-0.5, 1.0, -1.0, 0.25)  # asymmetric, so a transposed or shifted grid would show
    res = grid(model, plane, x, y, span=span, resolution=5, chunk_size=chunk_size, batch_size=10)
    np.testing.assert_allclose(res.alphas, np.linspace(-0.5, 1.0, 5), atol=1e-12)
    np.testing.assert_allclose(res.betas, np.linspace(-1.0, 0.25, 5), atol=1e-12)
    loss = np.zeros((5, 5))
    acc = np.zeros((5, 5))
    for i, a in enumerate(res.alphas):
        for j, b in enumerate(res.betas):
            th = plane.origin + float(a) * plane.d1 + float(b) * plane.d2
            loss[i, j] = float(model.loss(th, (x, y), train=False))
            acc[i, j] = float((model.apply(th, x, train=False).argmax(-1) == y).float().mean())
    np.testing.assert_allclose(res.loss, loss, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(res.accuracy, acc, atol=1e-6)
    assert np.ptp(loss) > 1e-2  # the landscape is not flat, so the comparison means something


def test_rectangular_grid_and_explicit_buffers(model, data):
    x, y = data
    theta = model.flatten()
    plane = random_plane(model, theta, seed=0)
    buffers = {k: (v + 0.3 if v.is_floating_point() else v) for k, v in model.init_buffers().items()}
    res = grid(model, plane, x, y, resolution=(3, 4), buffers=buffers)
    assert res.loss.shape == (3, 4) and res.alphas.shape == (3,) and res.betas.shape == (4,)
    th = plane.origin + res.alphas[2] * plane.d1 + res.betas[1] * plane.d2
    assert abs(res.loss[2, 1] - float(model.loss(th, (x, y), buffers, train=False))) < 1e-5
    assert abs(res.loss[2, 1] - float(model.loss(th, (x, y), train=False))) > 1e-4


def test_auto_chunk_size_is_at_least_one_and_follows_the_budget(model, data, monkeypatch):
    x, y = data
    theta = model.flatten()
    big = auto_chunk_size(model, theta, x)
    assert big > 1
    monkeypatch.setattr(LG, "CPU_BUDGET_BYTES", 1)
    assert auto_chunk_size(model, theta, x) == 1
    plane = random_plane(model, theta, seed=0)
    calls = []
    batched, single = model.batched_evaluate, model.evaluate

    def count_batched(thetas, *args, **kwargs):
        calls.append(len(thetas))
        return batched(thetas, *args, **kwargs)

    def count_single(theta, *args, **kwargs):
        calls.append(0)  # batched_evaluate of one point falls back to a plain evaluation, no vmap
        return single(theta, *args, **kwargs)

    monkeypatch.setattr(model, "batched_evaluate", count_batched)
    monkeypatch.setattr(model, "evaluate", count_single)
    one = grid(model, plane, x, y, resolution=3)
    assert calls == [1, 0] * 9  # nine chunks of one point, each evaluated without vmap
    monkeypatch.setattr(LG, "CPU_BUDGET_BYTES", 1 << 30)
    calls.clear()
    whole = grid(model, plane, x, y, resolution=3)
    assert calls == [9]  # the whole grid in one batched call
    np.testing.assert_allclose(one.loss, whole.loss, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(one.accuracy, whole.accuracy)


# ------------------------------------------------------------------------------ interpolation
def test_interpolate_endpoints_and_midpoint(model, data):
    x, y = data
    a = model.flatten()
    b = a + filter_normalized_direction(model, a, seed=4)
    res = interpolate(model, a, b, (x, y), steps=5)
    np.testing.assert_allclose(res.alphas, [0, 0.25, 0.5, 0.75, 1.0])
    assert res.loss.shape == res.accuracy.shape == (5,)
    assert abs(res.loss[0] - float(model.loss(a, (x, y), train=False))) < 1e-5
    assert abs(res.loss[-1] - float(model.loss(b, (x, y), train=False))) < 1e-5
    assert abs(res.loss[2] - float(model.loss((a + b) / 2, (x, y), train=False))) < 1e-5
    assert abs(res.loss[0] - res.loss[-1]) > 1e-3
    # Same results from an ArrayData, chunked, and unpacked as a tuple.
    alphas, loss, acc = interpolate(model, a, b, ArrayData(x, y), steps=5, chunk_size=2)
    np.testing.assert_allclose(loss, res.loss, atol=1e-6)
    ext = interpolate(model, a, b, (x, y), steps=9, extend=0.5)
    np.testing.assert_allclose(ext.alphas, np.linspace(-0.5, 1.5, 9))
    assert ext.alphas[2] == 0.0 and ext.alphas[6] == 1.0
    assert abs(ext.loss[2] - res.loss[0]) < 1e-5 and abs(ext.loss[6] - res.loss[-1]) < 1e-5


# ------------------------------------------------------------------- values at trajectory points
def test_grid_values_at_is_exact_for_bilinear_functions_and_nan_outside():
    alphas, betas = np.linspace(-1, 1, 5), np.array([-2.0, -0.5, 0.0, 1.0])   # uneven beta spacing
    f = lambda a, b: 1.0 + 2.0 * a - 3.0 * b + 0.5 * a * b                       # bilinear: exact
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    g = LandscapeGrid(alphas, betas, f(A, B), np.zeros_like(A))
    pts = np.array([[0.3, -1.7], [-1.0, -2.0], [1.0, 1.0], [0.0, 0.0], [-0.99, 0.7]])
    np.testing.assert_allclose(grid_values_at(g, pts), f(pts[:, 0], pts[:, 1]), atol=1e-12)
    # Lattice points give the stored values; tensors and Projections are accepted.
    np.testing.assert_array_equal(grid_values_at(g, torch.tensor([[alphas[1], betas[2]]])), [g.loss[1, 2]])
    proj = L.Projection(torch.tensor([[0.5, 0.5], [1.5, 0.0], [0.0, -2.5]], dtype=F64), torch.zeros(3, dtype=F64))
    out = grid_values_at(g, proj)
    assert out[0] == pytest.approx(f(0.5, 0.5)) and np.isnan(out[1]) and np.isnan(out[2])
    assert grid_values_at(g, pts, field="accuracy").tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="field"):
        grid_values_at(g, pts, field="acc")
    with pytest.raises(ValueError, match="coords"):
        grid_values_at(g, pts[:, :1])
    with pytest.raises(ValueError, match="increasing"):
        grid_values_at(LandscapeGrid(alphas[::-1], betas, g.loss, g.accuracy), pts)


# -------------------------------------------------------------------------------- validation
def test_bad_inputs_raise_value_errors_naming_the_parameter(model, data):
    x, y = data
    theta = model.flatten()
    plane = random_plane(model, theta)
    with pytest.raises(ValueError, match="resolution"):
        grid(model, plane, x, y, resolution=1)
    with pytest.raises(ValueError, match="resolution"):
        grid(model, plane, x, y, resolution=(5, 1))
    with pytest.raises(ValueError, match="resolution"):
        grid(model, plane, x, y, resolution=2.5)
    for span in [(1, -1, -1, 1), (-1, 1, 0.5, 0.5), (-1, 1, -1), (-1, 1, -1, float("nan")), "wide"]:
        with pytest.raises(ValueError, match="span"):
            grid(model, plane, x, y, span=span, resolution=3)
    with pytest.raises(ValueError, match="chunk_size"):
        grid(model, plane, x, y, resolution=3, chunk_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        grid(model, plane, x, y, resolution=3, batch_size=0)
    with pytest.raises(ValueError, match="theta"):
        filter_normalized_direction(model, theta[:-1])
    with pytest.raises(ValueError, match="theta"):
        filter_normalized_direction(model, theta[None])
    with pytest.raises(ValueError, match="theta"):
        random_plane(model, torch.zeros(3))
    with pytest.raises(ValueError, match="seed"):
        filter_normalized_direction(model, theta, seed=-1)
    with pytest.raises(ValueError, match="d1"):
        Plane(theta, theta[:-1], plane.d2)
    with pytest.raises(ValueError, match="d2"):
        Plane(theta, plane.d1, torch.zeros(3))
    with pytest.raises(ValueError, match="d2"):
        Plane(theta, plane.d1, plane.d2.double())
    small = Plane(torch.zeros(5), torch.ones(5), torch.arange(5.0))
    with pytest.raises(ValueError, match="plane"):
        grid(model, small, x, y, resolution=3)
    with pytest.raises(ValueError, match="theta_a"):
        interpolate(model, theta[:-1], theta, (x, y))
    with pytest.raises(ValueError, match="theta_b"):
        interpolate(model, theta, torch.zeros(2), (x, y))
    with pytest.raises(ValueError, match="steps"):
        interpolate(model, theta, theta, (x, y), steps=1)
    with pytest.raises(ValueError, match="extend"):
        interpolate(model, theta, theta, (x, y), extend=-0.1)
    with pytest.raises(ValueError, match="batch_or_data"):
        interpolate(model, theta, theta, x)
    with pytest.raises(ValueError, match="trajectory"):
        project(torch.zeros(4, model.dim + 1), plane)
    with pytest.raises(ValueError, match="trajectory"):
        project(theta, plane)
    with pytest.raises(ValueError, match="d1 and d2"):
        project(theta[None], Plane(theta, plane.d1, 2 * plane.d1))
    with pytest.raises(ValueError, match="c"):
        plane_through(theta, theta, theta[:3])
    with pytest.raises(ValueError, match="origin"):
        pca_plane(torch.randn(5, 10), origin=torch.zeros(9))
