"""Figure builders and saving (l2o_lib.plots)."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from l2o_lib import plots
from l2o_lib.plots import export, style


@pytest.fixture
def png_warning_rearmed():
    """The PNG warning fires once per process; re-arm it around a test that counts it."""
    export._reset_png_warning()
    yield
    export._reset_png_warning()


def _browser_present() -> bool:
    # find_browser covers shutil.which("chromium") and /usr/bin/chromium, and honours a
    # BROWSER_PATH override (which then must point at a real browser).
    if os.environ.get("BROWSER_PATH"):
        return plots.find_browser() is not None
    return bool(shutil.which("chromium") or os.path.exists("/usr/bin/chromium") or plots.find_browser())


# --------------------------------------------------------------------------- builders


def test_curves_traces_names_and_bands():
    x = np.arange(5)
    fig = plots.curves(
        {
            "Adam": (x, np.linspace(1, 0.1, 5)),
            "SGD": {"x": x, "y": np.linspace(1, 0.5, 5), "y_std": np.full(5, 0.1)},
            "mine": (torch.arange(5), torch.ones(5, requires_grad=True), torch.zeros(5)),
        },
        title="loss", ylabel="loss", log_y=True,
    )
    assert isinstance(fig, go.Figure)
    lines = [t for t in fig.data if t.showlegend is not False]
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in lines] == ["Adam", "SGD", "mine"]
    assert len(bands) == 2 and len(fig.data) == 5
    assert all(t.mode == "lines" for t in fig.data)   # no marker dots on short curves or their bands
    assert lines[0].line.color == plots.color_for("Adam")
    assert fig.layout.yaxis.type == "log" and fig.layout.template.layout.to_plotly_json()  # template set
    assert (fig.layout.width, fig.layout.height) == (plots.WIDTH, plots.HEIGHT)


def test_curves_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        plots.curves({"a": ([1, 2, 3], [1, 2])})
    with pytest.raises(ValueError, match="'x' and 'y'"):
        plots.curves({"a": {"y": [1, 2]}})
    with pytest.raises(ValueError, match="y_std"):
        plots.curves({"a": {"x": [1, 2], "y": [1, 2], "y_std": [1]}})
    with pytest.raises(ValueError, match="non-empty"):
        plots.curves({})


def test_bar_and_table():
    fig = plots.bar({"Adam": 0.9, "SGD": 0.8, "L3RS": 0.95}, errors={"Adam": 0.01}, ylabel="accuracy")
    assert len(fig.data) == 1 and list(fig.data[0].x) == ["Adam", "SGD", "L3RS"]
    assert list(fig.data[0].marker.color) == [plots.color_for(n) for n in ("Adam", "SGD", "L3RS")]
    assert list(fig.data[0].error_y.array) == [0.01, 0.0, 0.0]
    with pytest.raises(ValueError, match="not in values"):
        plots.bar({"Adam": 1.0}, errors={"SGD": 0.1})

    frame = pd.DataFrame({"optimizer": ["Adam", "SGD"], "acc": [0.91234567, np.nan]})
    tab = plots.table(frame, title="results")
    assert len(tab.data) == 1 and isinstance(tab.data[0], go.Table)
    assert list(tab.data[0].header.values) == ["optimizer", "acc"]
    assert list(tab.data[0].cells.values[1]) == ["0.9123", ""]
    with pytest.raises(ValueError, match="DataFrame"):
        plots.table({"a": [1]})


def test_trajectory_plane_path_start_end_and_equal_axes():
    coords = torch.tensor([[0.0, 0.0], [1.0, 0.5], [3.0, 0.2], [4.0, -0.1]])
    fig = plots.trajectory_plane(coords, [0, 10, 20, 30], title="t", xlabel="PC1 (90 %)", color_label="epoch")
    path, start, end = fig.data
    assert path.mode == "lines+markers" and list(path.marker.color) == [0, 10, 20, 30]
    assert path.marker.colorbar.title.text == "epoch"
    assert (start.name, start.x[0], start.y[0]) == ("start", 0.0, 0.0)
    assert (end.name, end.x[0]) == ("end", 4.0) and end.y[0] == pytest.approx(-0.1)
    assert fig.layout.yaxis.scaleanchor == "x" and fig.layout.xaxis.title.text == "PC1 (90 %)"


@pytest.mark.parametrize("coords, steps, match", [
    (np.zeros((4, 3)), np.arange(4), "coords"),
    (np.zeros((1, 2)), np.arange(1), "coords"),
    (np.zeros((4, 2)), np.arange(3), "steps"),
])
def test_trajectory_plane_rejects_bad_input(coords, steps, match):
    with pytest.raises(ValueError, match=match):
        plots.trajectory_plane(coords, steps)


def test_color_for_is_stable():
    assert plots.color_for("Adam") == plots.KNOWN_COLORS["Adam"] == plots.color_for("adam")
    assert len(set(plots.KNOWN_COLORS.values())) == len(plots.KNOWN_COLORS)
    # The fallback must not depend on the process (no hash randomisation): pin one value.
    assert plots.color_for("my-optimizer") == plots.color_for("my-optimizer")
    assert plots.color_for("my-optimizer") == style._FALLBACK_COLORS[
        __import__("zlib").crc32(b"my-optimizer") % len(style._FALLBACK_COLORS)]
    assert plots.color_for("something else").startswith("#")


def test_palette_gives_one_figure_distinct_colours_and_keeps_method_colours():
    names = ["SL2O (scale 1, meta-seed 0)", "SL2O (scale 0.5, meta-seed 0)", "Momentum (lr 0.12, strong)", "Momentum†",
             "Adam", "RMSProp (lr 0.004, strong)", "SL2O (distilled)"] + [f"run {i}" for i in range(20)]
    colors = plots.palette(names)
    assert len(set(colors.values())) == len(names)                       # no two series alike
    assert colors["Adam"] == colors["Adam"] == plots.KNOWN_COLORS["Adam"]  # a known name keeps its colour
    assert colors["SL2O (scale 1, meta-seed 0)"] == plots.KNOWN_COLORS["SL2O"]  # the first of a known base gets it
    assert colors["Momentum (lr 0.12, strong)"] == plots.KNOWN_COLORS["Momentum"]
    assert colors["SL2O (distilled)"] not in plots.KNOWN_COLORS.values()    # the base was taken
    # two unknown names whose fallback colours collide get different ones
    a, b = next((a, b) for a in map(str, range(200)) for b in map(str, range(200))
                if a < b and plots.color_for(a) == plots.color_for(b))
    assert len(set(plots.palette([a, b]).values())) == 2
    assert len(set(plots.palette(["SL2O", " sl2o"]).values())) == 2          # the same known name twice
    fig = plots.curves({n: ([0, 1], [1.0, 0.5]) for n in names[:6]})
    assert len({t.line.color for t in fig.data}) == 6


# --------------------------------------------------------------------------- landscapes, schedules, mixing


def _grid():
    from l2o_lib.landscape import LandscapeGrid

    alphas, betas = np.linspace(-1, 1, 9), np.linspace(-2, 2, 7)
    A, B = np.meshgrid(alphas, betas, indexing="ij")
    loss = 0.1 + A**2 + 0.5 * B**2
    loss[0, 0] = np.inf  # a diverged corner
    return LandscapeGrid(alphas, betas, loss, np.exp(-loss))


def _trajectories():
    from l2o_lib.landscape import Projection

    t = np.linspace(0, 1, 20)[:, None]
    return {"Momentum": np.hstack([0.8 * (1 - t), 1.5 * (1 - t)]),
            "SL2O": Projection(torch.tensor(np.hstack([0.5 * (1 - t), -1.0 * (1 - t)]) + 0.1), torch.zeros(20))}


def test_landscape_contour_traces_markers_and_origin_shift():
    g, trajs = _grid(), _trajectories()
    fig = plots.landscape_contour(g, trajs, title="landscape")
    contour = fig.data[0]
    assert isinstance(contour, go.Contour) and len(fig.data) == 1 + 3 * 2 + 2
    z = np.array(contour.z, dtype=float)
    assert z.shape == (7, 9)  # "ij" grid drawn transposed: x (alphas) along columns
    assert z[3, 4] == pytest.approx(np.log10(0.1)) and np.isnan(z[0, 0])  # inf loss: a blank cell
    np.testing.assert_allclose(np.array(contour.customdata, dtype=float)[6, 8], g.loss[8, 6])
    line, start, end = fig.data[1:4]
    assert line.name == "Momentum" and line.line.color == plots.color_for("Momentum")
    assert (start.marker.symbol, end.marker.symbol) == ("circle", "star")
    assert (start.x[0], start.y[0]) == (0.8, 1.5) and (end.x[0], end.y[0]) == (0.0, 0.0)
    assert start.showlegend is False and start.legendgroup == end.legendgroup == "Momentum"
    assert fig.data[4].name == "SL2O" and fig.data[6].x[0] == pytest.approx(0.1)  # Projection accepted
    assert [t.name for t in fig.data[-2:]] == ["start", "end"]  # legend key
    assert "log" in contour.colorbar.title.text and fig.layout.xaxis.title.text == "α (d1)"

    # origin="SL2O": its end goes to (0, 0) and the grid axes move with it.
    shifted = plots.landscape_contour(g, trajs, origin="SL2O")
    assert (shifted.data[6].x[0], shifted.data[6].y[0]) == pytest.approx((0.0, 0.0))
    np.testing.assert_allclose(shifted.data[0].x, g.alphas - 0.1)
    assert plots.landscape_contour(g, trajs, origin=(0.5, 0.5)).data[3].x[0] == -0.5
    # Accuracy is linear by default; no trajectories: just the contour.
    acc = plots.landscape_contour(g, field="accuracy")
    assert len(acc.data) == 1 and np.nanmax(np.array(acc.data[0].z, dtype=float)) <= 1


def test_landscape_surface_lifts_trajectories_onto_the_grid():
    from l2o_lib.landscape import grid_values_at

    g, trajs = _grid(), _trajectories()
    fig = plots.landscape_surface(g, trajs, lift=0.0)
    assert isinstance(fig.data[0], go.Surface) and len(fig.data) == 1 + 3 * 2 + 2
    assert all(isinstance(t, go.Scatter3d) for t in fig.data[1:])
    line, start, end = fig.data[1:4]
    # Heights: the grid's loss, bilinearly interpolated (in loss, then logged), at the coordinates.
    z = np.asarray(line.z, dtype=float)
    np.testing.assert_allclose(z, np.log10(grid_values_at(g, trajs["Momentum"])))
    exact = 0.1 + np.asarray(line.x) ** 2 + 0.5 * np.asarray(line.y) ** 2
    # Linear interpolation error of a quadratic: h²/8 · f'' = (0.25² · 2 + 0.667² · 1) / 8 ≈ 0.07.
    np.testing.assert_allclose(10**z, exact, atol=0.075)
    assert end.z[0] == pytest.approx(np.log10(0.1)) and end.marker.symbol == "diamond"
    # Given values win over the grid; lift raises the lines; the scene is labelled.
    coords = trajs["Momentum"]
    given = plots.landscape_surface(g, {"Momentum": (coords, np.full(20, 10.0))}, lift=0.1)
    span = np.log10(np.nanmax(g.loss[np.isfinite(g.loss)])) - np.log10(0.1)
    np.testing.assert_allclose(np.asarray(given.data[1].z, dtype=float), 1.0 + 0.1 * span)
    assert given.layout.scene.zaxis.title.text.startswith("log")
    with pytest.raises(ValueError, match="values"):
        plots.landscape_surface(g, {"Momentum": (coords, np.ones(3))})
    with pytest.raises(ValueError, match="lift"):
        plots.landscape_surface(g, trajs, lift=-1)


def test_landscape_builders_reject_bad_input():
    g, trajs = _grid(), _trajectories()
    for build in (plots.landscape_contour, plots.landscape_surface):
        with pytest.raises(ValueError, match="field"):
            build(g, field="acc")
        with pytest.raises(ValueError, match="trajectory 'x'"):
            build(g, {"x": np.zeros((5, 3))})
        with pytest.raises(ValueError, match="origin"):
            build(g, trajs, origin="Adam")
        with pytest.raises(ValueError, match="origin"):
            build(g, trajs, origin=(1, 2, 3))
        with pytest.raises(ValueError, match="grid"):
            build(type(g)(g.alphas, g.betas, g.loss.T, g.accuracy))
        with pytest.raises(ValueError, match="grid"):
            build({"loss": g.loss})
        with pytest.raises(ValueError, match="log_scale"):
            build(type(g)(g.alphas, g.betas, g.loss - 1, g.accuracy), log_scale=True)


def test_lr_schedules():
    steps = np.arange(10)
    fig = plots.lr_schedules({"MLR-SNet": (steps, 0.1 * 0.5 ** steps), "L3RS": (torch.arange(10), torch.zeros(10))},
                             title="lr")
    assert [t.name for t in fig.data] == ["MLR-SNet", "L3RS"] and fig.layout.yaxis.type == "log"
    assert fig.data[0].line.shape == "hv" and fig.data[0].line.color == plots.color_for("MLR-SNet")
    assert np.isnan(np.asarray(fig.data[1].y, dtype=float)).all()  # zeros cannot sit on a log axis
    assert plots.lr_schedules({"a": ([0, 1], [0.0, 1.0])}, log_y=False).data[0].y[0] == 0.0
    with pytest.raises(ValueError, match="equal length"):
        plots.lr_schedules({"a": ([0, 1, 2], [1.0, 2.0])})
    with pytest.raises(ValueError, match="pair"):
        plots.lr_schedules({"a": ([0, 1], [1.0, 2.0], [0.1, 0.1])})
    with pytest.raises(ValueError, match="non-empty"):
        plots.lr_schedules({})


def _mu(T=6, L=3, P=2, seed=0):
    m = np.random.default_rng(seed).random((T, L, P))
    return m / m.sum(-1, keepdims=True)


def test_mixing_areas_panels_stacks_and_layer_selection():
    mu = _mu(L=3, P=2)
    fig = plots.mixing_areas(np.arange(6), mu, base_names=["SGD", "Adam"], layer_names=["conv", "bn", "fc"])
    assert len(fig.data) == 3 * 2 and all(isinstance(t, go.Scatter) for t in fig.data)
    assert [t.stackgroup for t in fig.data] == ["layer0", "layer0", "layer1", "layer1", "layer2", "layer2"]
    assert [t.showlegend for t in fig.data] == [True, True, False, False, False, False]
    np.testing.assert_allclose(fig.data[3].y, mu[:, 1, 1])
    assert fig.data[1].line.color == plots.color_for("Adam")
    assert [a.text for a in fig.layout.annotations] == ["conv", "bn", "fc"]
    assert tuple(fig.layout.yaxis.range) == (0, 1)

    # Many layers: max_layers evenly spaced ones (first and last kept), said in the title.
    big = plots.mixing_areas(np.arange(6), _mu(L=30, P=3), base_names=["SGD", "Adam", "Momentum"],
                             max_layers=5, title="mix")
    titles = [a.text for a in big.layout.annotations]
    assert len(big.data) == 5 * 3 and titles[0] == "layer 0" and titles[-1] == "layer 29"
    assert "5 of 30 layers" in big.layout.title.text
    chosen = plots.mixing_areas(np.arange(6), mu, base_names=["SGD", "Adam"], layer_names=["a", "b", "c"],
                                layers=["c", 0])
    assert [a.text for a in chosen.layout.annotations] == ["c", "a"] and len(chosen.data) == 4


def test_mixing_areas_and_layer_bars_reject_bad_input():
    mu = _mu()
    with pytest.raises(ValueError, match="mu"):
        plots.mixing_areas(np.arange(6), mu[:, :, 0], base_names=["SGD"])
    with pytest.raises(ValueError, match="sum to 1"):
        plots.mixing_areas(np.arange(6), 2 * mu, base_names=["SGD", "Adam"])
    with pytest.raises(ValueError, match="steps"):
        plots.mixing_areas(np.arange(5), mu, base_names=["SGD", "Adam"])
    with pytest.raises(ValueError, match="base_names"):
        plots.mixing_areas(np.arange(6), mu, base_names=["SGD"])
    with pytest.raises(ValueError, match="layer_names"):
        plots.mixing_areas(np.arange(6), mu, base_names=["SGD", "Adam"], layer_names=["a"])
    with pytest.raises(ValueError, match="layers"):
        plots.mixing_areas(np.arange(6), mu, base_names=["SGD", "Adam"], layers=["nope"])
    with pytest.raises(ValueError, match="layers"):
        plots.mixing_areas(np.arange(6), mu, base_names=["SGD", "Adam"], layers=[3])

    bars = plots.layer_bars(torch.tensor([0.1, 0.5, 0.9]), ["conv1", "conv2", "fc"], title="λ")
    assert len(bars.data) == 1 and list(bars.data[0].x) == ["conv1", "conv2", "fc"]
    assert bars.layout.yaxis.title.text == "λ"
    grouped = plots.layer_bars({"seed 0": [1, 2], "seed 1": [2, 1]}, ["a", "b"])
    assert [t.name for t in grouped.data] == ["seed 0", "seed 1"] and grouped.layout.barmode == "group"
    with pytest.raises(ValueError, match="values"):
        plots.layer_bars([1.0, 2.0], ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"values\['x'\]"):
        plots.layer_bars({"x": [1.0]}, ["a", "b"])
    with pytest.raises(ValueError, match="layer_names"):
        plots.layer_bars([1.0], [])


def test_save_landscape_figure(tmp_path):
    fig = plots.landscape_contour(_grid(), _trajectories(), title="saved")
    paths = plots.save(fig, "landscape", directory=tmp_path, png=_browser_present())
    assert paths["html"].exists()
    assert '"type":"contour"' in paths["html"].read_text(encoding="utf-8").replace(" ", "")
    if "png" in paths:
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- save


def test_save_html_writes_plotlyjs_once(tmp_path):
    fig = plots.bar({"Adam": 1.0})
    a = plots.save(fig, "a", directory=tmp_path, png=False)
    bundle = tmp_path / "plotly.min.js"
    mtime = bundle.stat().st_mtime_ns
    b = plots.save(fig, "b", directory=tmp_path, png=False)
    assert a == {"html": tmp_path / "a.html"} and b == {"html": tmp_path / "b.html"}
    html = a["html"].read_text(encoding="utf-8")
    assert 'src="plotly.min.js"' in html and len(html) < 100_000  # the bundle is not inlined
    assert bundle.stat().st_size > 1_000_000 and bundle.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", "plotly.min.js"]


@pytest.mark.parametrize("name", ["", "a/b", "a\\b", ".."])
def test_save_rejects_bad_names(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        plots.save(plots.bar({"a": 1.0}), name, directory=tmp_path, png=False)


def test_save_png(tmp_path):
    if not _browser_present():
        pytest.skip("no Chromium/Chrome browser on this machine (install `chromium` or set BROWSER_PATH)")
    fig = plots.curves({"Adam": ([0, 1, 2], [3, 1, 2])}, title="png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a PNG failure would warn: make it fail the test instead
        paths = plots.save(fig, "fig", directory=tmp_path)
    assert set(paths) == {"html", "png"}
    data = paths["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_png_failure_warns_once_and_keeps_html(tmp_path, monkeypatch, png_warning_rearmed):
    def broken(fig, scale):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(export, "_render_png", broken)
    fig = plots.bar({"Adam": 1.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = plots.save(fig, "one", directory=tmp_path)
        second = plots.save(fig, "two", directory=tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "renderer exploded" in messages[0]
    assert first == {"html": tmp_path / "one.html"} and second == {"html": tmp_path / "two.html"}
    assert first["html"].exists() and second["html"].exists()
    assert not list(tmp_path.glob("*.png"))


def test_curve_panels_one_colour_and_legend_entry_per_series_across_panels():
    x = np.arange(4)
    band = {"x": x, "y": np.array([1.0, 0.5, 0.2, 0.1]), "y_std": np.full(4, 0.3)}
    fig = plots.curve_panels({"task A: loss": {"SL2O": band, "Momentum†": (x, np.ones(4))},
                              "task A: accuracy": {"SL2O": (x, np.linspace(0.1, 0.9, 4)), "Momentum†": (x, np.ones(4))},
                              "task B: loss": {"SL2O": (x, np.ones(4))}},
                             cols=2, title="transfer", log_y=["task A: loss", "task B: loss"])
    lines = [t for t in fig.data if t.fill != "toself"]
    assert [t.name for t in lines] == ["SL2O", "Momentum†", "SL2O", "Momentum†", "SL2O"]
    assert [t.showlegend for t in lines] == [True, True, False, False, False]
    assert {t.line.color for t in lines if t.name == "SL2O"} == {plots.color_for("SL2O")}
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == 1 and min(bands[0].y) > 0   # the lower edge is clipped on the log axis
    assert all(t.mode == "lines" for t in fig.data)   # no marker dots on short curves or their bands
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type != "log" and fig.layout.yaxis3.type == "log"
    assert [a.text for a in fig.layout.annotations] == ["task A: loss", "task A: accuracy", "task B: loss"]


@pytest.mark.parametrize("panels, kwargs, match", [
    ({}, {}, "non-empty dict"), ({"a": {}}, {}, "panel 'a'"), ({"a": {"s": ([1], [1])}}, {"log_y": ["b"]}, "not in panels"),
    ({"a": {"s": ([1], [1])}}, {"log_y": "a"}, "log_y"), ({"a": {"s": ([1], [1])}}, {"cols": 0}, "cols"),
    ({"a": {"s": ([1, 2], [1])}}, {}, "equal length"),
])
def test_curve_panels_rejects_bad_input(panels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plots.curve_panels(panels, **kwargs)
