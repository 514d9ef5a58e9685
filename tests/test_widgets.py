"""l2o_lib.widgets without a browser: the control specs, the widgets built from them, the update
callback an Explorer runs when a control moves, and the static fallback of headless runs.
(tests/test_browser.py drives the same path in JupyterLab.)"""

import math

import ipywidgets
import plotly.graph_objects as go
import pytest

from l2o_lib import widgets

PLOTLY = "application/vnd.plotly.v1+json"


def render(optimizer, lr):
    """A stand-in for a notebook's rerun: a figure whose one trace is named after the values."""
    name = f"{optimizer} {lr:.3g}"
    return go.Figure(go.Scatter(x=[1, 2, 3], y=[1.0, lr, lr * lr], name=name), layout=dict(title=name)), name


CONTROLS = {"optimizer": widgets.choice(["sgd", "adam"], "adam", description="optimizer"),
            "lr": widgets.log_slider(3e-3, 1e-4, 1.0, description="learning rate")}


@pytest.fixture
def kernel_env(monkeypatch):
    """Not headless: neither L2O_HEADLESS nor CI set."""
    monkeypatch.delenv("L2O_HEADLESS", raising=False)
    monkeypatch.delenv("CI", raising=False)


def test_specs_hold_their_defaults_and_ranges():
    assert widgets.choice(["a", "b"], description="x").value == "a"
    s = widgets.int_slider(5, 1, 10, description="steps", step=2)
    assert (s.kind, s.value, s.low, s.high, s.step) == ("int", 5, 1, 10, 2)
    g = widgets.log_slider(3e-3, 1e-4, 1.0, description="lr", per_decade=4)
    assert (g.kind, g.value, g.low, g.high, g.step) == ("log", 3e-3, 1e-4, 1.0, 0.25)


@pytest.mark.parametrize("make, match", [
    (lambda: widgets.choice([], description="x"), "options"),
    (lambda: widgets.choice(["a"], "b", description="x"), "value='b'"),
    (lambda: widgets.choice(["a"], description=""), "description"),
    (lambda: widgets.int_slider(0, 1, 10, description="x"), "low <= value <= high"),
    (lambda: widgets.int_slider(1, 1, 10, description="x", step=0), "step >= 1"),
    (lambda: widgets.int_slider(1.5, 1, 10, description="x"), "value=1.5"),
    (lambda: widgets.log_slider(0.0, 1e-4, 1.0, description="x"), "value=0.0"),
    (lambda: widgets.log_slider(2.0, 1e-4, 1.0, description="x"), "low <= value <= high"),
    (lambda: widgets.log_slider(1e-3, 1e-4, float("inf"), description="x"), "high=inf"),
    (lambda: widgets.log_slider(1e-3, 1e-4, 1.0, description="x", per_decade=0), "per_decade"),
])
def test_bad_specs_are_refused_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_make_widget_builds_each_kind():
    d = widgets.make_widget(widgets.choice(["sgd", "adam"], "adam", description="optimizer"))
    assert isinstance(d, ipywidgets.Dropdown) and d.value == "adam" and list(d.options) == ["sgd", "adam"]
    i = widgets.make_widget(widgets.int_slider(7, 1, 100, description="steps"))
    assert isinstance(i, ipywidgets.IntSlider) and (i.value, i.min, i.max) == (7, 1, 100)
    g = widgets.make_widget(widgets.log_slider(3e-3, 1e-4, 1.0, description="lr"))
    assert isinstance(g, ipywidgets.FloatLogSlider)
    assert (g.min, g.max, g.base) == (-4, 0, 10) and math.isclose(g.value, 3e-3)
    assert not i.continuous_update and not g.continuous_update  # a drag reruns once, on release
    with pytest.raises(ValueError, match="control.kind"):
        widgets.make_widget(widgets.Control("knob", 1, "x"))


def _trace(explorer):
    """The trace name the Explorer's Output currently holds (what the frontend draws)."""
    (output,) = explorer.output.outputs
    assert output["output_type"] == "display_data"
    return output["data"][PLOTLY]["data"][0]["name"]


def test_explorer_renders_the_defaults_then_reruns_on_every_change():
    calls = []

    def counted(**values):
        calls.append(values)
        return render(**values)

    e = widgets.explore(counted, CONTROLS, interactive=True)
    assert isinstance(e, widgets.Explorer)
    assert calls == [{"optimizer": "adam", "lr": 3e-3}]
    assert _trace(e) == "adam 0.003" and e.readout.value == "adam 0.003" and e.text == "adam 0.003"
    assert widgets.FIGURE_CLASS in e.output._dom_classes and widgets.READOUT_CLASS in e.readout._dom_classes
    assert widgets.EXPLORER_CLASS in e.box._dom_classes
    assert list(e.widgets) == ["optimizer", "lr"] and e.box.children[1] is e.output

    e.widgets["optimizer"].value = "sgd"  # what the frontend does when the reader picks another entry
    assert calls[-1] == {"optimizer": "sgd", "lr": 3e-3}
    assert _trace(e) == "sgd 0.003" and e.readout.value == "sgd 0.003"
    e.widgets["lr"].value = 0.1
    assert math.isclose(calls[-1]["lr"], 0.1) and _trace(e) == "sgd 0.1"
    assert e.figure.data[0].name == "sgd 0.1" and len(calls) == 3


def test_a_failing_render_keeps_the_figure_and_reports_in_the_readout():
    def fragile(optimizer, lr):
        if optimizer == "sgd":
            raise RuntimeError("lr <too> large")
        return render(optimizer, lr)

    e = widgets.explore(fragile, CONTROLS, interactive=True)
    with pytest.raises(RuntimeError, match="too"):
        e.widgets["optimizer"].value = "sgd"
    assert _trace(e) == "adam 0.003"
    assert e.readout.value.startswith("<b>failed</b>") and "&lt;too&gt;" in e.readout.value  # escaped


def test_headless_runs_get_the_static_figure_at_the_defaults(monkeypatch):
    monkeypatch.setenv("L2O_HEADLESS", "1")
    assert widgets.unavailable_reason() == "headless run"
    s = widgets.explore(render, CONTROLS)
    assert isinstance(s, widgets.Static) and s.figure.data[0].name == "adam 0.003"
    assert s.text.startswith("adam 0.003")
    assert "headless run" in s.text and "optimizer, learning rate" in s.text and "learning rate = 0.003" in s.text

    def never(**values):
        raise AssertionError("static_figure=False must not render")

    s = widgets.explore(never, CONTROLS, static_figure=False)
    assert s.figure is None and "JupyterLab" in s.text


def test_outside_a_kernel_there_are_no_widgets(kernel_env):
    assert widgets.unavailable_reason() == "no Jupyter kernel"  # pytest is no IPython kernel
    assert isinstance(widgets.explore(render, CONTROLS), widgets.Static)


def test_ci_counts_as_headless(kernel_env, monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert widgets.unavailable_reason() == "headless run"


@pytest.mark.parametrize("render_, controls, match", [
    ("not callable", CONTROLS, "render="),
    (render, {}, "non-empty dict"),
    (render, {"not a name": CONTROLS["lr"]}, "Python identifier"),
    (render, {"lr": ipywidgets.FloatLogSlider()}, "controls\\['lr'\\]"),
])
def test_bad_explore_arguments_are_refused_before_any_render(render_, controls, match):
    with pytest.raises(ValueError, match=match):
        widgets.explore(render_, controls, interactive=True)


def test_without_ipywidgets_the_reason_says_so(kernel_env, monkeypatch):
    real = widgets.importlib.util.find_spec
    monkeypatch.setattr(widgets.importlib.util, "find_spec", lambda name: None if name == "ipywidgets" else real(name))
    assert widgets.unavailable_reason() == "ipywidgets is not installed"
    assert "ipywidgets is not installed" in widgets.explore(render, CONTROLS).text
