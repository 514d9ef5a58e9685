"""Plotly figures with one look, and saving them as HTML + PNG.

The builders (:func:`curves`, :func:`bar`, :func:`table`; for landscapes
:func:`landscape_contour` and :func:`landscape_surface`; for learned schedules and mixing
:func:`lr_schedules`, :func:`mixing_areas` and :func:`layer_bars`; for symbolic regression
:func:`pareto_fronts` and :func:`parity`; for a trajectory on a PCA plane :func:`trajectory_plane`) take plain arrays, dicts,
DataFrames and the library's result objects (``LandscapeGrid``, ``Projection``) and compute
nothing heavy: experiments produce the numbers, these only draw them.
All figures share a template, a size, and a colour per optimizer name (:func:`color_for`), so
"Adam" is the same green in every notebook.

:func:`save` writes ``<name>.html`` and ``<name>.png`` (through a headless browser that kaleido
drives, started once per process; without one it warns once and keeps the HTML).

=================  ===========================================================================
``style``          template, size, colours (``color_for``, ``palette``: distinct per figure, ``KNOWN_COLORS``), shared helpers
``charts``         ``curves`` (with ± std bands), ``bar``, ``table``
``panels``         ``curve_panels``: curves in side-by-side panels (tasks, metrics)
``landscapes``     ``landscape_contour``, ``landscape_surface`` with trajectories
``learned``        ``lr_schedules``, ``mixing_areas``, ``layer_bars``, ``pareto_fronts``, ``parity``
``trajectories``   ``trajectory_plane`` (checkpoints on two principal directions, coloured by step)
``export``         ``save`` (HTML + PNG), the kaleido / Chromium export server, ``find_browser``
=================  ===========================================================================

Everything public is re-exported here: ``from l2o_lib import plots; plots.curves(...)``.
"""

from .charts import bar, curves, table
from .export import PngExportError, find_browser, png_available, save, stop_export_server
from .landscapes import landscape_contour, landscape_surface
from .learned import layer_bars, lr_schedules, mixing_areas, pareto_fronts, parity
from .panels import curve_panels
from .style import HEIGHT, KNOWN_COLORS, TEMPLATE, WIDTH, color_for, palette
from .trajectories import trajectory_plane

__all__ = [
    "TEMPLATE",
    "WIDTH",
    "HEIGHT",
    "KNOWN_COLORS",
    "color_for",
    "palette",
    "curves",
    "curve_panels",
    "bar",
    "table",
    "landscape_contour",
    "landscape_surface",
    "lr_schedules",
    "mixing_areas",
    "layer_bars",
    "pareto_fronts",
    "parity",
    "trajectory_plane",
    "save",
    "find_browser",
    "png_available",
    "stop_export_server",
]
