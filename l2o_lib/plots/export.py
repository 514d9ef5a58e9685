"""Saving a figure as HTML + PNG, and the headless browser behind the PNGs.

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
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..config import check_positive
from ..files import atomic_write_bytes, atomic_write_text, check_name

__all__ = ["save", "find_browser", "png_available", "stop_export_server", "PngExportError"]


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
