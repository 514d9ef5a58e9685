"""Loss-landscape figures: a filled contour and a 3-D surface, with trajectories drawn over them.

They take the results of :mod:`l2o_lib.landscape` (a ``LandscapeGrid``, ``Projection`` objects or
``(K, 2)`` plane coordinates) and only draw them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..config import check_int, check_nonnegative
from .style import _layout, _to_numpy, color_for

__all__ = ["landscape_contour", "landscape_surface"]


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
        _add_path(fig, name, coords - shift)
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
    alphas, betas, values = _field_values(grid, field)
    log_scale = _resolve_log(log_scale, field)
    check_nonnegative("lift", lift)
    if not isinstance(eye, (tuple, list)) or len(eye) != 3:
        raise ValueError(f"eye must be three numbers (x, y, z), got {eye!r}")
    coords, heights = _surface_paths(grid, trajectories, field, log_scale)
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
        _add_path_3d(fig, name, xy - shift, heights[name] + offset)
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


def _add_path(fig: go.Figure, name: str, xy: np.ndarray) -> None:
    """A trajectory on the contour: a line in :func:`color_for` its name, a circle at its start and
    a star at its end (markers in the line's legend group, not in the legend)."""
    color = color_for(name)
    fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines", name=name, legendgroup=name,
                             line=dict(color=color, width=2.5), customdata=np.arange(len(xy)),
                             hovertemplate=f"{name}<br>step %{{customdata}}<br>α=%{{x:.3g}}, β=%{{y:.3g}}<extra></extra>"))
    for where, symbol, size in ((0, "circle", 11), (-1, "star", 16)):
        fig.add_trace(go.Scatter(
            x=[xy[where, 0]], y=[xy[where, 1]], mode="markers", name=f"{name} {'start' if where == 0 else 'end'}",
            legendgroup=name, showlegend=False, hoverinfo="name+x+y",
            marker=dict(symbol=symbol, size=size, color=color, line=dict(color="white", width=1.5)),
        ))


def _surface_paths(grid: Any, trajectories: Mapping[str, Any] | None, field: str,
                   log_scale: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(coords, heights)`` per trajectory of :func:`landscape_surface`: heights given with the
    coordinates, or read off the grid (bilinear), on the colour scale (log10 with ``log_scale``)."""
    from ..landscape import grid_values_at

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
    return coords, heights


def _add_path_3d(fig: go.Figure, name: str, xy: np.ndarray, h: np.ndarray) -> None:
    """A trajectory on the surface at heights ``h``: a 3-D line, a circle at its start and a diamond
    at its end (3-D markers have no star)."""
    color = color_for(name)
    fig.add_trace(go.Scatter3d(x=xy[:, 0], y=xy[:, 1], z=h, mode="lines", name=name, legendgroup=name,
                               line=dict(color=color, width=6)))
    for where, symbol in ((0, "circle"), (-1, "diamond")):
        fig.add_trace(go.Scatter3d(
            x=[xy[where, 0]], y=[xy[where, 1]], z=[h[where]], mode="markers",
            name=f"{name} {'start' if where == 0 else 'end'}", legendgroup=name, showlegend=False,
            marker=dict(symbol=symbol, size=6, color=color, line=dict(color="white", width=1)),
        ))
