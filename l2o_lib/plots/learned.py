"""Figures of what learned optimizers produce: LR schedules, per-layer mixing and λ, symbolic fits.

:func:`lr_schedules` (MLR-SNet, L3RS), :func:`mixing_areas` and :func:`layer_bars` (L3RS's μ and
λ per layer), :func:`pareto_fronts` and :func:`parity` (the symbolic regression of notebook 07).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from ..config import check_int, check_nonnegative
from .charts import _as_series
from .style import HEIGHT, KNOWN_COLORS, _layout, _rgba, _to_numpy, color_for, palette

__all__ = ["lr_schedules", "mixing_areas", "layer_bars", "pareto_fronts", "parity"]


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
    colors = palette(series)
    for name, spec in series.items():
        name = str(name)
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise ValueError(f"series {name!r} must be a pair (steps, lrs)")
        x, y, _ = _as_series(name, spec)
        if log_y:
            y = np.where(y > 0, y, np.nan)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line=dict(color=colors[name], width=2, shape="hv"),
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


def _check_mixing(steps: Any, mu: Any, base_names: Any, layer_names: Any,
                  atol: float) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """:func:`mixing_areas`'s data checked: ``(steps (T,), mu (T, L, P), P base names, L layer names)``."""
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
    check_nonnegative("atol", atol)
    if not np.all(np.isfinite(m)) or m.min() < -atol or np.abs(m.sum(-1) - 1).max() > atol:
        raise ValueError(f"mu must be finite, >= 0 and sum to 1 over its last axis (within atol={atol}); "
                         f"the largest deviation of a sum from 1 is {np.nanmax(np.abs(m.sum(-1) - 1)):.3g}")
    return x, m, base_names, [str(n) for n in layer_names]


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

    x, m, base_names, layer_names = _check_mixing(steps, mu, base_names, layer_names, atol)
    n_layers = m.shape[1]
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
