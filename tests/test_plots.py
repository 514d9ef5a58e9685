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


@pytest.fixture
def png_warning_rearmed():
    """The PNG warning fires once per process; re-arm it around a test that counts it."""
    plots._reset_png_warning()
    yield
    plots._reset_png_warning()


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


def test_color_for_is_stable():
    assert plots.color_for("Adam") == plots.KNOWN_COLORS["Adam"] == plots.color_for("adam")
    assert len(set(plots.KNOWN_COLORS.values())) == len(plots.KNOWN_COLORS)
    # The fallback must not depend on the process (no hash randomisation): pin one value.
    assert plots.color_for("my-optimizer") == plots.color_for("my-optimizer")
    assert plots.color_for("my-optimizer") == plots._FALLBACK_COLORS[
        __import__("zlib").crc32(b"my-optimizer") % len(plots._FALLBACK_COLORS)]
    assert plots.color_for("something else").startswith("#")


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

    monkeypatch.setattr(plots, "_render_png", broken)
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
