"""Plotly figures with one look, and saving them as HTML + PNG.

The builders (:func:`curves`, :func:`bar`, :func:`table`) take plain arrays, dicts and
DataFrames and compute nothing heavy: experiments produce the numbers, these only draw them.
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

from .config import check_positive
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
