"""The everyday figures: curves with mean ± std bands, bar charts and tables.

Each builder takes plain arrays, dicts, tensors or a DataFrame and computes nothing heavy; colours
come from :func:`~l2o_lib.plots.style.color_for`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .style import TEMPLATE, WIDTH, _layout, _rgba, _to_numpy, color_for, palette

__all__ = ["curves", "bar", "table"]


def _as_series(name: str, spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Normalise one ``curves`` entry to ``(x, y, y_std or None)`` and check the lengths."""
    if isinstance(spec, Mapping):
        missing = {"x", "y"} - set(spec)
        if missing:
            raise ValueError(f"series {name!r} must have keys 'x' and 'y' (optional 'y_std'); missing {sorted(missing)}")
        x, y, std = spec["x"], spec["y"], spec.get("y_std")
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3):
        x, y, std = spec[0], spec[1], spec[2] if len(spec) == 3 else None
    else:
        raise ValueError(f"series {name!r} must be (x, y), (x, y, y_std) or a dict with 'x', 'y' and optional 'y_std'")
    x = np.asarray(_to_numpy(x))
    y = np.asarray(_to_numpy(y), dtype=float)
    if x.ndim != 1 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"series {name!r}: x and y must be 1-d and of equal length, got shapes {x.shape} and {y.shape}")
    if std is not None:
        std = np.asarray(_to_numpy(std), dtype=float)
        if std.shape != y.shape:
            raise ValueError(f"series {name!r}: y_std must have the shape of y {y.shape}, got {std.shape}")
    return x, y, std



def curves(
    series: Mapping[str, Any],
    *,
    title: str | None = None,
    xlabel: str | None = "step",
    ylabel: str | None = None,
    log_y: bool = False,
    log_x: bool = False,
) -> go.Figure:
    """Line plot of several named curves, with optional shaded mean ± std bands.

    Args:
        series: ``{name: (x, y)}``, ``{name: (x, y, y_std)}`` or
            ``{name: {"x": ..., "y": ..., "y_std": ...}}`` (``y_std`` optional); arrays,
            lists or tensors. Legend order follows the dict.
        title, xlabel, ylabel: labels (``None`` leaves them out).
        log_y, log_x: logarithmic axes. With ``log_y`` the lower edge of a band is clipped to
            ``y`` where ``y - std <= 0`` (it cannot be drawn on a log axis).

    Returns:
        A figure with one line trace per series (named after it) plus, for series with
        ``y_std``, one band trace before it (``showlegend=False``, same legend group).
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict {name: (x, y) or {'x', 'y', 'y_std'}}")
    fig = go.Figure()
    colors = palette(series)
    for name, spec in series.items():
        name = str(name)
        x, y, std = _as_series(name, spec)
        add_series(fig, name, x, y, std, colors[name], log_y=log_y)
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        fig.update_yaxes(type="log")
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def add_series(fig: go.Figure, name: str, x: np.ndarray, y: np.ndarray, std: np.ndarray | None, color: str, *,
               log_y: bool, showlegend: bool = True, **cell: int) -> None:
    """One series of :func:`curves` (and of each panel of :func:`~l2o_lib.plots.curve_panels`): its
    ± std band first when ``std`` is given (its lower edge clipped to ``y`` where ``y - std <= 0`` on
    a log axis), then its line; ``cell``: ``row`` / ``col`` of a subplot."""
    if std is not None:
        upper, lower = y + std, y - std
        if log_y:
            lower = np.where(lower > 0, lower, y)
        fig.add_trace(go.Scatter(
            x=np.concatenate([x, x[::-1]]),
            y=np.concatenate([upper, lower[::-1]]),
            fill="toself",
            mode="lines",  # plotly's default adds markers under 20 points: dots on the band's outline
            fillcolor=_rgba(color, 0.18),
            line=dict(width=0),
            hoverinfo="skip",
            showlegend=False,
            legendgroup=name,
            name=f"{name} ± std",
        ), **cell)
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=name, showlegend=showlegend,
                             line=dict(color=color, width=2)), **cell)


def bar(
    values: Mapping[str, float],
    *,
    errors: Mapping[str, float] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    log_y: bool = False,
    show_values: bool = True,
) -> go.Figure:
    """Bar chart of ``{name: value}`` in dict order, each bar in :func:`color_for` its name.

    ``errors`` (``{name: std}``, a subset of the names) adds error bars; ``show_values``
    prints each value (3 significant digits) on its bar. Returns a figure with one bar trace.
    """
    if not isinstance(values, Mapping) or not values:
        raise ValueError("values must be a non-empty dict {name: number}")
    names = [str(k) for k in values]
    ys = [float(_to_numpy(v)) for v in values.values()]
    fig = go.Figure(go.Bar(
        x=names,
        y=ys,
        marker_color=[color_for(n) for n in names],
        texttemplate="%{y:.3g}" if show_values else None,
        textposition="outside" if show_values else None,
        showlegend=False,
    ))
    if errors is not None:
        if not isinstance(errors, Mapping):
            raise ValueError("errors must be a dict {name: std} or None")
        unknown = set(map(str, errors)) - set(names)
        if unknown:
            raise ValueError(f"errors has names not in values: {sorted(unknown)}; allowed: {names}")
        errs = {str(k): float(_to_numpy(v)) for k, v in errors.items()}
        fig.update_traces(error_y=dict(type="data", array=[errs.get(n, 0.0) for n in names], visible=True))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def _format_cell(value: Any, float_format: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else format(float(value), float_format)
    return str(value)


def table(frame, *, title: str | None = None, float_format: str = ".4g") -> go.Figure:
    """A ``go.Table`` of a DataFrame; floats formatted with ``float_format``.

    The index becomes the first column unless it is the default ``RangeIndex``. The height
    grows with the number of rows (capped; longer tables scroll in the HTML).
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
    try:
        format(1.0, float_format)
    except (ValueError, TypeError):
        raise ValueError(f"float_format={float_format!r} is not a valid float format spec (e.g. '.4g')") from None
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    header = [str(c) for c in frame.columns]
    cells = [[_format_cell(v, float_format) for v in frame[c].tolist()] for c in frame.columns]
    fig = go.Figure(go.Table(
        header=dict(values=header, fill_color="#e8ecf3", align="left", font=dict(size=13)),
        cells=dict(values=cells, align="left", height=26, font=dict(size=12)),
    ))
    height = min(900, (70 if title else 30) + 32 + 26 * len(frame) + 20)
    fig.update_layout(template=TEMPLATE, width=WIDTH, height=max(height, 150), title=title,
                      margin=dict(l=20, r=20, t=60 if title else 20, b=10))
    return fig
