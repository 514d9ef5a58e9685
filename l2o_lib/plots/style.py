"""The look every figure shares: template, size, one colour per optimizer name.

:func:`color_for` gives a series its colour, the same in every notebook and process ("Adam" is
always the same green); the private helpers here (``_layout``, ``_rgba``, ``_to_numpy``) are what
every builder of :mod:`l2o_lib.plots` uses to look alike and to accept tensors as well as arrays.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable

import plotly.graph_objects as go

__all__ = ["TEMPLATE", "WIDTH", "HEIGHT", "KNOWN_COLORS", "color_for", "palette"]

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


def palette(names: Iterable[str]) -> dict[str, str]:
    """Distinct colours for the series of one figure: ``{name: "#rrggbb"}``.

    A known name keeps its :data:`KNOWN_COLORS` colour; a name ``"Base (details)"`` whose base is
    known (``"SL2O (scale 1, meta-seed 0)"``, ``"Momentum (lr 0.12, strong)"``) takes the base's
    colour when no other series of the figure has it already, so a method looks the same in every
    notebook; any other name starts at its :func:`color_for` fallback colour and moves on to the
    next one not yet used in the figure, so two series never share a colour (up to 35 of them).
    """
    names = [str(n) for n in names]
    colors: dict[str, str] = {}
    for n in names:   # "adam" and " Adam" are two series: only the first gets Adam's colour
        known = _KNOWN_LOWER.get(n.strip().lower())
        if known is not None and known not in colors.values():
            colors[n] = known
    used = set(colors.values())
    for n in names:
        base = _KNOWN_LOWER.get(n.split(" (")[0].strip().lower())
        if n not in colors and base is not None and base not in used:
            colors[n] = base
            used.add(base)
    for n in names:
        if n not in colors:
            start = zlib.crc32(n.strip().encode("utf-8")) % len(_FALLBACK_COLORS)   # color_for's fallback
            free = [_FALLBACK_COLORS[(start + k) % len(_FALLBACK_COLORS)] for k in range(len(_FALLBACK_COLORS))]
            colors[n] = next((c for c in free if c not in used), free[0])
            used.add(colors[n])
    return colors


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



def _to_numpy(values: Any) -> Any:
    # Tensors (possibly on the GPU / requiring grad) -> numpy; everything else as is.
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return values
