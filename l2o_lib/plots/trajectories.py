"""A training trajectory seen on a plane of two directions (e.g. DLDR's PC1 and PC2).

The builder takes the checkpoints' coordinates already projected (``Subspace.project``) and only draws
them: the path in order, each checkpoint coloured by its step, the start and the end marked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from .style import _layout, _to_numpy

__all__ = ["trajectory_plane"]


def trajectory_plane(coords: Any, steps: Any, *, title: str | None = None, xlabel: str | None = "PC1",
                     ylabel: str | None = "PC2", color_label: str = "step") -> go.Figure:
    """The checkpoints ``coords`` ``(t, 2)`` as a path on their plane, coloured by ``steps`` ``(t,)``.

    Returns a figure with three traces: the path (a grey line through markers whose colour is the
    step, with a colour bar titled ``color_label``), a ``start`` marker on the first checkpoint and an
    ``end`` marker on the last. The axes keep one scale (a unit on PC1 is as long as on PC2), so the
    picture does not exaggerate the smaller direction.
    """
    xy = np.asarray(_to_numpy(coords), dtype=float)
    steps = np.asarray(_to_numpy(steps), dtype=float)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 2:
        raise ValueError(f"coords must have shape (t, 2) with t >= 2, got {xy.shape}")
    if steps.shape != (len(xy),):
        raise ValueError(f"steps must have shape ({len(xy)},), one per checkpoint, got {steps.shape}")
    fig = go.Figure(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="lines+markers", name="checkpoints", line=dict(color="#bbbbbb", width=1),
        marker=dict(size=7, color=steps, colorscale="Viridis", showscale=True, colorbar=dict(title=color_label)),
        hovertemplate=f"{color_label} %{{marker.color}}<br>(%{{x:.3g}}, %{{y:.3g}})<extra></extra>"))
    for name, i, symbol in (("start", 0, "diamond"), ("end", -1, "star")):
        fig.add_trace(go.Scatter(x=[xy[i, 0]], y=[xy[i, 1]], mode="markers+text", name=name, text=[name],
                                 textposition="top center", marker=dict(size=14, symbol=symbol, color="#d62728")))
    _layout(fig, title=title, xlabel=xlabel, ylabel=ylabel)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    fig.update_layout(showlegend=False)
    return fig
