"""Curves in side-by-side panels: one panel per task or metric, one colour per series across them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import plotly.graph_objects as go

from .charts import _as_series, add_series
from .style import HEIGHT, _layout, palette

__all__ = ["curve_panels"]


def _check_panels(panels: Any, log_y: Any) -> set[str]:
    """The panels drawn on a log y axis; ``ValueError`` for a malformed ``panels`` or ``log_y``."""
    if not isinstance(panels, Mapping) or not panels:
        raise ValueError("panels must be a non-empty dict {panel title: {series name: (x, y) or (x, y, y_std)}}")
    for title, series in panels.items():
        if not isinstance(series, Mapping) or not series:
            raise ValueError(f"panel {title!r} must be a non-empty dict {{series name: (x, y) or (x, y, y_std)}}")
    if isinstance(log_y, bool):
        return set(panels) if log_y else set()
    if isinstance(log_y, str) or not isinstance(log_y, Collection):
        raise ValueError(f"log_y={log_y!r} is not allowed; use True, False or a list of panel titles")
    unknown = sorted(set(log_y) - set(panels))
    if unknown:
        raise ValueError(f"log_y names panels {unknown} that are not in panels {list(panels)}")
    return set(log_y)


def curve_panels(panels: Mapping[str, Mapping[str, Any]], *, cols: int = 2, title: str | None = None,
                 xlabel: str | None = "step", log_y: bool | Collection[str] = False) -> go.Figure:
    """Panels of curves with mean ± std bands, each drawn as :func:`~l2o_lib.plots.curves` draws one.

    Args:
        panels: ``{panel title: {series name: (x, y), (x, y, y_std) or {"x", "y", "y_std"}}}``; the
            title also names the panel's y quantity (e.g. ``"digits: test accuracy"``).
        cols: panels per row (rows follow).
        title, xlabel: the figure's title and every bottom x axis' label.
        log_y: ``True`` / ``False`` for every panel, or the titles of the panels on a log y axis.

    Returns:
        A figure whose series keep one colour and one legend entry across panels (a band's lower
        edge on a log axis is clipped to the curve where ``y - std <= 0``).
    """
    from plotly.subplots import make_subplots

    logged = _check_panels(panels, log_y)
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols={cols!r} is not allowed; use an integer >= 1")
    titles = list(panels)
    cols = min(cols, len(titles))
    rows = -(-len(titles) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.1, vertical_spacing=0.16)
    shown: set[str] = set()
    colors = palette(dict.fromkeys(str(name) for panel in titles for name in panels[panel]))
    for i, panel in enumerate(titles):
        r, c = i // cols + 1, i % cols + 1
        for name, spec in panels[panel].items():
            name = str(name)
            x, y, std = _as_series(name, spec)
            add_series(fig, name, x, y, std, colors[name], log_y=panel in logged, showlegend=name not in shown,
                       row=r, col=c)
            shown.add(name)
        if panel in logged:
            fig.update_yaxes(type="log", row=r, col=c)
    _layout(fig, title=title, xlabel=None, ylabel=None, height=max(HEIGHT, 330 * rows))
    if xlabel is not None:
        fig.update_xaxes(title_text=xlabel, row=rows)
    return fig
