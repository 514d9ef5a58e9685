"""Plotly figures with one look, and saving them as HTML + PNG.

The builders (:func:`curves`, :func:`bar`, :func:`table`; for landscapes
:func:`landscape_contour` and :func:`landscape_surface`; for learned schedules and mixing
:func:`lr_schedules`, :func:`mixing_areas` and :func:`layer_bars`; for symbolic regression
:func:`pareto_fronts` and :func:`parity`) take plain arrays, dicts,
DataFrames and the library's result objects (``LandscapeGrid``, ``Projection``) and compute
nothing heavy: experiments produce the numbers, these only draw them.
All figures share a template, a size, and a colour per optimizer name (:func:`color_for`), so
"Adam" is the same green in every notebook.

:func:`save` writes ``<name>.html`` (the plotly.js bundle is written once per directory as
``plotly.min.js`` instead of 4-5 MB inside every file) and ``<name>.png`` through kaleido.

PNG export runs a headless Chromium through kaleido / choreographer. One browser is started
lazily on the first PNG and reused for the whole process (starting it costs a few seconds, each
later PNG a fraction of a second); :func:`stop_export_server` closes it and is registered with
``atexit``. The browser is looked up by :func:`find_browser` (``BROWSER_PATH``, then the usual
names on ``PATH`` and install locations such as Debian's ``/usr/bin/chromium``); nothing is ever
downloaded. When no PNG can be made (no browser, browser crash, timeout) :func:`save` warns once
per process with the reason, keeps the HTML and returns only its path.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import shutil
import signal
import subprocess
import threading
import time
import warnings
import zlib
from collections.abc import Mapping
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from .config import check_int, check_nonnegative, check_positive
from .results import atomic_write_bytes, atomic_write_text, check_name

__all__ = [
    "TEMPLATE",
    "WIDTH",
    "HEIGHT",
    "KNOWN_COLORS",
    "color_for",
    "curves",
    "bar",
    "table",
    "landscape_contour",
    "landscape_surface",
    "lr_schedules",
    "mixing_areas",
    "layer_bars",
    "pareto_fronts",
    "parity",
    "save",
    "find_browser",
    "png_available",
    "stop_export_server",
]

TEMPLATE = "plotly_white"
WIDTH = 800
HEIGHT = 450

# Fixed colours for the optimizers of the papers; a "†" variant (the tuned / re-run baseline)
# gets the light partner of its base colour (D3 category20 pairs), so pairs read as related.
KNOWN_COLORS: dict[str, str] = {
    "SGD": "#1f77b4",
    "SGD†": "#aec7e8",
    "Momentum": "#ff7f0e",
    "Momentum†": "#ffbb78",
    "Adam": "#2ca02c",
    "RMSProp": "#9467bd",
    "SL2O": "#d62728",
    "MLR-SNet": "#8c564b",
    "L3RS": "#e377c2",
    "P-BFGS": "#17becf",
    "P+-BFGS": "#bcbd22",
}
_KNOWN_LOWER = {k.lower(): v for k, v in KNOWN_COLORS.items()}

# Fallback for other names (plotly's Dark24 minus colours too close to the ones above).
_FALLBACK_COLORS = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
    "#EB663B", "#511CB5", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
    "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
)


def color_for(name: str) -> str:
    """The colour (``"#rrggbb"``) of a series called ``name``, the same in every figure and process.

    Known optimizer names (:data:`KNOWN_COLORS`, matched case-insensitively) have fixed
    colours; any other name gets one from a fallback palette chosen by a CRC32 of the name
    (stable across processes, unlike ``hash``). Two unknown names may share a colour.
    """
    if not isinstance(name, str):
        raise ValueError(f"name must be a string, got {name!r}")
    key = name.strip()
    if key.lower() in _KNOWN_LOWER:
        return _KNOWN_LOWER[key.lower()]
    return _FALLBACK_COLORS[zlib.crc32(key.encode("utf-8")) % len(_FALLBACK_COLORS)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, *, title: str | None, xlabel: str | None, ylabel: str | None,
            height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        width=WIDTH,
        height=height,
        title=title,
        margin=dict(l=70, r=20, t=60 if title else 30, b=60),
        legend=dict(bgcolor="rgba(255,255,255,0.6)"),
    )
    if xlabel is not None:
        fig.update_xaxes(title_text=xlabel)
    if ylabel is not None:
        fig.update_yaxes(title_text=ylabel)
    return fig


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


def _to_numpy(values: Any) -> Any:
    # Tensors (possibly on the GPU / requiring grad) -> numpy; everything else as is.
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return values


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
    for name, spec in series.items():
        name = str(name)
        x, y, std = _as_series(name, spec)
        color = color_for(name)
        if std is not None:
            upper, lower = y + std, y - std
            if log_y:
                lower = np.where(lower > 0, lower, y)
            fig.add_trace(go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([upper, lower[::-1]]),
                fill="toself",
                fillcolor=_rgba(color, 0.18),
                line=dict(width=0),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
                name=f"{name} ± std",
            ))
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, legendgroup=name,
                                 line=dict(color=color, width=2)))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        fig.update_yaxes(type="log")
    if log_x:
        fig.update_xaxes(type="log")
    return fig


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


# --------------------------------------------------------------------------- landscapes


def _field_values(grid: Any, field: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(alphas, betas, values)`` of a LandscapeGrid-like object, shapes checked."""
    if field not in ("loss", "accuracy"):
        raise ValueError(f"field must be 'loss' or 'accuracy', got {field!r}")
    if not all(hasattr(grid, a) for a in ("alphas", "betas", field)):
        raise ValueError(f"grid must be a LandscapeGrid (alphas, betas, {field}), got {type(grid).__name__}")
    alphas = np.asarray(_to_numpy(grid.alphas), dtype=float)
    betas = np.asarray(_to_numpy(grid.betas), dtype=float)
    values = np.asarray(_to_numpy(getattr(grid, field)), dtype=float)
    if alphas.ndim != 1 or betas.ndim != 1 or len(alphas) < 2 or len(betas) < 2:
        raise ValueError(f"grid.alphas and grid.betas must be 1-d with >= 2 points, got {alphas.shape} and {betas.shape}")
    if values.shape != (len(alphas), len(betas)):
        raise ValueError(f"grid.{field} has shape {values.shape}; expected (len(alphas), len(betas)) = "
                         f"{(len(alphas), len(betas))} ('ij' indexing)")
    # Diverged corners of a landscape hold inf / nan: drawn as gaps, not as a wrecked colour range.
    return alphas, betas, np.where(np.isfinite(values), values, np.nan)


def _coords(name: str, spec: Any) -> np.ndarray:
    """A ``(K, 2)`` float array from an array / tensor / :class:`~l2o_lib.landscape.Projection`."""
    if hasattr(spec, "coords") and hasattr(spec, "residual"):
        spec = spec.coords
    coords = np.asarray(_to_numpy(spec), dtype=float)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) < 1:
        raise ValueError(f"trajectory {name!r} must be (K, 2) plane coordinates (K >= 1) or a Projection, "
                         f"got shape {coords.shape}")
    return coords


def _log_values(values: np.ndarray, log_scale: bool, what: str) -> np.ndarray:
    if not log_scale:
        return values
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() <= 0:
        raise ValueError(f"log_scale=True needs positive {what}; the smallest is {finite.min():.3g} "
                         f"(pass log_scale=False)")
    return np.log10(values)


def _resolve_log(log_scale: bool | None, field: str) -> bool:
    if log_scale is None:
        return field == "loss"
    if not isinstance(log_scale, bool):
        raise ValueError(f"log_scale must be True, False or None, got {log_scale!r}")
    return log_scale


def _origin_shift(origin: Any, trajectories: Mapping[str, np.ndarray]) -> np.ndarray:
    """The ``(α, β)`` subtracted from every coordinate so that ``origin`` lands at ``(0, 0)``."""
    if origin is None:
        return np.zeros(2)
    if isinstance(origin, str):
        if origin not in trajectories:
            raise ValueError(f"origin={origin!r} is not a trajectory name; allowed: {sorted(trajectories)} "
                             f"or an (alpha, beta) pair or None")
        return trajectories[origin][-1].copy()
    shift = np.asarray(_to_numpy(origin), dtype=float)
    if shift.shape != (2,) or not np.all(np.isfinite(shift)):
        raise ValueError(f"origin must be None, a trajectory name or a finite (alpha, beta) pair, got {origin!r}")
    return shift


def _trajectory_dict(trajectories: Mapping[str, Any] | None) -> dict[str, Any]:
    if trajectories is None:
        return {}
    if not isinstance(trajectories, Mapping):
        raise ValueError("trajectories must be a dict {name: (K, 2) coords or Projection} or None")
    return {str(k): v for k, v in trajectories.items()}


def _legend_key(fig: go.Figure, *, symbols: tuple[str, str], scatter=go.Scatter) -> None:
    # Two legend-only entries explaining the start / end symbols (grey, no data drawn).
    for label, symbol in zip(("start", "end"), symbols):
        kwargs = dict(x=[None], y=[None], mode="markers", name=label, legendgroup="__key__",
                      marker=dict(symbol=symbol, color="#555555", size=10 if scatter is go.Scatter else 6))
        if scatter is go.Scatter3d:
            kwargs["z"] = [None]
        fig.add_trace(scatter(**kwargs))


def landscape_contour(
    grid: Any,
    trajectories: Mapping[str, Any] | None = None,
    *,
    title: str | None = None,
    log_scale: bool | None = None,
    field: str = "loss",
    origin: str | tuple[float, float] | None = None,
    xlabel: str = "α (d1)",
    ylabel: str = "β (d2)",
    colorscale: str = "Viridis",
    ncontours: int = 30,
) -> go.Figure:
    """Filled contour of a loss landscape with optimizer trajectories drawn over it.

    The SL2O figure (and Li et al., 2018, Fig. 9) puts the end of training at the centre: use a
    plane whose origin is that endpoint (:func:`~l2o_lib.landscape.pca_plane` does this by
    default), or pass ``origin`` to shift every coordinate, grid axes included, so that a given
    point sits at ``(0, 0)``.

    Args:
        grid: a :class:`~l2o_lib.landscape.LandscapeGrid` (``field[i, j]`` at
            ``(alphas[i], betas[j])``); non-finite values are left blank.
        trajectories: ``{name: coords}`` with ``coords`` a ``(K, 2)`` array / tensor of plane
            coordinates or a :class:`~l2o_lib.landscape.Projection`; dict order is legend order.
            Each is a line in :func:`color_for` its name, its first point a circle and its last
            a star (both white-edged).
        title, xlabel, ylabel: labels.
        log_scale: colour by ``log10(field)`` (hover still shows the value itself). ``None``
            (default): log for ``"loss"``, linear for ``"accuracy"``.
        field: ``"loss"`` or ``"accuracy"``.
        origin: ``None`` (no shift), a trajectory name (its *last* point goes to ``(0, 0)``) or an
            ``(alpha, beta)`` pair to subtract.
        colorscale, ncontours: passed to ``go.Contour``.

    Returns:
        A figure with one ``go.Contour`` trace, then per trajectory a line trace (named after it)
        and two marker traces (start, end; same legend group, not in the legend), and, when there
        are trajectories, two legend-only traces ``"start"`` and ``"end"`` explaining the symbols.

    Raises:
        ValueError: bad ``field`` / grid shapes / trajectory shapes / ``origin``, or
            ``log_scale=True`` with non-positive values.
    """
    alphas, betas, values = _field_values(grid, field)
    log_scale = _resolve_log(log_scale, field)
    check_int("ncontours", ncontours, minimum=2)
    trajs = {name: _coords(name, spec) for name, spec in _trajectory_dict(trajectories).items()}
    shift = _origin_shift(origin, trajs)
    z = _log_values(values, log_scale, f"grid.{field}")
    label = f"log₁₀ {field}" if log_scale else field
    fig = go.Figure(go.Contour(
        x=alphas - shift[0], y=betas - shift[1], z=z.T, customdata=values.T,
        colorscale=colorscale, ncontours=ncontours, contours=dict(coloring="fill", showlines=True),
        line=dict(width=0.5, color="rgba(255,255,255,0.35)"),
        colorbar=dict(title=dict(text=label, side="right"), thickness=15),
        hovertemplate=f"α=%{{x:.3g}}<br>β=%{{y:.3g}}<br>{field}=%{{customdata:.4g}}<extra></extra>",
        name=field, showlegend=False,
    ))
    for name, coords in trajs.items():
        xy = coords - shift
        color = color_for(name)
        steps = np.arange(len(xy))
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines", name=name, legendgroup=name,
                                 line=dict(color=color, width=2.5), customdata=steps,
                                 hovertemplate=f"{name}<br>step %{{customdata}}<br>α=%{{x:.3g}}, β=%{{y:.3g}}<extra></extra>"))
        for where, symbol, size in ((0, "circle", 11), (-1, "star", 16)):
            fig.add_trace(go.Scatter(
                x=[xy[where, 0]], y=[xy[where, 1]], mode="markers", name=f"{name} {'start' if where == 0 else 'end'}",
                legendgroup=name, showlegend=False, hoverinfo="name+x+y",
                marker=dict(symbol=symbol, size=size, color=color, line=dict(color="white", width=1.5)),
            ))
    if trajs:
        _legend_key(fig, symbols=("circle", "star"))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel, height=560)
    # Legend above the plot: the colour bar takes the right-hand side.
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"),
                      margin=dict(t=100 if title else 60))
    fig.update_xaxes(range=[alphas[0] - shift[0], alphas[-1] - shift[0]], showgrid=False, zeroline=False)
    fig.update_yaxes(range=[betas[0] - shift[1], betas[-1] - shift[1]], showgrid=False, zeroline=False)
    return fig


def landscape_surface(
    grid: Any,
    trajectories: Mapping[str, Any] | None = None,
    *,
    title: str | None = None,
    log_scale: bool | None = None,
    field: str = "loss",
    origin: str | tuple[float, float] | None = None,
    xlabel: str = "α (d1)",
    ylabel: str = "β (d2)",
    colorscale: str = "Viridis",
    lift: float = 0.01,
    eye: tuple[float, float, float] = (1.2, -1.2, 1.5),
) -> go.Figure:
    """3-D surface of a loss landscape with trajectories drawn on it as 3-D lines.

    Args:
        grid, title, xlabel, ylabel, log_scale, field, origin, colorscale: as in
            :func:`landscape_contour`.
        trajectories: ``{name: spec}``, ``spec`` either plane coordinates (a ``(K, 2)`` array /
            tensor or a :class:`~l2o_lib.landscape.Projection`), whose heights are read off the
            grid by :func:`~l2o_lib.landscape.grid_values_at` (bilinear; points outside the grid
            are left out of the line), or a pair ``(coords, values)`` with ``values`` ``(K,)``
            the field along the trajectory (e.g. the losses logged during training; then the
            line shows them even where they differ from the grid's plane).
        lift: each line is raised by this fraction of the surface's height range, so it is
            drawn above the surface instead of disappearing into it.
        eye: camera position of the static view (plotly's ``scene.camera.eye``); the default
            looks down from high enough that a valley does not hide the trajectories in it.

    Returns:
        A figure with one ``go.Surface`` trace, then per trajectory a ``go.Scatter3d`` line
        (named after it) and two marker traces (start: circle, end: diamond, since 3-D markers
        have no star), and two legend-only traces ``"start"`` / ``"end"`` when there are
        trajectories.

    Raises:
        ValueError: as :func:`landscape_contour`, plus ``values`` not of length ``K`` or a
            negative ``lift``.
    """
    from .landscape import grid_values_at

    alphas, betas, values = _field_values(grid, field)
    log_scale = _resolve_log(log_scale, field)
    check_nonnegative("lift", lift)
    if not isinstance(eye, (tuple, list)) or len(eye) != 3:
        raise ValueError(f"eye must be three numbers (x, y, z), got {eye!r}")
    coords, heights = {}, {}
    for name, spec in _trajectory_dict(trajectories).items():
        if isinstance(spec, tuple) and len(spec) == 2 and not hasattr(spec, "residual"):
            coords[name] = _coords(name, spec[0])
            h = np.asarray(_to_numpy(spec[1]), dtype=float)
            if h.shape != (len(coords[name]),):
                raise ValueError(f"trajectory {name!r}: values must have shape ({len(coords[name])},), got {h.shape}")
        else:
            coords[name] = _coords(name, spec)
            h = grid_values_at(grid, coords[name], field=field)
        heights[name] = _log_values(h, log_scale, f"{field} along trajectory {name!r}")
    shift = _origin_shift(origin, coords)
    z = _log_values(values, log_scale, f"grid.{field}")
    label = f"log₁₀ {field}" if log_scale else field
    finite = z[np.isfinite(z)]
    offset = lift * float(finite.max() - finite.min()) if finite.size else 0.0
    fig = go.Figure(go.Surface(
        x=alphas - shift[0], y=betas - shift[1], z=z.T, customdata=values.T, colorscale=colorscale,
        colorbar=dict(title=dict(text=label, side="right"), thickness=15, len=0.75),
        hovertemplate=f"α=%{{x:.3g}}<br>β=%{{y:.3g}}<br>{field}=%{{customdata:.4g}}<extra></extra>",
        name=field, showlegend=False, opacity=0.9,
    ))
    for name, xy in coords.items():
        xy = xy - shift
        h = heights[name] + offset
        color = color_for(name)
        fig.add_trace(go.Scatter3d(x=xy[:, 0], y=xy[:, 1], z=h, mode="lines", name=name, legendgroup=name,
                                   line=dict(color=color, width=6)))
        for where, symbol in ((0, "circle"), (-1, "diamond")):
            fig.add_trace(go.Scatter3d(
                x=[xy[where, 0]], y=[xy[where, 1]], z=[h[where]], mode="markers",
                name=f"{name} {'start' if where == 0 else 'end'}", legendgroup=name, showlegend=False,
                marker=dict(symbol=symbol, size=6, color=color, line=dict(color="white", width=1)),
            ))
    if coords:
        _legend_key(fig, symbols=("circle", "diamond"), scatter=go.Scatter3d)
    _layout(fig, title=title, xlabel=None, ylabel=None, height=600)
    fig.update_layout(
        scene=dict(xaxis_title=xlabel, yaxis_title=ylabel, zaxis_title=label,
                   camera=dict(eye=dict(zip("xyz", map(float, eye)))), aspectmode="manual",
                   aspectratio=dict(x=1, y=1, z=0.6)),
        legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"),
        margin=dict(l=20, r=0, t=90 if title else 50, b=10),
    )
    return fig


# --------------------------------------------------------------------------- schedules and mixing


def lr_schedules(
    series: Mapping[str, Any],
    *,
    title: str | None = None,
    log_y: bool = True,
    xlabel: str = "step",
    ylabel: str = "learning rate",
) -> go.Figure:
    """Learning-rate curves of several tasks / methods, drawn as steps (``line_shape="hv"``).

    Args:
        series: ``{name: (steps, lrs)}``, 1-d arrays / lists / tensors of equal length, e.g. the
            LR a learned schedule (MLR-SNet, L3RS) produced at each step, or a hand-designed
            schedule evaluated at those steps. Colours by :func:`color_for` the name.
        log_y: logarithmic LR axis (the usual view: decays span decades). Non-positive LRs
            (a cosine schedule ending at 0) cannot be drawn there and are left out of the line.

    Returns:
        A figure with one line trace per series.

    Raises:
        ValueError: empty ``series``, an entry that is not ``(steps, lrs)`` of equal length.
    """
    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict {name: (steps, lrs)}")
    fig = go.Figure()
    for name, spec in series.items():
        name = str(name)
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise ValueError(f"series {name!r} must be a pair (steps, lrs)")
        x, y, _ = _as_series(name, spec)
        if log_y:
            y = np.where(y > 0, y, np.nan)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=dict(color=color_for(name), width=2, shape="hv"),
                                 connectgaps=False))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    if log_y:
        fig.update_yaxes(type="log", exponentformat="power")
    return fig


def _pick_layers(n_layers: int, layers: Any, layer_names: list[str], max_layers: int) -> list[int]:
    if layers is None:
        if n_layers <= max_layers:
            return list(range(n_layers))
        # Evenly spaced, always the first and the last layer.
        return sorted(set(np.linspace(0, n_layers - 1, max_layers).round().astype(int).tolist()))
    picked = []
    for item in layers:
        if isinstance(item, str):
            if item not in layer_names:
                raise ValueError(f"layers: {item!r} is not a layer name; allowed: {layer_names}")
            picked.append(layer_names.index(item))
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and -n_layers <= item < n_layers:
            picked.append(int(item) % n_layers)
        else:
            raise ValueError(f"layers must hold layer names or indices in [0, {n_layers}), got {item!r}")
    if not picked:
        raise ValueError("layers must select at least one layer")
    return picked


def mixing_areas(
    steps: Any,
    mu: Any,
    *,
    base_names: list[str],
    layer_names: list[str] | None = None,
    title: str | None = None,
    layers: list[int | str] | None = None,
    max_layers: int = 12,
    cols: int = 4,
    xlabel: str = "step",
    atol: float = 1e-3,
) -> go.Figure:
    """Stacked areas of per-layer mixing coefficients ``μ`` over time, one small panel per layer.

    L3RS mixes ``P`` base optimizers per layer: ``Δθ_l = Σ_p μ_{t,l,p} Δθ_{l,p}`` with
    ``μ_{t,l,·}`` on the simplex. Each panel stacks the ``P`` shares (0 to 1) of one layer;
    base optimizers keep their :func:`color_for` colour across panels and figures.

    Args:
        steps: ``(T,)`` step numbers.
        mu: ``(T, L, P)`` coefficients, non-negative, summing to 1 over ``P`` (within ``atol``).
        base_names: ``P`` names of the base optimizers (legend, colours).
        layer_names: ``L`` panel titles (default ``"layer 0"``, ...).
        layers: which layers to draw (indices or names, in that order). Default: all of them,
            or ``max_layers`` evenly spaced ones (first and last included) when ``L`` is larger,
            which the title then says ("12 of 20 layers").
        cols: panels per row.

    Returns:
        A ``make_subplots`` figure with ``P`` filled scatter traces per drawn layer (stack group
        per panel; only the first panel's appear in the legend).

    Raises:
        ValueError: shapes that disagree, coefficients off the simplex, unknown ``layers``.
    """
    from plotly.subplots import make_subplots

    x = np.asarray(_to_numpy(steps))
    m = np.asarray(_to_numpy(mu), dtype=float)
    if m.ndim != 3:
        raise ValueError(f"mu must have shape (T, L, P), got {m.shape}")
    T, n_layers, P = m.shape
    if x.shape != (T,):
        raise ValueError(f"steps must have shape (T,) = ({T},) to match mu, got {x.shape}")
    base_names = [str(n) for n in base_names] if isinstance(base_names, (list, tuple)) else base_names
    if not isinstance(base_names, list) or len(base_names) != P:
        raise ValueError(f"base_names must be a list of P = {P} names (mu's last axis), got {base_names!r}")
    if layer_names is None:
        layer_names = [f"layer {i}" for i in range(n_layers)]
    elif not isinstance(layer_names, (list, tuple)) or len(layer_names) != n_layers:
        raise ValueError(f"layer_names must be a list of L = {n_layers} names (mu's middle axis), got {layer_names!r}")
    layer_names = [str(n) for n in layer_names]
    check_nonnegative("atol", atol)
    if not np.all(np.isfinite(m)) or m.min() < -atol or np.abs(m.sum(-1) - 1).max() > atol:
        raise ValueError(f"mu must be finite, >= 0 and sum to 1 over its last axis (within atol={atol}); "
                         f"the largest deviation of a sum from 1 is {np.nanmax(np.abs(m.sum(-1) - 1)):.3g}")
    check_int("max_layers", max_layers, minimum=1)
    check_int("cols", cols, minimum=1)
    picked = _pick_layers(n_layers, layers, layer_names, max_layers)
    cols = min(cols, len(picked))
    rows = -(-len(picked) // cols)
    # Long parameter names ("stages.2.block1.conv2.weight") would overrun a small panel.
    short = [n if len(n) <= 28 else "…" + n[-27:] for n in (layer_names[i] for i in picked)]
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=short, shared_xaxes=True, shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=min(0.12, 0.5 / rows) if rows > 1 else 0.1)
    for k, layer in enumerate(picked):
        r, c = divmod(k, cols)
        for p, base in enumerate(base_names):
            color = color_for(base)
            fig.add_trace(go.Scatter(
                x=x, y=m[:, layer, p], mode="lines", stackgroup=f"layer{layer}", name=base, legendgroup=base,
                showlegend=k == 0, line=dict(width=0.5, color=color), fillcolor=_rgba(color, 0.75),
                hovertemplate=f"{layer_names[layer]}<br>{base}: %{{y:.3f}}<br>step %{{x}}<extra></extra>",
            ), row=r + 1, col=c + 1)
    if layers is None and len(picked) < n_layers:  # say so when layers were left out
        title = f"{title} ({len(picked)} of {n_layers} layers)" if title else f"{len(picked)} of {n_layers} layers"
    height = 120 + 190 * rows
    _layout(fig, title=title, xlabel=None, ylabel=None, height=height)
    fig.update_yaxes(range=[0, 1], tickvals=[0, 0.5, 1])
    fig.update_xaxes(title_text=xlabel, row=rows)
    fig.update_yaxes(title_text="μ", col=1)
    fig.update_annotations(font_size=11)
    # Legend in the title row (top right): above the panels it would collide with their titles.
    fig.update_layout(legend=dict(orientation="h", x=1, xanchor="right", y=0.995, yanchor="top",
                                  yref="container"),
                      margin=dict(t=100 if title else 70))
    return fig


def layer_bars(
    values: Any,
    layer_names: list[str],
    *,
    title: str | None = None,
    ylabel: str | None = "λ",
    xlabel: str | None = None,
    log_y: bool = False,
) -> go.Figure:
    """Bars of one number per layer (e.g. L3RS's λ), or grouped bars for several series.

    Args:
        values: ``(L,)`` array / tensor (one series, one colour), or ``{name: (L,)}`` for grouped
            bars coloured by :func:`color_for` the name (e.g. one series per task or seed).
        layer_names: ``L`` names along the x axis, in order.

    Returns:
        A figure with one bar trace per series.

    Raises:
        ValueError: empty input or a series whose length is not ``len(layer_names)``.
    """
    if not isinstance(layer_names, (list, tuple)) or not layer_names:
        raise ValueError("layer_names must be a non-empty list of names")
    names = [str(n) for n in layer_names]
    if isinstance(values, Mapping):
        if not values:
            raise ValueError("values must be an (L,) array or a non-empty dict {name: (L,) array}")
        series = {str(k): v for k, v in values.items()}
    else:
        series = {"": values}
    fig = go.Figure()
    for name, v in series.items():
        v = np.asarray(_to_numpy(v), dtype=float)
        if v.shape != (len(names),):
            label = f"values[{name!r}]" if name else "values"
            raise ValueError(f"{label} must have shape ({len(names)},) (one value per layer name), got {v.shape}")
        fig.add_trace(go.Bar(x=names, y=v, name=name or None, showlegend=bool(name),
                             marker_color=color_for(name) if name else KNOWN_COLORS["L3RS"]))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    fig.update_layout(barmode="group")
    fig.update_xaxes(tickangle=-45 if len(names) > 8 or max(map(len, names)) > 10 else 0)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


# --------------------------------------------------------------------------- PNG export


def find_browser() -> str | None:
    """Path of the Chromium-family browser used for PNG export, or ``None``.

    Order: the ``BROWSER_PATH`` environment variable (choreographer's own override), then
    choreographer's search (its downloaded copy, ``chrome``/``chromium``/... on ``PATH``), then
    the usual Linux locations (Debian's ``/usr/bin/chromium``). Never downloads anything.
    """
    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.path.isfile(env) and os.access(env, os.X_OK) else None
    try:
        from choreographer.browsers import Chromium

        found = Chromium.find_browser(skip_local=False)
        if found:
            return str(found)
    except Exception:  # noqa: BLE001 - choreographer missing or changed: fall back to our own search
        pass
    for candidate in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(candidate)
        if path:
            return path
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _describe(error: BaseException) -> str:
    # choreographer raises errors with several message parts in args; join them readably.
    text = " ".join(str(a) for a in error.args) if error.args else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _kill_browser(k: Any) -> None:
    """Kill the browser process group of a Kaleido whose close() failed or never ran."""
    proc = getattr(k, "subprocess", None)  # choreographer's Popen of its browser wrapper
    if proc is None or proc.poll() is not None:
        return
    try:
        # The wrapper is started with start_new_session=True: its group holds the browser too.
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)
    except (OSError, subprocess.SubprocessError):
        pass


class PngExportError(RuntimeError):
    """A PNG could not be made; the message says why (turned into the one-time warning)."""


class _ExportServer:
    """One headless browser (a ``kaleido.Kaleido``) on a private event-loop thread.

    Not kaleido's ``start_sync_server``: when the browser fails to start, that server's thread
    dies silently and every later call blocks forever on its queue. Here start-up failures
    and render timeouts come back as :class:`PngExportError`, and a browser that failed to
    start is not retried for the rest of the process (so each save does not pay the timeout).
    """

    START_TIMEOUT_S = 60.0
    RENDER_TIMEOUT_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._kaleido: Any = None
        self._broken: str | None = None  # reason the browser cannot be used in this process
        self.warned = False  # the once-per-process "PNG export disabled" warning was issued
        self.start_seconds: float | None = None  # how long the last start took (diagnostics)

    @property
    def running(self) -> bool:
        return self._kaleido is not None

    def _start(self) -> None:
        if self._broken:
            raise PngExportError(self._broken)
        browser = find_browser()
        if browser is None:
            self._broken = ("no Chromium/Chrome browser found (set BROWSER_PATH, or install one, "
                            "e.g. Debian's `chromium` package)")
            raise PngExportError(self._broken)
        try:
            import kaleido
        except ImportError as e:
            self._broken = f"kaleido is not importable ({e})"
            raise PngExportError(self._broken) from None

        async def open_browser() -> Any:
            # Built inside the loop: Kaleido creates asyncio objects in its constructor.
            # mathjax=False: the default loads MathJax from a CDN, which offline machines cannot
            # reach (LaTeX in labels is therefore not typeset in PNGs). enable_sandbox=False is
            # choreographer's default and adds --no-sandbox, which Chromium needs when run as root.
            k = kaleido.Kaleido(path=browser, n=1, timeout=self.RENDER_TIMEOUT_S, mathjax=False,
                                enable_sandbox=False)
            started["kaleido"] = k  # so a timed-out start can still kill the process
            try:
                await k.open()
            except BaseException:
                await asyncio.shield(k.close())
                raise
            return k

        started: dict[str, Any] = {}
        t0 = time.perf_counter()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="l2o-kaleido", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        future = asyncio.run_coroutine_threadsafe(open_browser(), loop)
        try:
            self._kaleido = future.result(self.START_TIMEOUT_S)
        except BaseException as e:
            # Cancelling lets open_browser close a half-started browser before the loop stops.
            future.cancel()
            concurrent.futures.wait([future], timeout=2)
            _kill_browser(started.get("kaleido"))
            self._shutdown_loop()
            if not isinstance(e, Exception):  # KeyboardInterrupt & co. are the user's, not ours
                raise
            # Any other start failure disables PNG export for the process.
            reason = "timed out" if isinstance(e, FutureTimeoutError) else _describe(e)
            self._broken = f"could not start the browser {browser!r} for kaleido ({reason})"
            raise PngExportError(self._broken) from None
        self.start_seconds = time.perf_counter() - t0
        atexit.register(stop_export_server)

    def render_png(self, fig: go.Figure, scale: float) -> bytes:
        """PNG bytes of ``fig`` at ``scale`` (starting the browser on first use)."""
        with self._lock:
            if self._kaleido is None:
                self._start()
            k, loop = self._kaleido, self._loop
        # Outside the lock: kaleido queues concurrent renders on its tab itself.
        try:
            future = asyncio.run_coroutine_threadsafe(k.calc_fig(fig, opts={"format": "png", "scale": scale}), loop)
            data = future.result(self.RENDER_TIMEOUT_S + 10)
        except FutureTimeoutError:
            future.cancel()
            # A hung browser: close it, and do not make every later save wait this long again.
            self.stop()
            self._broken = f"rendering a PNG took longer than {self.RENDER_TIMEOUT_S + 10:.0f} s"
            raise PngExportError(self._broken) from None
        except Exception as e:  # noqa: BLE001 - reported to the caller as one kind of failure
            raise PngExportError(f"kaleido failed to render the figure ({_describe(e)})") from None
        if not isinstance(data, (bytes, bytearray)) or not bytes(data[:8]) == b"\x89PNG\r\n\x1a\n":
            raise PngExportError("kaleido returned something that is not a PNG")
        return bytes(data)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = self._kaleido = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(10)
            if not loop.is_running():
                loop.close()

    def stop(self) -> None:
        """Close the browser and its loop thread; a later render starts a new one."""
        with self._lock:
            k, loop = self._kaleido, self._loop
            if k is not None and loop is not None and not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(k.close(), loop).result(15)
                except Exception:  # noqa: BLE001 - best effort at shutdown; the process may be exiting
                    pass
            _kill_browser(k)
            self._shutdown_loop()
        atexit.unregister(stop_export_server)


# The one piece of module state: the lazily started browser (with its warn-once flag).
_SERVER = _ExportServer()


def stop_export_server() -> None:
    """Close the PNG export browser if it is running (also called at interpreter exit)."""
    _SERVER.stop()


def png_available() -> bool:
    """Whether PNG export works in this process (starts the browser if needed; never raises)."""
    try:
        with _SERVER._lock:
            if not _SERVER.running:
                _SERVER._start()
        return True
    except PngExportError:
        return False


def _render_png(fig: go.Figure, scale: float) -> bytes:
    # The single seam between save() and kaleido (tests monkeypatch it to simulate failures).
    return _SERVER.render_png(fig, scale)


def _warn_png_once(reason: str) -> None:
    if not _SERVER.warned:
        _SERVER.warned = True
        warnings.warn(f"PNG export disabled, writing HTML only: {reason}", RuntimeWarning, stacklevel=3)


def _reset_png_warning() -> None:
    """Re-arm the once-per-process PNG warning (for tests)."""
    _SERVER.warned = False


def _ensure_plotlyjs(directory: Path) -> Path:
    """Write plotly.js as ``directory/plotly.min.js`` unless the same bundle is already there."""
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = directory / "plotly.min.js"
    if not source.is_file():  # a plotly that stores its bundle elsewhere: ask it for the text
        from plotly.offline import get_plotlyjs

        if not target.exists():
            atomic_write_text(target, get_plotlyjs())
        return target
    # A size check is enough to notice a bundle left by another plotly version, without
    # reading 4-5 MB on every save.
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        atomic_write_bytes(target, source.read_bytes())
    return target


def pareto_fronts(fronts: Mapping[str, Any], *, chosen: Mapping[str, int] | None = None,
                  title: str | None = "Pareto fronts of the symbolic fits") -> go.Figure:
    """Error against complexity of each fit's Pareto front, the chosen formula circled.

    Args:
        fronts: ``{name: (complexities, errors)}`` (e.g. ``1 − R²`` per candidate), drawn on a log axis.
        chosen: ``{name: complexity of the chosen formula}``.
    """
    if not isinstance(fronts, Mapping) or not fronts:
        raise ValueError("fronts must be a non-empty dict {name: (complexities, errors)}")
    fig = go.Figure()
    for name, (cx, err) in fronts.items():
        cx, err = np.asarray(cx, dtype=float), np.clip(np.asarray(err, dtype=float), 1e-12, None)
        color = color_for(name)
        fig.add_trace(go.Scatter(x=cx, y=err, mode="lines+markers", name=name, line=dict(color=color, shape="hv")))
        if chosen and name in chosen:
            pick = cx == chosen[name]
            fig.add_trace(go.Scatter(x=cx[pick], y=err[pick], mode="markers", showlegend=False, hoverinfo="skip",
                                     marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color=color, width=2.5))))
    fig.update_yaxes(type="log")
    return _layout(fig, title=title, xlabel="complexity (nodes of the expression)", ylabel="1 − R²")


def parity(series: Mapping[str, Any], *, title: str | None = "Fitted formula vs learned optimizer",
           max_points: int = 2000) -> go.Figure:
    """One panel per fit: the formula's prediction against the learned optimizer's output, with the
    identity line; ``series`` is ``{name: (learned, predicted)}`` (at most ``max_points`` drawn each)."""
    from plotly.subplots import make_subplots

    if not isinstance(series, Mapping) or not series:
        raise ValueError("series must be a non-empty dict {name: (learned, predicted)}")
    names = list(series)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.08, vertical_spacing=0.15)
    for i, name in enumerate(names):
        y, p = (np.asarray(_to_numpy(v), dtype=float).reshape(-1) for v in series[name])
        if len(y) > max_points:  # a fixed thinning: the same points in every export
            keep = np.linspace(0, len(y) - 1, max_points).astype(int)
            y, p = y[keep], p[keep]
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Scatter(x=y, y=p, mode="markers", name=name, showlegend=False,
                                   marker=dict(size=3, opacity=0.4, color=color_for(name))), row=r, col=c)
        lo, hi = float(np.nanmin([y.min(), p.min()])), float(np.nanmax([y.max(), p.max()]))
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", showlegend=False, hoverinfo="skip",
                                 line=dict(color="#888", dash="dash")), row=r, col=c)
    _layout(fig, title=title, xlabel=None, ylabel=None, height=max(HEIGHT, 330 * rows))
    fig.update_xaxes(title_text="learned")
    fig.update_yaxes(title_text="formula", col=1)
    return fig


def save(
    fig: go.Figure,
    name: str,
    *,
    directory: str | os.PathLike = "figures",
    png: bool = True,
    scale: float = 2,
) -> dict[str, Path]:
    """Write ``directory/name.html`` (and ``name.png`` unless ``png=False``); return their paths.

    The HTML loads ``plotly.min.js`` from the same directory, written there once. The PNG is
    rendered by the shared headless browser at ``scale`` times the figure's size. If no PNG can
    be made, a ``RuntimeWarning`` with the reason is issued once per process and the result has
    only the ``"html"`` key; PNG problems never raise. Files are written atomically.

    Returns:
        ``{"html": Path, "png": Path}`` (``"png"`` only when it was written).
    """
    if not isinstance(fig, go.Figure):
        raise ValueError(f"fig must be a plotly.graph_objects.Figure, got {type(fig).__name__}")
    check_name("name", name)
    check_positive("scale", scale)
    if not isinstance(png, bool):
        raise ValueError(f"png must be True or False, got {png!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    html = fig.to_html(
        include_plotlyjs="directory",
        full_html=True,
        config={"displaylogo": False,
                "toImageButtonOptions": {"format": "png", "filename": name, "scale": scale}},
    )
    paths = {"html": atomic_write_text(directory / f"{name}.html", html)}
    _ensure_plotlyjs(directory)
    if png:
        try:
            data = _render_png(fig, scale)
        except Exception as e:  # noqa: BLE001 - a PNG is optional; the HTML is the record
            _warn_png_once(str(e) if isinstance(e, PngExportError) else _describe(e))
        else:
            paths["png"] = atomic_write_bytes(directory / f"{name}.png", data)
    return paths
