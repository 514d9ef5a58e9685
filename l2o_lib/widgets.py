"""Controls that let a notebook reader explore a result, with a static fallback.

In a Jupyter kernel with a widget frontend (JupyterLab, Notebook 7), :func:`explore` shows ipywidgets
controls above a plotly figure and a one-line readout; every change of a control calls the notebook's
``render(**values) -> (figure, text)`` again and replaces the figure and the readout in place. In
headless runs (papermill, ``l2o run``, ``L2O_HEADLESS=1``, ``CI=true``), or without ipywidgets or a
kernel, the same call renders once at the controls' default values and shows that figure with a
sentence saying the control is interactive in JupyterLab.

Controls are declared as small specs (:func:`choice`, :func:`int_slider`, :func:`log_slider`), so a
headless run never builds a widget::

    widgets.explore(rerun, {"optimizer": widgets.choice(["sgd", "adam"], "adam", description="optimizer"),
                            "lr": widgets.log_slider(3e-3, 1e-4, 1.0, description="learning rate")})

The figure travels to the frontend as plotly's own MIME bundle (``application/vnd.plotly.v1+json``, drawn
by the ``jupyterlab-plotly`` extension that ships with plotly) inside an ``ipywidgets.Output``: plotly's
``FigureWidget`` would need ``anywidget``, which is not a dependency.
"""

from __future__ import annotations

import html
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .config import check_choice, headless

__all__ = ["Control", "choice", "int_slider", "log_slider", "unavailable_reason", "make_widget",
           "Explorer", "Static", "explore", "EXPLORER_CLASS", "FIGURE_CLASS", "READOUT_CLASS"]

# CSS classes on the whole layout, the figure's Output and the readout: the browser test finds them by these.
EXPLORER_CLASS = "l2o-explorer"
FIGURE_CLASS = "l2o-figure"
READOUT_CLASS = "l2o-readout"
_KINDS = ("choice", "int", "log")


@dataclass(frozen=True)
class Control:
    """One control, declared without building a widget.

    Attributes:
        kind: ``"choice"`` (a dropdown over ``options``), ``"int"`` (an integer slider over
            ``low..high`` in steps of ``step``) or ``"log"`` (a log-scale slider over ``low..high``
            with ``step`` points per decade).
        value: the default, also what a headless run renders.
        description: the label shown next to the control (and named in the headless sentence).
    """

    kind: str
    value: Any
    description: str
    options: tuple = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None


def _check_description(description: str) -> None:
    if not isinstance(description, str) or not description.strip():
        raise ValueError(f"description={description!r} is not allowed; use a non-empty string")


def choice(options: Sequence[Any], value: Any = None, *, description: str) -> Control:
    """A dropdown over ``options`` (at least one); ``value`` defaults to the first option."""
    options = tuple(options)
    if not options:
        raise ValueError("options must hold at least one choice")
    value = options[0] if value is None else value
    check_choice("value", value, options)
    _check_description(description)
    return Control("choice", value, description, options=options)


def int_slider(value: int, low: int, high: int, *, description: str, step: int = 1) -> Control:
    """An integer slider over ``low..high`` (``low <= value <= high``) in steps of ``step``."""
    for name, v in (("value", value), ("low", low), ("high", high), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}={v!r} is not allowed; use an integer")
    if step < 1 or not low <= value <= high:
        raise ValueError(f"int_slider needs step >= 1 and low <= value <= high; got step={step}, "
                         f"low={low}, value={value}, high={high}")
    _check_description(description)
    return Control("int", value, description, low=low, high=high, step=step)


def log_slider(value: float, low: float, high: float, *, description: str, per_decade: int = 10) -> Control:
    """A log-scale slider over ``low..high`` (``0 < low <= value <= high``) with ``per_decade``
    positions per factor of 10 (the value itself is kept exactly as the default)."""
    for name, v in (("value", value), ("low", low), ("high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}={v!r} is not allowed; use a finite number > 0")
    if not low <= value <= high:
        raise ValueError(f"log_slider needs low <= value <= high; got low={low}, value={value}, high={high}")
    if isinstance(per_decade, bool) or not isinstance(per_decade, int) or per_decade < 1:
        raise ValueError(f"per_decade={per_decade!r} is not allowed; use an integer >= 1")
    _check_description(description)
    return Control("log", float(value), description, low=float(low), high=float(high), step=1 / per_decade)


def unavailable_reason() -> str | None:
    """Why widgets are not shown here (``"headless run"``, ``"ipywidgets is not installed"``,
    ``"no Jupyter kernel"``), or ``None`` when a kernel with a widget frontend may show them."""
    if headless():
        return "headless run"
    if importlib.util.find_spec("ipywidgets") is None:
        return "ipywidgets is not installed"
    try:
        from IPython import get_ipython
    except ImportError:
        return "no Jupyter kernel"
    shell = get_ipython()
    return None if shell is not None and getattr(shell, "kernel", None) is not None else "no Jupyter kernel"


def make_widget(control: Control):
    """The ipywidgets control for a :class:`Control` (``continuous_update=False``: a slider
    reruns once when released, not on every pixel of a drag)."""
    import ipywidgets as w

    check_choice("control.kind", control.kind, _KINDS)
    style = {"description_width": "initial"}
    if control.kind == "choice":
        return w.Dropdown(options=list(control.options), value=control.value, description=control.description,
                          style=style)
    if control.kind == "int":
        return w.IntSlider(value=control.value, min=control.low, max=control.high, step=control.step,
                           description=control.description, continuous_update=False, style=style)
    return w.FloatLogSlider(value=control.value, base=10, min=math.log10(control.low), max=math.log10(control.high),
                            step=control.step, description=control.description, readout_format=".1e",
                            continuous_update=False, style=style)


def _figure_output(figure) -> dict:
    """One ``display_data`` output holding the figure as plotly's MIME bundle (what the
    ``jupyterlab-plotly`` extension draws) and a plain-text stand-in."""
    import plotly.io as pio

    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(figure.to_dict())
    title = figure.layout.title.text or "plotly figure"
    return {"output_type": "display_data", "data": {**bundle, "text/plain": title}, "metadata": {}}


class Explorer:
    """Widgets for ``controls``, an ``ipywidgets.Output`` holding the figure and an HTML readout;
    any change of a control calls :meth:`update`.

    Attributes:
        widgets: ``{name: ipywidgets control}``, in the order given.
        output: the Output the figure is drawn in (CSS class :data:`FIGURE_CLASS`).
        readout: the HTML line under the figure (CSS class :data:`READOUT_CLASS`).
        box: the whole layout (CSS class :data:`EXPLORER_CLASS`); displaying the Explorer displays it.
        figure, text: what the last :meth:`update` rendered.
    """

    def __init__(self, render: Callable[..., tuple[Any, str]], controls: Mapping[str, Control]):
        import ipywidgets as w

        _check_explore_args(render, controls)
        self.render = render
        self.widgets = {name: make_widget(c) for name, c in controls.items()}
        self.output = w.Output()
        self.output.add_class(FIGURE_CLASS)
        self.readout = w.HTML()
        self.readout.add_class(READOUT_CLASS)
        self.box = w.VBox([w.HBox(list(self.widgets.values())), self.output, self.readout])
        self.box.add_class(EXPLORER_CLASS)
        self.figure, self.text = None, ""
        for widget in self.widgets.values():
            widget.observe(self.update, names="value")
        self.update()

    def values(self) -> dict[str, Any]:
        """The controls' current values, ``{name: value}``."""
        return {name: widget.value for name, widget in self.widgets.items()}

    def update(self, change: Any = None) -> None:
        """Render at the current values and replace the figure and the readout (``change``: the
        traitlets event when called as an observer, unused). A failing ``render`` leaves the old
        figure, writes the error into the readout (a callback's exception is otherwise visible only
        in the log console) and raises it."""
        self.readout.value = "<i>running…</i>"
        try:
            figure, text = self.render(**self.values())
        except Exception as err:
            self.readout.value = f"<b>failed</b>: {html.escape(f'{type(err).__name__}: {err}')}"
            raise
        self.figure, self.text = figure, text
        self.output.outputs = (_figure_output(figure),)
        self.readout.value = html.escape(text)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.box)


@dataclass
class Static:
    """What a headless run shows instead of the widgets: the figure at the default values (or
    none) and a sentence naming the controls a JupyterLab reader gets."""

    figure: Any
    text: str

    def _ipython_display_(self) -> None:
        from IPython.display import Markdown, display

        if self.figure is not None:
            display(self.figure)
        display(Markdown(self.text))


def _check_explore_args(render: Callable, controls: Mapping[str, Control]) -> None:
    if not callable(render):
        raise ValueError(f"render={render!r} is not allowed; use a function render(**values) -> (figure, text)")
    if not isinstance(controls, Mapping) or not controls:
        raise ValueError("controls must be a non-empty dict {name: Control}")
    for name, control in controls.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"controls key {name!r} is not allowed; use a Python identifier (render's keyword)")
        if not isinstance(control, Control):
            raise ValueError(f"controls[{name!r}]={control!r} is not allowed; use widgets.choice / int_slider / "
                             "log_slider")


def explore(render: Callable[..., tuple[Any, str]], controls: Mapping[str, Control], *,
            static_figure: bool = True, interactive: bool | None = None) -> Explorer | Static:
    """Show ``render``'s figure under controls a reader can move, or its static fallback.

    Args:
        render: ``render(**values) -> (figure, text)``, called with one keyword per control: a plotly
            figure and a one-line readout (e.g. the final loss) shown under it.
        controls: ``{keyword: Control}`` from :func:`choice`, :func:`int_slider`, :func:`log_slider`.
        static_figure: in the fallback, render once at the default values and show that figure
            (``False``: the sentence only, when the notebook already shows those figures).
        interactive: force widgets on or off; ``None``: on when :func:`unavailable_reason` is ``None``.

    Returns:
        An :class:`Explorer` or a :class:`Static`; make it the last expression of the cell to show it.
    """
    _check_explore_args(render, controls)
    reason = unavailable_reason() if interactive is None else (None if interactive else "widgets turned off")
    if reason is None:
        return Explorer(render, controls)
    names = ", ".join(c.description for c in controls.values())
    defaults = "; ".join(f"{c.description} = {c.value:.3g}" if c.kind == "log" else f"{c.description} = {c.value}"
                         for c in controls.values())
    text = f"Static view ({reason}). Opened in JupyterLab, this cell shows controls ({names}) that redraw it."
    if not static_figure:
        return Static(None, text)
    figure, readout = render(**{name: c.value for name, c in controls.items()})
    return Static(figure, f"{readout}\n\n{text} Shown here: {defaults}.")
