"""The numbers next to a landscape figure: the planes fitted to the runs, how far each run is from
them (residual table), how well the plane's loss at a run's projection matches the run's own loss
(fidelity table), the grid's span, the summary rows and the generated "What we found" text.

Every function takes plain dicts ``{run name: ...}`` of trajectories, projections or losses, so
any subset of the runs of :data:`~l2o_lib.landscape.trajectories.OPTIMIZERS` works."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .grids import LandscapeGrid, grid_values_at
from ..functional import FlatModel
from .planes import Plane, Projection, pca_plane, plane_through, project, random_plane
from .trajectories import PAPER_RUNS

__all__ = ["PLANES", "plane_anchors", "fit_planes", "plane_name", "check_plane_runs", "axis_angle", "project_all", "residual_table", "fidelity_table", "span_for",
           "loss_table", "axis_labels", "summary_rows", "findings_text"]

#: The planes a landscape figure can use: the notebook's ``plane`` knob -> the plane's name.
PLANES = {"pca": "PCA plane", "endpoints": "endpoint plane", "random": "random plane"}
RATIO = "max residual / ‖W0 − origin‖"


def plane_anchors(names: Sequence[str]) -> list[str]:
    """The runs a plane is fitted to, the origin's run first: the paper's three among ``names``
    (``SL2O``, ``Momentum†``, ``Momentum``), or all of ``names`` when none of them is drawn, reversed."""
    chosen = [n for n in names if n in PAPER_RUNS] or list(names)
    return chosen[::-1]


def fit_planes(trajectories: Mapping[str, Tensor], anchors: Sequence[str], *, random_model: FlatModel | None = None,
               seed: int = 0) -> dict[str, Plane]:
    """``{"PCA plane": ..., "endpoint plane": ..., "random plane": ...}`` through the first anchor's end.

    The PCA plane (:func:`~l2o_lib.landscape.pca_plane`) holds the top two principal directions
    of the anchors' stacked trajectories (stacked in reverse, the paper's order); the endpoint
    plane (:func:`~l2o_lib.landscape.plane_through`) has the first anchor's endpoint at ``(0, 0)``,
    the second's at ``(1, 0)``, the third's at ``(0, 1)``, and exists only with three anchors; the
    random plane (:func:`~l2o_lib.landscape.random_plane`, two filter-normalised directions drawn
    with ``seed``) only when ``random_model`` is given.
    """
    origin = trajectories[anchors[0]][-1]
    stacked = torch.cat([trajectories[name] for name in reversed(anchors)])
    planes = {"PCA plane": pca_plane(stacked, origin=origin)}
    if len(anchors) >= 3:
        planes["endpoint plane"] = plane_through(*(trajectories[name][-1] for name in anchors[:3]))
    if random_model is not None:
        planes["random plane"] = random_plane(random_model, origin, seed)
    return planes


def _check_plane(plane: str) -> None:
    if plane not in PLANES:
        raise ValueError(f"plane={plane!r} is not known; choose from {list(PLANES)}")


def plane_name(plane: str, planes: Mapping[str, Plane], anchors: Sequence[str]) -> str:
    """The name in ``planes`` of the knob value ``plane`` (a key of :data:`PLANES`).

    Raises:
        ValueError: an unknown value, or a plane not fitted (the endpoint plane needs three anchors).
    """
    _check_plane(plane)
    if PLANES[plane] not in planes:
        raise ValueError(f"plane={plane!r}: the {PLANES[plane]} is not available with the runs {list(anchors)} "
                         f"(the endpoint plane needs three runs to pass through)")
    return PLANES[plane]


def check_plane_runs(plane: str, runs: Sequence[str] | None) -> None:
    """Refuse, before any work, a ``plane`` the runs ``runs`` (``None``: all) cannot give: the
    endpoint plane passes through the endpoints of the paper's three runs, so ``runs`` must hold them.

    Raises:
        ValueError: an unknown ``plane``, or ``"endpoints"`` with one of :data:`PAPER_RUNS` left out.
    """
    _check_plane(plane)
    missing = [r for r in PAPER_RUNS if runs is not None and r not in runs]
    if plane == "endpoints" and missing:
        raise ValueError(f"plane='endpoints' passes through the endpoints of {list(PAPER_RUNS)}; runs={list(runs)} "
                         f"leaves out {missing} (add them, or use plane='pca' or 'random')")


def axis_angle(plane: Plane) -> float:
    """The angle between the plane's directions in degrees, in [0, 90] (90: orthogonal axes)."""
    cos = float(plane.d1 @ plane.d2 / (plane.d1.norm() * plane.d2.norm()))
    return float(np.degrees(np.arccos(min(1.0, abs(cos)))))


def project_all(trajectories: Mapping[str, Tensor], planes: Mapping[str, Plane]) -> dict[str, dict[str, Projection]]:
    """``{plane name: {run: Projection}}``: every trajectory projected onto every plane."""
    return {p: {name: project(t, plane) for name, t in trajectories.items()} for p, plane in planes.items()}


def residual_table(projections: Mapping[str, Mapping[str, Projection]], scale: float) -> pd.DataFrame:
    """One row per plane and run: max, mean and final residual (parameter units) and the max
    residual relative to ``scale`` (``‖W0 − origin‖``, the distance the picture spans)."""
    rows = []
    for p, by_run in projections.items():
        for name, pr in by_run.items():
            res = pr.residual.cpu().numpy()
            rows.append({"plane": p, "optimizer": name, "max residual": res.max(), "mean residual": res.mean(),
                         RATIO: res.max() / scale, "residual at the end": res[-1]})
    return pd.DataFrame(rows)


def fidelity_table(grid: LandscapeGrid, projections: Mapping[str, Projection],
                   true_loss: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per run: its final loss, the grid's (bilinear) loss at its final projection, and the
    median and max ``|gap|`` between the two along the run (NaN outside the grid is skipped)."""
    rows = []
    for name, pr in projections.items():
        on_plane = grid_values_at(grid, pr)
        gap = np.abs(on_plane - true_loss[name])
        rows.append({"optimizer": name, "loss at the end": true_loss[name][-1], "plane loss at its projection": on_plane[-1],
                     "median |gap| along the run": np.nanmedian(gap), "max |gap|": np.nanmax(gap)})
    return pd.DataFrame(rows)


def span_for(projections: Mapping[str, Projection], names: Sequence[str], margin: float) -> tuple[float, ...]:
    """The grid span ``(-a, a, -b, b)`` symmetric about the origin: ``margin`` times the farthest
    finite projected coordinate of the runs ``names`` along each axis."""
    coords = torch.cat([projections[name].coords for name in names])
    coords = coords[torch.isfinite(coords).all(1)]
    a, b = (margin * coords.abs().max(0).values).tolist()
    return (-a, a, -b, b)


def loss_table(true_loss: Mapping[str, np.ndarray], trajectories: Mapping[str, Tensor], steps: int) -> pd.DataFrame:
    """One row per run: its loss at step 0, ``steps // 2`` and ``steps``, and ``‖W_T − W0‖``."""
    return pd.DataFrame([{"optimizer": name, "loss at step 0": true_loss[name][0],
                          f"loss at step {steps // 2}": true_loss[name][steps // 2],
                          f"loss at step {steps}": true_loss[name][-1],
                          "distance travelled ‖W_T − W0‖": float((t[-1] - t[0]).norm())}
                         for name, t in trajectories.items()])


def axis_labels(name: str, plane: Plane, anchors: Sequence[str]) -> dict[str, str]:
    """``xlabel`` / ``ylabel`` of the plane called ``name``: the PCA plane's share of the variance per
    axis, the endpoint plane's anchors (its axes point to the second and third anchor's endpoints),
    the random plane's filter-normalised directions."""
    evr = plane.explained_variance_ratio
    if evr is not None:
        return dict(xlabel=f"PC1 ({float(evr[0]):.1%} of the variance)", ylabel=f"PC2 ({float(evr[1]):.1%})")
    if name == PLANES["endpoints"]:
        return dict(xlabel=f"α (towards {anchors[1]}'s end)", ylabel=f"β (towards {anchors[2]}'s end)")
    return dict(xlabel="α (filter-normalised direction 1)", ylabel="β (filter-normalised direction 2)")


def _ratios(residuals: pd.DataFrame, plane_name: str) -> pd.Series:
    """Each run's max relative residual on ``plane_name``, by run name."""
    return residuals[residuals["plane"] == plane_name].set_index("optimizer")[RATIO]


def summary_rows(true_loss: Mapping[str, np.ndarray], residuals: pd.DataFrame, plane_name: str, *, steps: int,
                 explained: float, resolution: int, grid_seconds: float, device) -> list[dict]:
    """The run's summary: each run's final loss and max relative residual on ``plane_name``, the
    PCA plane's kept variance ``explained`` and the grid's time (values rounded as saved)."""
    res = _ratios(residuals, plane_name)
    rows = [{"method": name, "metric": f"loss after {steps} steps (evaluation batch)",
             "value": round(float(true_loss[name][-1]), 4)} for name in true_loss]
    rows += [{"method": name, "metric": f"{RATIO} ({plane_name})", "value": round(float(res[name]), 4)}
             for name in true_loss]
    rows += [
        {"method": "PCA plane", "metric": "variance of the three trajectories kept by 2 directions",
         "value": round(float(explained), 4)},
        {"method": "landscape grid", "metric": f"seconds for {resolution}×{resolution} points ({device})",
         "value": round(grid_seconds, 2)},
    ]
    return rows


def _count(n: int) -> str:
    return {1: "one", 2: "two", 3: "three"}.get(n, str(n))


def findings_text(true_loss: Mapping[str, np.ndarray], residuals: pd.DataFrame, plane_name: str, *, anchors: Sequence[str],
                  steps: int, explained: float, sl2o_source: str, resolution: int, grid_seconds: float,
                  device) -> str:
    """The "What we found" paragraph from the run's numbers: the anchors' final losses (lowest
    first), the PCA plane's kept variance, the largest relative residual on ``plane_name`` (and
    whether to trust the picture: below 0.5 × ‖W0 − origin‖) and the grid's time."""
    end = {n: float(true_loss[n][-1]) for n in anchors}
    order = sorted(end, key=end.get)
    res = _ratios(residuals, plane_name)
    verdict = ("the picture is faithful to the runs." if res.max() < 0.5 else
               "read the contours near that run with care (the fidelity table above gives the loss gap).")
    return (f"After {steps} steps from the same start, the training loss on the evaluation batch is "
            + ", ".join(f"{n} {end[n]:.4f}" for n in order) + f" (lowest first; SL2O from {sl2o_source}). "
            f"The PCA plane keeps {explained:.1%} of the {_count(len(anchors))} trajectories' variance, and the largest "
            f"distance of a run from the {plane_name} is {res.max():.2f} × ‖W0 − origin‖ ({res.idxmax()}): "
            + verdict + f" A {resolution}×{resolution} grid took {grid_seconds:.1f} s on {device}.")
