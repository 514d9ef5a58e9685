"""A landscape figure's runs and numbers (notebook 06): the learned optimizers found or trained, the
trajectory recorders, the planes fitted to the runs, the residual and fidelity tables, the span,
the summary rows and the findings text."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from l2o_lib import landscape as L
from l2o_lib.artifacts import save_trained, trained_path
from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.landscape import LandscapeGrid, Projection
from l2o_lib.mlrsnet import MLRSNet, TrainedSchedule
from l2o_lib.models import build_model
from l2o_lib.nbparams import NOTEBOOKS
from l2o_lib.optim import momentum, sgd
from l2o_lib.sl2o import LSTMRule, Trained
from l2o_lib.subspace import dldr
from l2o_lib.training import train_flat

F64 = torch.float64


@pytest.fixture
def model():
    return FlatModel(build_model("mlp", (1, 6), 3, seed=0, hidden=(5,)))


@pytest.fixture
def train():
    g = torch.Generator().manual_seed(0)
    return ArrayData(torch.randn(700, 1, 6, generator=g), torch.randint(3, (700,), generator=g))


def sampler(train):
    return BatchSampler(train, 16, seed=3)


def learned_for(model, *, l3rs=None):
    """SL2O (a random rule in a random 3-d subspace at the model's weights) and a random MLR-SNet."""
    theta0 = model.flatten()
    g = torch.Generator().manual_seed(1)
    space = dldr(theta0 + 0.1 * torch.randn(6, model.dim, generator=g), 3, origin=theta0)
    schedule = TrainedSchedule([MLRSNet(8, seed=s).state_dict() for s in range(3)], hidden=8)
    return L.LearnedOptimizers(Trained(LSTMRule(scale=0.5, seed=0), space), schedule, l3rs,
                               {"SL2O": "test", "MLR-SNet": "test"}, {"Momentum": 0.05, "Momentum†": 0.1})


# ------------------------------------------------------------------------ recorders
def test_record_flat_starts_at_theta0_and_row_k_is_train_flats_theta_after_k_steps(model, train):
    theta0 = model.flatten()
    path = L.record_flat(model, momentum(lr=0.1, momentum=0.9), sampler(train), 5, theta0)
    assert path.shape == (6, model.dim)
    assert torch.equal(path[0], theta0)
    for k in (1, 3, 5):
        ref = train_flat(model, momentum(lr=0.1, momentum=0.9), sampler(train), steps=k, theta=theta0).theta
        torch.testing.assert_close(path[k], ref, rtol=0, atol=0)
    assert not torch.equal(path[1], path[0])


def test_record_module_matches_the_flat_loop_and_restores_the_module(model, train):
    theta0 = model.flatten()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    make = lambda params: (torch.optim.SGD(params, lr=0.1), None)
    path = L.record_module(model, make, sampler(train), 4, theta0)
    flat = L.record_flat(model, sgd(lr=0.1), sampler(train), 4, theta0)
    assert path.shape == (5, model.dim) and torch.equal(path[0], theta0)
    torch.testing.assert_close(path, flat, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.module.state_dict().items())


def test_record_module_restores_the_module_when_the_optimizer_fails(model, train):
    before = model.flatten()

    def broken(params):
        raise TypeError("no such optimizer")
    with pytest.raises(TypeError):
        L.record_module(model, broken, sampler(train), 2, before + 1.0)
    assert torch.equal(model.flatten(), before)


def test_mlrsnet_sgd_builds_momentum_sgd_whose_lr_the_schedule_sets(model, train):
    schedule = TrainedSchedule([MLRSNet(8, seed=s).state_dict() for s in range(3)], hidden=8,
                               info={"momentum": 0.5, "weight_decay": 0.0, "steps": 30})
    opt, on_loss = L.mlrsnet_sgd(schedule, steps=10, num_classes=3, f0=1.1)(model.module.parameters())
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["weight_decay"] == 0.0
    assert opt.param_groups[0]["lr"] == 0.0
    on_loss(torch.tensor(1.0))
    assert opt.param_groups[0]["lr"] > 0
    path = L.record_module(model, L.mlrsnet_sgd(schedule, steps=10, num_classes=3, f0=1.1), sampler(train), 10,
                           model.flatten())
    assert torch.isfinite(path).all() and not torch.equal(path[-1], path[0])
    # without the settings in info, the SGD MLR-SNet is meta-trained on by default
    plain = TrainedSchedule(schedule.snapshots, hidden=8)
    assert plain.inner_sgd() == (0.9, 5e-4) and plain.inner_sgd(0.0, 0.0) == (0.0, 0.0)
    assert schedule.inner_sgd(0.0, 1.0) == (0.5, 0.0)


def test_select_runs_keeps_the_fixed_order_and_refuses_unknown_or_missing_runs():
    available = ["Momentum", "Momentum†", "SL2O", "MLR-SNet"]
    assert L.select_runs(None, available) == available
    assert L.select_runs(["SL2O", "Momentum", "L3RS"], available) == ["Momentum", "SL2O"]
    with pytest.raises(ValueError, match="Adam"):
        L.select_runs(["Adam"], available)
    with pytest.raises(ValueError, match="none of runs"):
        L.select_runs(["L3RS"], available)


def test_nbparams_declares_the_same_run_names():
    rule = NOTEBOOKS["06_landscapes"].params["runs"]
    assert rule.reason(list(L.OPTIMIZERS)) is None and rule.reason(None) is None
    assert rule.reason(["Adam"]) is not None and rule.reason([]) is not None
    plane = NOTEBOOKS["06_landscapes"].params["plane"]
    assert all(plane.reason(k) is None for k in L.PLANES) and plane.reason("endpoint") is not None


def test_record_runs_draws_the_named_runs_from_the_subspace_origin(model, train):
    learned = learned_for(model)
    theta0 = learned.sl2o.space.origin
    out, skip = L.record_runs(model, learned, ["Momentum", "Momentum†", "SL2O", "MLR-SNet"], lambda: sampler(train),
                              6, train, 3)
    assert list(out) == ["Momentum", "Momentum†", "SL2O", "MLR-SNet"] and skip is None
    assert all(t.shape == (7, model.dim) and torch.equal(t[0], theta0) for t in out.values())
    # Momentum† and SL2O stay in the subspace: W0 + Pᵀz.
    basis = learned.sl2o.space.basis
    for name in ("Momentum†", "SL2O"):
        x = out[name] - theta0
        torch.testing.assert_close(x, (x @ basis.T) @ basis, atol=1e-5, rtol=1e-4)
    ref = L.record_flat(model, momentum(lr=0.05, momentum=0.9), sampler(train), 6, theta0)
    torch.testing.assert_close(out["Momentum"], ref, rtol=0, atol=0)
    only, _ = L.record_runs(model, learned, ["SL2O"], lambda: sampler(train), 6, train, 3)
    assert list(only) == ["SL2O"] and torch.equal(only["SL2O"], out["SL2O"])


def test_record_runs_leaves_out_an_l3rs_run_that_does_not_fit(model, train):
    bad = SimpleNamespace(phi=torch.zeros(2), config=SimpleNamespace(n_layers=1))
    out, skip = L.record_runs(model, learned_for(model, l3rs=bad), ["SL2O", "L3RS"], lambda: sampler(train), 3,
                              train, 3)
    assert list(out) == ["SL2O"] and skip.startswith("the L3RS run failed")


# ------------------------------------------------------------------------ sources
def test_learned_optimizers_trains_small_ones_when_none_is_saved_and_loads_saved_ones(model, train, tmp_path):
    fallback = L.Fallback(epochs=1, tasks=1, task_steps=12, mlrsnet_steps=20, batch=32)
    lrs = {"Momentum": 0.03, "Momentum†": 0.1}
    got = L.learned_optimizers(model, train, 3, profile="ci", root=tmp_path, fallback=fallback, lrs=lrs)
    assert got.sources == {"SL2O": "trained here (none saved for this model)", "MLR-SNet": "trained here (none saved)"}
    assert got.lrs == lrs and got.l3rs is None and "no L3RS optimizer saved" in got.l3rs_skip
    assert torch.equal(got.sl2o.space.origin, model.flatten()) and got.available == list(L.OPTIMIZERS[:4])
    assert 1 <= got.sl2o.space.dim <= 40
    assert {k: got.schedule.info[k] for k in ("steps", "t_val", "batch_size")} == {"steps": 20, "t_val": 10, "batch_size": 32}
    # The same seed trains the same optimizers.
    again = L.learned_optimizers(model, train, 3, profile="ci", root=tmp_path, fallback=fallback, lrs=lrs)
    torch.testing.assert_close(again.sl2o.space.basis, got.sl2o.space.basis)
    assert all(torch.equal(a, b) for a, b in zip(again.sl2o.rule.state_dict().values(),
                                                 got.sl2o.rule.state_dict().values()))
    # Saved by notebooks 03 / 04: loaded, with notebook 03's tuned learning rates.
    save_trained(got.sl2o, trained_path("sl2o", "ci", root=tmp_path))
    save_trained(got.schedule, trained_path("mlrsnet", "ci", root=tmp_path))
    tuned = tmp_path / "ci" / "03_sl2o" / "results" / "tuned_lrs.json"
    tuned.parent.mkdir(parents=True)
    tuned.write_text(json.dumps({"Momentum": 0.2, "Adam": 1e-3}))
    saved = L.learned_optimizers(model, train, 3, profile="ci", root=tmp_path, fallback=fallback, lrs=lrs)
    assert saved.sources["SL2O"].startswith("notebook 03") and saved.sources["MLR-SNet"].startswith("notebook 04")
    assert saved.lrs == {"Momentum": 0.2, "Momentum†": 0.1}
    torch.testing.assert_close(saved.sl2o.space.basis, got.sl2o.space.basis)


# ------------------------------------------------------------------------ planes and tables
def line_runs(dim=7):
    """Three straight runs from a common start, in a known plane (coordinates e0, e1)."""
    e = torch.eye(dim, dtype=F64)
    steps = torch.linspace(0, 1, 5, dtype=F64)[:, None]
    start = 3 * e[2]
    ends = {"Momentum": start + e[1], "Momentum†": start + e[0], "SL2O": start + e[0] + 2 * e[1]}
    return {name: start + steps * (end - start) for name, end in ends.items()}


def test_plane_anchors_put_the_origin_run_first():
    assert L.plane_anchors(["Momentum", "Momentum†", "SL2O", "MLR-SNet"]) == ["SL2O", "Momentum†", "Momentum"]
    assert L.plane_anchors(["Momentum", "MLR-SNet"]) == ["Momentum"]
    assert L.plane_anchors(["MLR-SNet", "L3RS"]) == ["L3RS", "MLR-SNet"]


def test_fit_planes_pass_through_the_first_anchors_end_and_the_endpoints(model):
    runs = line_runs()
    anchors = L.plane_anchors(list(runs))
    planes = L.fit_planes(runs, anchors)
    assert set(planes) == {"PCA plane", "endpoint plane"}
    proj = L.project_all(runs, planes)
    for name, corner in zip(anchors, ((0, 0), (1, 0), (0, 1))):
        pr = proj["endpoint plane"][name]
        assert float(pr.residual[-1]) < 1e-9 and np.allclose(pr.coords[-1].numpy(), corner)
    # Every point of these runs lies in the plane of e0, e1 through the start: zero residual on both planes.
    assert all(float(pr.residual.max()) < 1e-9 for by_run in proj.values() for pr in by_run.values())
    assert torch.equal(planes["PCA plane"].origin, runs["SL2O"][-1])
    assert L.axis_angle(planes["PCA plane"]) == pytest.approx(90.0)
    two = L.fit_planes({k: runs[k] for k in ("Momentum", "SL2O")}, ["SL2O", "Momentum"])
    assert set(two) == {"PCA plane"}
    with pytest.raises(ValueError, match="three runs"):
        L.plane_name("endpoints", two, ["SL2O", "Momentum"])
    with pytest.raises(ValueError, match="not known"):
        L.plane_name("diagonal", two, ["SL2O", "Momentum"])
    assert L.plane_name("pca", two, ["SL2O"]) == "PCA plane"
    theta = model.flatten()
    walk = torch.cat([theta + torch.randn(2, model.dim, generator=torch.Generator().manual_seed(0)), theta[None]])
    rnd = L.fit_planes({"SL2O": walk}, ["SL2O"], random_model=model)
    assert torch.equal(rnd["random plane"].origin, theta)


def test_check_plane_runs_refuses_the_endpoint_plane_without_the_papers_three_runs():
    L.check_plane_runs("endpoints", None)
    L.check_plane_runs("endpoints", ["SL2O", "Momentum", "Momentum†", "L3RS"])
    L.check_plane_runs("pca", ["MLR-SNet"])
    with pytest.raises(ValueError, match=r"leaves out \['Momentum†'\]"):
        L.check_plane_runs("endpoints", ["SL2O", "Momentum"])
    with pytest.raises(ValueError, match="not known"):
        L.check_plane_runs("diagonal", None)


def test_residual_table_is_zero_on_the_plane_and_the_distance_off_it():
    runs = line_runs()
    off = runs["Momentum"].clone()
    off[:, 4] += torch.linspace(0, 0.5, 5, dtype=F64)      # drifts off the plane along a normal direction
    runs["MLR-SNet"] = off
    planes = L.fit_planes(runs, ["SL2O", "Momentum†", "Momentum"])
    table = L.residual_table(L.project_all(runs, planes), scale=2.0)
    assert len(table) == 2 * 4 and set(table["plane"]) == set(planes)
    row = table[(table["plane"] == "endpoint plane") & (table["optimizer"] == "MLR-SNet")].iloc[0]
    assert row["max residual"] == pytest.approx(0.5) and row["residual at the end"] == pytest.approx(0.5)
    assert row["mean residual"] == pytest.approx(0.25) and row["max residual / ‖W0 − origin‖"] == pytest.approx(0.25)
    on_plane = table[table["optimizer"] != "MLR-SNet"]
    assert (on_plane["max residual"] < 1e-9).all()


def test_fidelity_table_reads_the_grid_at_each_projection():
    alphas = betas = np.linspace(-1, 1, 5)
    grid = LandscapeGrid(alphas, betas, alphas[:, None] + 10 * betas[None, :], np.zeros((5, 5)))  # bilinear
    coords = torch.tensor([[0.0, 0.0], [0.25, 0.5], [0.5, 0.5]], dtype=F64)
    true = {"SL2O": np.array([0.0, 5.25, 6.0])}          # the plane's loss exactly but the second point
    table = L.fidelity_table(grid, {"SL2O": Projection(coords, torch.zeros(3, dtype=F64))}, true).iloc[0]
    assert table["plane loss at its projection"] == pytest.approx(5.5)
    assert table["loss at the end"] == 6.0
    assert table["max |gap|"] == pytest.approx(0.5) and table["median |gap| along the run"] == 0.0


def test_span_for_is_symmetric_margin_times_the_farthest_finite_point():
    pr = lambda c: Projection(torch.tensor(c, dtype=F64), torch.zeros(len(c), dtype=F64))
    projections = {"A": pr([[0.5, -2.0], [float("nan"), 99.0]]), "B": pr([[-1.0, 0.1]]), "C": pr([[50.0, 50.0]])}
    assert L.span_for(projections, ["A", "B"], 1.5) == pytest.approx((-1.5, 1.5, -3.0, 3.0))


def test_loss_table_summary_and_findings_follow_the_numbers():
    runs = line_runs()
    loss = {"Momentum": np.linspace(2, 1.5, 5), "Momentum†": np.linspace(2, 1.2, 5), "SL2O": np.linspace(2, 0.9, 5)}
    table = L.loss_table(loss, runs, 4)
    assert list(table["loss at step 4"]) == [1.5, 1.2, 0.9] and table["loss at step 2"][0] == pytest.approx(1.75)
    assert table["distance travelled ‖W_T − W0‖"][2] == pytest.approx(5 ** 0.5)
    planes = L.fit_planes(runs, ["SL2O", "Momentum†", "Momentum"])
    res = L.residual_table(L.project_all(runs, planes), 1.0)
    rows = L.summary_rows(loss, res, "PCA plane", steps=4, explained=0.97, resolution=11, grid_seconds=0.123,
                          device="cpu")
    assert [r["value"] for r in rows[:3]] == [1.5, 1.2, 0.9] and len(rows) == 8
    assert rows[3]["metric"] == "max residual / ‖W0 − origin‖ (PCA plane)" and rows[-1]["value"] == 0.12
    text = L.findings_text(loss, res, "PCA plane", anchors=["Momentum", "Momentum†", "SL2O"], steps=4, explained=0.97,
                           sl2o_source="a test", resolution=11, grid_seconds=0.1, device="cpu")
    assert "SL2O 0.9000, Momentum† 1.2000, Momentum 1.5000" in text and "faithful" in text and "97.0% of the three" in text
    res.loc[res["optimizer"] == "Momentum", "max residual / ‖W0 − origin‖"] = 0.7
    text = L.findings_text(loss, res, "PCA plane", anchors=["SL2O"], steps=4, explained=0.97, sl2o_source="a test",
                           resolution=11, grid_seconds=0.1, device="cpu")
    assert "with care" in text and "0.70 × ‖W0 − origin‖ (Momentum)" in text


def test_axis_labels_name_what_the_axes_are():
    runs = line_runs()
    anchors = ["SL2O", "Momentum†", "Momentum"]
    planes = L.fit_planes(runs, anchors)
    assert "of the variance" in L.axis_labels("PCA plane", planes["PCA plane"], anchors)["xlabel"]
    assert L.axis_labels("endpoint plane", planes["endpoint plane"], anchors) == dict(
        xlabel="α (towards Momentum†'s end)", ylabel="β (towards Momentum's end)")
