"""Loss landscapes: random and PCA planes through parameter space, 1-D interpolations, 2-D grids
and the projection of a trajectory onto a plane. Everything here computes; nothing plots.

**Filter-normalised directions** (Li, Xu, Taylor, Studer & Goldstein, *Visualizing the loss
landscape of neural nets*, NeurIPS 2018, Section 4). A Gaussian direction ``d`` is rescaled
filter by filter so that each filter of ``d`` has the Frobenius norm of the matching filter of
the weights ``θ``:

    d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖        (tensor i, filter j = slice j along dim 0)

so that a step ``α d`` perturbs every filter by the same *relative* amount, whatever the scale
of its layer (a network with batch norm is invariant to the scale of a filter, so plain
Gaussian directions would make layers with small weights look spuriously sharp). For a linear
layer a filter is one output row, for a convolution one output channel. One-dimensional
parameters (biases, BatchNorm weights and biases) are set to zero by default, the paper's
choice (``ignore='biasbn'`` in its code); otherwise each of their entries is treated as a filter
of one element, ``|d_k| = |θ_k|`` with the random sign of ``d_k``.

**Planes.** A :class:`Plane` is ``θ(α, β) = origin + α d1 + β d2``. :func:`random_plane` uses
two filter-normalised directions (nearly orthogonal in high dimension), :func:`pca_plane` the top
two principal directions of a training trajectory (Li et al., Section 7: the endpoint at the
origin, the trajectory's PCA axes; the directions have unit norm), and :func:`plane_through`
the plane through three points (``a`` at ``(0, 0)``, ``b`` at ``(1, 0)``, ``c`` at ``(0, 1)``).

**Grids.** :func:`grid` evaluates ``θ(α_i, β_j)`` on an ``R_α × R_β`` lattice; the points of a
chunk are stacked into a ``(K, D)`` tensor and scored by *one* vmapped call of
:meth:`~l2o_lib.functional.FlatModel.batched_evaluate` (eval mode: BatchNorm reads its
running statistics; a chunk of one point is one plain functional evaluation), instead of
writing every point into the module and running it. The chunk size comes from a memory estimate
(:func:`auto_chunk_size`): large on accelerators, where one launch sequence for many points is
the gain, and cache-sized on the CPU, where bigger chunks were measured to be slower per point.

**Projection.** :func:`project` finds the least-squares coordinates of trajectory points in a
plane whose directions need not be orthogonal: with ``B = [d1; d2]`` (2 × D) and
``x = θ_t - origin`` it solves the 2 × 2 normal equations ``(B Bᵀ) c = B x``, and reports the
distance ``‖x - Bᵀ c‖`` from the plane.

**A landscape figure's runs** (notebook 06). :mod:`.sources` loads the learned optimizers notebooks
03-05 saved, or trains small ones (:func:`learned_optimizers`); :mod:`.trajectories` records every
run from the same start ``W0`` on the same batches (:func:`record_flat`, :func:`record_module`,
:func:`record_runs`); :mod:`.tables` fits the planes to the paper's three runs (:func:`fit_planes`)
and computes the residual and fidelity tables, the grid span, the summary and the findings text.
"""

from .grids import LandscapeGrid, Interpolation, auto_chunk_size, grid, grid_values_at, interpolate
from .planes import Plane, Projection, filter_normalized_direction, pca_plane, plane_through, project, random_plane
from .sources import Fallback, LearnedOptimizers, learned_optimizers, train_small_mlrsnet, train_small_sl2o
from .tables import (PLANES, axis_angle, axis_labels, check_plane_runs, fidelity_table, findings_text, fit_planes,
                     loss_table, plane_anchors, plane_name, project_all, residual_table, span_for, summary_rows)
from .trajectories import (OPTIMIZERS, PAPER_RUNS, l3rs_optimizer, mlrsnet_sgd, record_flat, record_module,
                           record_runs, select_runs)

__all__ = [
    "Plane",
    "LandscapeGrid",
    "Interpolation",
    "Projection",
    "filter_normalized_direction",
    "random_plane",
    "pca_plane",
    "plane_through",
    "interpolate",
    "grid",
    "grid_values_at",
    "project",
    "auto_chunk_size",
    "Fallback", "LearnedOptimizers", "learned_optimizers", "train_small_sl2o", "train_small_mlrsnet",
    "OPTIMIZERS", "PAPER_RUNS", "record_flat", "record_module", "mlrsnet_sgd", "l3rs_optimizer", "select_runs",
    "record_runs",
    "PLANES", "plane_anchors", "fit_planes", "plane_name", "check_plane_runs", "axis_angle", "project_all", "residual_table", "fidelity_table", "span_for",
    "loss_table", "axis_labels", "summary_rows", "findings_text",
]
