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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from .config import check_int, check_nonnegative, check_seed
from .functional import FlatModel
from .subspace import dldr

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
]

# Memory heuristic of ``chunk_size=None`` (see :func:`auto_chunk_size`).
# CPU: a fixed, cache-sized budget rather than "all the RAM": on the CPU a vmapped chunk runs as
# grouped convolutions plus elementwise passes over a K-times larger working set, which pays
# only while that set stays near the caches. Measured on a 2-core machine (seconds per point):
# ResNet-20 on 256 images 0.48 / 0.89 / 1.04 at K = 1 / 2 / 4 (the heuristic gives 1); an MLP
# on 1000 MNIST-1D signals 2.5e-3 / 1.0e-3 / 2.1e-3 at K = 1 / 10 / 100 (it gives ~17).
CPU_BUDGET_BYTES = 32 << 20
CUDA_FREE_FRACTION = 0.5     # CUDA: half of the free memory (allocator slack, caller's tensors)
ACTIVATION_FACTOR = 4        # live activations ≈ this × the largest layer output (eval, no grad)
PARAMETER_COPIES = 4         # the theta row, its chunked copy and reshaped/batched weight copies
# Keep a chunk's largest activation (K × n × A elements) within 32-bit indexing: some kernels
# (e.g. cuDNN convolutions) split, fall back or refuse beyond it.
MAX_CHUNK_ELEMENTS = 2**31 - 1
# Rows of a trajectory projected at a time: about this many bytes of float64 per block.
PROJECT_BLOCK_BYTES = 1 << 26


# ------------------------------------------------------------------------------ validation
def _check_model(model: Any) -> FlatModel:
    if not isinstance(model, FlatModel):
        raise ValueError(f"model must be a FlatModel, got {type(model).__name__}")
    return model


def _check_vector(name: str, v: Any, dim: int | None = None) -> Tensor:
    """A floating 1-D tensor (of size ``dim`` when given), else ``ValueError`` naming it."""
    if not isinstance(v, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 1 or (dim is not None and v.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "a 1-D tensor"
        raise ValueError(f"{name} has shape {tuple(v.shape)}; expected {want}")
    if not v.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {v.dtype}")
    return v


def _check_span(span: Any) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(s) for s in span)
    except (TypeError, ValueError):
        raise ValueError(f"span must be four numbers (alpha_min, alpha_max, beta_min, beta_max), got {span!r}")
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"span must be four finite numbers (alpha_min, alpha_max, beta_min, beta_max), got {span!r}")
    a0, a1, b0, b1 = values
    if not (a0 < a1 and b0 < b1):
        raise ValueError(f"span must have alpha_min < alpha_max and beta_min < beta_max, got {span!r}")
    return values


def _check_resolution(resolution: Any) -> tuple[int, int]:
    if isinstance(resolution, (tuple, list)):
        if len(resolution) != 2:
            raise ValueError(f"resolution must be an integer >= 2 or a pair of them, got {resolution!r}")
        return (check_int("resolution", resolution[0], minimum=2), check_int("resolution", resolution[1], minimum=2))
    check_int("resolution", resolution, minimum=2)
    return resolution, resolution


def _xy(batch_or_data: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` from a tuple / list or from anything with ``.x`` and ``.y`` (``ArrayData``)."""
    if hasattr(batch_or_data, "x") and hasattr(batch_or_data, "y"):
        x, y = batch_or_data.x, batch_or_data.y
    elif isinstance(batch_or_data, (tuple, list)) and len(batch_or_data) == 2:
        x, y = batch_or_data
    else:
        raise ValueError(f"batch_or_data must be a pair (x, y) or have .x and .y, got {type(batch_or_data).__name__}")
    return _check_data(x, y)


def _check_data(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ValueError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() == 0 or len(x) == 0 or y.shape[:1] != x.shape[:1]:
        raise ValueError(f"x and y must hold the same number (>= 1) of examples, got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


# ------------------------------------------------------------------------------- directions
def _filter_normalize(model: FlatModel, theta: Tensor, direction: Tensor, ignore_bias_and_bn: bool) -> Tensor:
    """Rescale ``direction`` filter-wise to ``theta``'s filter norms (see the module docstring)."""
    out = torch.empty_like(direction)
    parts = zip(torch.split(theta, model.numels), torch.split(direction, model.numels),
                torch.split(out, model.numels), model.shapes)
    for w, d, o, shape in parts:  # one iteration per parameter tensor, never per filter
        if len(shape) >= 2:
            rows = (shape[0], -1)
            w2, d2 = w.view(rows), d.view(rows)
            # Rows of a Gaussian matrix are never zero in practice; the clamp only keeps a
            # degenerate zero row at zero instead of NaN.
            d_norm = torch.linalg.vector_norm(d2, dim=1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny)
            o.view(rows).copy_(d2 * (torch.linalg.vector_norm(w2, dim=1, keepdim=True) / d_norm))
        elif ignore_bias_and_bn:
            o.zero_()
        else:
            # Each entry is a filter of one element: its norm |w_k|, the direction's own sign.
            o.copy_(torch.where(d < 0, -w.abs(), w.abs()))
    return out


def _gaussian(generator: torch.Generator, theta: Tensor) -> Tensor:
    # Drawn on the CPU in float32, then cast, so that a seed gives the same direction on every
    # device and for every dtype of theta.
    return torch.randn(theta.shape[0], generator=generator).to(device=theta.device, dtype=theta.dtype)


def filter_normalized_direction(model: FlatModel, theta: Tensor, *, seed: int = 0,
                                ignore_bias_and_bn: bool = True) -> Tensor:
    """A random filter-normalised direction at ``theta`` (Li et al., 2018), shape ``(D,)``.

    A Gaussian vector (float32 from a CPU ``torch.Generator`` seeded with ``seed``, then moved to
    ``theta``'s device and dtype) is split like the model's parameters; for every parameter with at least two
    dimensions each filter (slice along dim 0, e.g. one output channel of a convolution or one
    output row of a linear layer) is rescaled to the Frobenius norm of the same filter of
    ``theta``. One-dimensional parameters (biases, BatchNorm weights and biases) are zero when
    ``ignore_bias_and_bn`` (the paper's choice); otherwise every entry is a filter of size one,
    so ``|d_k| = |theta_k|`` with a random sign.

    Raises:
        ValueError: ``model`` not a ``FlatModel``, ``theta`` not a float tensor of shape ``(D,)``,
            ``seed`` not an integer >= 0.
    """
    _check_model(model)
    _check_vector("theta", theta, model.dim)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    return _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)


# ------------------------------------------------------------------------------------ planes
@dataclass
class Plane:
    """The affine plane ``θ(α, β) = origin + α d1 + β d2`` (directions need not be orthogonal).

    Attributes:
        origin, d1, d2: ``(D,)`` tensors on one device, of one floating dtype.
        explained_variance_ratio: ``(2,)`` share of a trajectory's variance along ``d1`` and
            ``d2`` (:func:`pca_plane` only), e.g. for axis labels.
    """

    origin: Tensor
    d1: Tensor
    d2: Tensor
    explained_variance_ratio: Tensor | None = None

    def __post_init__(self) -> None:
        _check_vector("origin", self.origin)
        for name in ("d1", "d2"):
            v = _check_vector(name, getattr(self, name), self.origin.shape[0])
            if v.device != self.origin.device or v.dtype != self.origin.dtype:
                raise ValueError(f"{name} is a {v.dtype} tensor on {v.device}; origin is {self.origin.dtype} "
                                 f"on {self.origin.device}")

    @property
    def dim(self) -> int:
        """``D``, the size of a parameter vector."""
        return self.origin.shape[0]

    def points(self, alphas: Tensor | Sequence[float], betas: Tensor | Sequence[float]) -> Tensor:
        """The points ``origin + alphas[k] d1 + betas[k] d2`` stacked as ``(K, D)``."""
        coeffs = torch.stack([torch.as_tensor(alphas, dtype=torch.float64).reshape(-1),
                              torch.as_tensor(betas, dtype=torch.float64).reshape(-1)], 1)
        return self._points(coeffs.to(device=self.origin.device, dtype=self.origin.dtype))

    def _points(self, coeffs: Tensor) -> Tensor:
        # One GEMM for the chunk: origin + coeffs @ [d1; d2]. At (0, 0) this is origin exactly.
        return torch.addmm(self.origin, coeffs, torch.stack([self.d1, self.d2]))

    def to(self, device=None, dtype=None) -> "Plane":
        """Move (or cast) every tensor."""
        mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        return Plane(mv(self.origin), mv(self.d1), mv(self.d2), self.explained_variance_ratio)


def random_plane(model: FlatModel, theta: Tensor, seed: int = 0, *, ignore_bias_and_bn: bool = True) -> Plane:
    """The plane through ``theta`` spanned by two filter-normalised random directions.

    Both directions come from one generator seeded with ``seed``, so ``d1`` equals
    ``filter_normalized_direction(model, theta, seed=seed)`` and different seeds share no draw.
    """
    _check_model(model)
    _check_vector("theta", theta, model.dim)
    check_seed("seed", seed)
    g = torch.Generator().manual_seed(seed)
    d1 = _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)
    d2 = _filter_normalize(model, theta, _gaussian(g, theta), ignore_bias_and_bn)
    return Plane(theta.detach().clone(), d1, d2)


def _checkpoints(trajectory: Any):
    """A ``(T, D)`` tensor or array from a tensor, a numpy array or a ``Trajectory``."""
    if hasattr(trajectory, "checkpoints"):
        trajectory = trajectory.checkpoints
    if not isinstance(trajectory, (Tensor, np.ndarray)) or trajectory.ndim != 2 or trajectory.shape[0] < 1:
        shape = tuple(trajectory.shape) if hasattr(trajectory, "shape") else type(trajectory).__name__
        raise ValueError(f"trajectory must be a (T, D) tensor or array with T >= 1, got {shape}")
    return trajectory


def pca_plane(trajectory: Tensor | np.ndarray, origin: Tensor | None = None) -> Plane:
    """The plane of the top two principal directions of a trajectory (``(T, D)``, ``T >= 3``).

    As in Li et al. (2018, Section 7) and the SL2O figures, the plane passes through the
    trajectory's *last* point by default, so the end of training sits at ``(0, 0)``. The PCA is
    :func:`~l2o_lib.subspace.dldr` with ``d = 2`` (mean-centred, which is the same as the
    paper's PCA of ``θ_i - θ_T`` after centring); ``d1`` and ``d2`` are orthonormal and the
    plane records their ``explained_variance_ratio``. Accepts a tensor, a numpy memmap or a
    :class:`~l2o_lib.subspace.Trajectory`.
    """
    traj = _checkpoints(trajectory)
    sub = dldr(traj, 2)
    if origin is None:
        last = traj[-1]
        origin = torch.as_tensor(np.array(last)) if isinstance(last, np.ndarray) else last
    else:
        _check_vector("origin", origin, traj.shape[1])
    origin = origin.detach().to(device=sub.basis.device, dtype=sub.basis.dtype).clone()
    return Plane(origin, sub.basis[0].clone(), sub.basis[1].clone(), sub.explained_variance_ratio)


def plane_through(a: Tensor, b: Tensor, c: Tensor) -> Plane:
    """The plane through three points: origin ``a``, directions ``b - a`` and ``c - a``.

    ``a``, ``b`` and ``c`` sit at coordinates ``(0, 0)``, ``(1, 0)`` and ``(0, 1)``; the
    directions are not orthogonal in general (use :func:`project` for coordinates).
    """
    _check_vector("a", a)
    _check_vector("b", b, a.shape[0])
    _check_vector("c", c, a.shape[0])
    a = a.detach()
    return Plane(a.clone(), b.detach() - a, c.detach() - a)


# ---------------------------------------------------------------------------- memory / chunks
def _largest_activation(model: FlatModel, theta: Tensor, x: Tensor, buffers) -> int:
    """Elements of the largest output of any submodule for one example (one forward)."""
    sizes = [x[0].numel()]

    def hook(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, Tensor) and t.dim() > 0:
                sizes.append(t.numel() // max(t.shape[0], 1))

    handles = [m.register_forward_hook(hook) for m in model.module.modules()]
    try:
        with torch.no_grad():
            model.apply(theta, x[:1], buffers, train=False)
    finally:
        for h in handles:
            h.remove()
    return max(sizes)


def auto_chunk_size(model: FlatModel, theta: Tensor, x: Tensor, *, batch_size: int = 2048,
                    buffers: dict[str, Tensor] | None = None) -> int:
    """Grid points per batched call that fit in memory (a heuristic, always >= 1).

    Estimated bytes per point: ``itemsize × (PARAMETER_COPIES × D + ACTIVATION_FACTOR × n × A)``
    with ``n = min(batch_size, len(x))`` examples per call and ``A`` the largest per-example
    output of any submodule, measured by one forward of a single example with hooks (under
    ``no_grad`` only a few layer outputs are alive at once: the current one, its input and a
    residual branch). The budget is ``CUDA_FREE_FRACTION`` of ``torch.cuda.mem_get_info``'s free
    memory on CUDA (where large chunks pay: one launch sequence for many points) and the
    cache-sized ``CPU_BUDGET_BYTES`` elsewhere (where they do not; see its comment), and a chunk's
    largest activation ``K × n × A`` stays below ``MAX_CHUNK_ELEMENTS`` (32-bit indexing). Intermediates that are no module's
    output (e.g. attention scores inside a module) are not seen; pass ``chunk_size`` explicitly
    for such models if memory is tight.
    """
    n = min(batch_size, len(x))
    act = _largest_activation(model, theta, x, buffers)
    per_point = theta.element_size() * (PARAMETER_COPIES * model.dim + ACTIVATION_FACTOR * n * act)
    if x.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(x.device)
        budget = CUDA_FREE_FRACTION * free
    else:
        budget = CPU_BUDGET_BYTES
    return max(1, min(int(budget // per_point), MAX_CHUNK_ELEMENTS // (n * act)))


def _evaluate_points(model: FlatModel, make: Callable[[int, int], Tensor], count: int, x: Tensor, y: Tensor,
                     *, chunk_size: int, batch_size: int, buffers) -> dict[str, Tensor]:
    """Loss and accuracy of ``count`` points, built ``chunk_size`` at a time by ``make(lo, hi)``;
    each chunk is one ``batched_evaluate`` call (no vmap chunking inside it)."""
    loss, acc = [], []
    for lo in range(0, count, chunk_size):
        hi = min(lo + chunk_size, count)
        res = model.batched_evaluate(make(lo, hi), x, y, buffers, batch_size=batch_size)
        loss.append(res["loss"])
        acc.append(res["accuracy"])
    return {"loss": torch.cat(loss), "accuracy": torch.cat(acc)}


# --------------------------------------------------------------------------------- 1-D lines
class Interpolation(NamedTuple):
    """Losses along ``θ(α) = (1 - α) θ_a + α θ_b``; CPU numpy arrays of shape ``(steps,)``."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray


def interpolate(model: FlatModel, theta_a: Tensor, theta_b: Tensor, batch_or_data: Any, *, steps: int = 25,
                extend: float = 0.0, batch_size: int = 2048, chunk_size: int | None = None,
                buffers: dict[str, Tensor] | None = None) -> Interpolation:
    """Linear interpolation between two parameter vectors (Goodfellow et al., 2015).

    ``steps`` values of ``α`` evenly spaced over ``[-extend, 1 + extend]``; the points are
    ``torch.lerp(theta_a, theta_b, α)``, which is exactly ``theta_a`` at ``α = 0`` and
    ``theta_b`` at ``α = 1``. All of them are scored in one batched evaluation (eval mode) on
    ``batch_or_data``, a pair ``(x, y)`` or an ``ArrayData`` (chunked only when ``chunk_size``,
    or the memory heuristic of :func:`auto_chunk_size`, asks for fewer than ``steps`` at once).

    Raises:
        ValueError: wrong-size ``theta_a`` / ``theta_b``, ``steps < 2``, negative ``extend``,
            bad ``batch_size`` / ``chunk_size`` or data.
    """
    _check_model(model)
    _check_vector("theta_a", theta_a, model.dim)
    _check_vector("theta_b", theta_b, model.dim)
    check_int("steps", steps, minimum=2)
    check_nonnegative("extend", extend)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    x, y = _xy(batch_or_data)
    model.check_data(x, y, name="batch_or_data")
    a = theta_a.detach().to(x.device)
    b = theta_b.detach().to(device=x.device, dtype=a.dtype)
    alphas = _axis(-float(extend), 1.0 + float(extend), steps)
    weights = torch.as_tensor(alphas, device=x.device, dtype=a.dtype)[:, None]
    if chunk_size is None:
        chunk_size = auto_chunk_size(model, a, x, batch_size=batch_size, buffers=buffers)
    res = _evaluate_points(model, lambda lo, hi: torch.lerp(a, b, weights[lo:hi]), steps, x, y,
                           chunk_size=chunk_size, batch_size=batch_size, buffers=buffers)
    return Interpolation(alphas, res["loss"].cpu().numpy(), res["accuracy"].cpu().numpy())


# --------------------------------------------------------------------------------- 2-D grids
@dataclass
class LandscapeGrid:
    """Loss and accuracy on a lattice of a :class:`Plane`, as CPU numpy arrays.

    ``loss[i, j]`` and ``accuracy[i, j]`` belong to ``origin + alphas[i] d1 + betas[j] d2``
    (``"ij"`` indexing, rows along ``d1``); plotting libraries that put ``x`` along columns
    want the transpose, e.g. ``go.Contour(x=alphas, y=betas, z=loss.T)``.

    Attributes:
        alphas: ``(R_α,)`` float64 coefficients of ``d1``.
        betas: ``(R_β,)`` float64 coefficients of ``d2``.
        loss: ``(R_α, R_β)`` mean loss over the data (eval mode).
        accuracy: ``(R_α, R_β)`` top-1 accuracy over the data.
    """

    alphas: np.ndarray
    betas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray


def _axis(lo: float, hi: float, n: int) -> np.ndarray:
    """``n`` evenly spaced float64 values from ``lo`` to ``hi``, with both ends exact and the
    middle of a symmetric odd axis exactly 0 (``lo + (hi - lo) · 1/2 = 0`` when ``hi = -lo``),
    so the grid centre is the origin itself."""
    out = lo + (hi - lo) * (np.arange(n, dtype=np.float64) / (n - 1))
    out[-1] = hi
    return out


def grid(model: FlatModel, plane: Plane, x: Tensor, y: Tensor, *,
         span: Sequence[float] = (-1.0, 1.0, -1.0, 1.0), resolution: int | tuple[int, int] = 21,
         chunk_size: int | None = None, batch_size: int = 2048,
         buffers: dict[str, Tensor] | None = None) -> LandscapeGrid:
    """Loss and accuracy on the lattice ``origin + α d1 + β d2`` of ``plane``.

    Args:
        model: the :class:`~l2o_lib.functional.FlatModel` whose parameters the plane lives in.
        plane: a :class:`Plane` of ``model.dim``; moved to ``x``'s device if needed.
        x, y: evaluation inputs and labels (all of them are used for every point).
        span: ``(alpha_min, alpha_max, beta_min, beta_max)``, each min < max.
        resolution: points per axis (``>= 2``), or ``(R_α, R_β)``. An odd resolution with a
            symmetric span puts ``(0, 0)``, the origin itself, at the centre.
        chunk_size: grid points stacked into one batched call (``None``: from available memory,
            :func:`auto_chunk_size`). Each chunk is a single ``model.batched_evaluate``.
        batch_size: examples per forward inside ``batched_evaluate``.
        buffers: BatchNorm statistics to use (``None``: the module's own).

    Returns:
        a :class:`LandscapeGrid` of CPU numpy arrays.

    Raises:
        ValueError: a plane of another size than the model, bad ``span``, ``resolution < 2``,
            bad ``chunk_size`` / ``batch_size`` or data.
    """
    _check_model(model)
    if not isinstance(plane, Plane):
        raise ValueError(f"plane must be a Plane, got {type(plane).__name__}")
    if plane.dim != model.dim:
        raise ValueError(f"plane lives in D={plane.dim}; the model has D={model.dim}")
    a0, a1, b0, b1 = _check_span(span)
    ra, rb = _check_resolution(resolution)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    x, y = _check_data(x, y)
    model.check_data(x, y, name="x, y")
    plane = plane.to(device=x.device)
    alphas, betas = _axis(a0, a1, ra), _axis(b0, b1, rb)
    # Row-major ("ij") order: point k is (alphas[k // rb], betas[k % rb]).
    coeffs = np.stack(np.meshgrid(alphas, betas, indexing="ij"), -1).reshape(-1, 2)
    coeffs = torch.as_tensor(coeffs, device=x.device, dtype=plane.origin.dtype)
    if chunk_size is None:
        chunk_size = auto_chunk_size(model, plane.origin, x, batch_size=batch_size, buffers=buffers)
    res = _evaluate_points(model, lambda lo, hi: plane._points(coeffs[lo:hi]), ra * rb, x, y,
                           chunk_size=chunk_size, batch_size=batch_size, buffers=buffers)
    return LandscapeGrid(alphas, betas, res["loss"].reshape(ra, rb).cpu().numpy(),
                         res["accuracy"].reshape(ra, rb).cpu().numpy())


def grid_values_at(landscape: LandscapeGrid, coords: Any, *, field: str = "loss") -> np.ndarray:
    """Bilinear interpolation of ``landscape.<field>`` at plane coordinates ``(α, β)``.

    For ``α`` in ``[alphas[i], alphas[i+1]]`` and ``β`` in ``[betas[j], betas[j+1]]``, with
    ``s = (α - alphas[i]) / (alphas[i+1] - alphas[i])`` and ``t`` likewise along ``β``::

        f(α, β) = (1-s)(1-t) F[i, j] + s(1-t) F[i+1, j] + (1-s)t F[i, j+1] + st F[i+1, j+1]

    exact at the lattice points and for any function bilinear in ``(α, β)``. Used to lift a
    projected trajectory onto a drawn loss surface; it is the grid's value, not the loss at the
    trajectory's own parameters (which lie off the plane by :attr:`Projection.residual`).

    Args:
        landscape: a :class:`LandscapeGrid` (strictly increasing ``alphas`` and ``betas``).
        coords: ``(K, 2)`` array or tensor of ``(α, β)``, or a :class:`Projection`.
        field: ``"loss"`` or ``"accuracy"``.

    Returns:
        ``(K,)`` float64 values; ``NaN`` for points outside the grid's span.

    Raises:
        ValueError: ``field`` unknown, ``coords`` not ``(K, 2)``, or a grid whose axes are not
            strictly increasing or whose field is not ``(R_α, R_β)``.
    """
    if field not in ("loss", "accuracy"):
        raise ValueError(f"field must be 'loss' or 'accuracy', got {field!r}")
    alphas = np.asarray(landscape.alphas, dtype=np.float64)
    betas = np.asarray(landscape.betas, dtype=np.float64)
    values = np.asarray(getattr(landscape, field), dtype=np.float64)
    if alphas.ndim != 1 or betas.ndim != 1 or len(alphas) < 2 or len(betas) < 2:
        raise ValueError(f"landscape axes must be 1-D with >= 2 points, got alphas {alphas.shape}, betas {betas.shape}")
    if not (np.all(np.diff(alphas) > 0) and np.all(np.diff(betas) > 0)):
        raise ValueError("landscape alphas and betas must be strictly increasing")
    if values.shape != (len(alphas), len(betas)):
        raise ValueError(f"landscape.{field} has shape {values.shape}; expected {(len(alphas), len(betas))}")
    if isinstance(coords, Projection):
        coords = coords.coords
    if isinstance(coords, Tensor):
        coords = coords.detach().cpu().numpy()
    pts = np.asarray(coords, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"coords must have shape (K, 2), got {pts.shape}")
    a, b = pts[:, 0], pts[:, 1]
    # Cell index clipped to the last cell, so the upper edge itself interpolates (s = 1).
    i = np.clip(np.searchsorted(alphas, a, side="right") - 1, 0, len(alphas) - 2)
    j = np.clip(np.searchsorted(betas, b, side="right") - 1, 0, len(betas) - 2)
    s = (a - alphas[i]) / (alphas[i + 1] - alphas[i])
    t = (b - betas[j]) / (betas[j + 1] - betas[j])
    out = ((1 - s) * (1 - t) * values[i, j] + s * (1 - t) * values[i + 1, j]
           + (1 - s) * t * values[i, j + 1] + s * t * values[i + 1, j + 1])
    inside = (a >= alphas[0]) & (a <= alphas[-1]) & (b >= betas[0]) & (b <= betas[-1])
    return np.where(inside, out, np.nan)


# -------------------------------------------------------------------------------- projection
class Projection(NamedTuple):
    """Coordinates of trajectory points in a plane and their distance from it.

    Attributes:
        coords: ``(T, 2)`` float64 ``(α, β)`` with ``origin + α d1 + β d2`` the closest point.
        residual: ``(T,)`` float64 Euclidean distance from the plane (absolute, in parameter
            units; divide by ``‖θ_t - origin‖`` for the relative residual).
    """

    coords: Tensor
    residual: Tensor


def project(trajectory: Tensor | np.ndarray, plane: Plane) -> Projection:
    """Least-squares coordinates of every row of ``trajectory`` (``(T, D)``) in ``plane``.

    With ``B = [d1; d2]`` and ``x_t = θ_t - origin``, ``c_t`` solves ``(B Bᵀ) c_t = B x_t`` (the
    2 × 2 normal equations, so non-orthogonal directions such as those of
    :func:`plane_through` are handled), and ``residual_t = ‖x_t - Bᵀ c_t‖``. Computed in float64
    on the plane's device, a block of rows at a time (so a ``numpy.memmap`` or a
    :class:`~l2o_lib.subspace.Trajectory` works too); returned there as float64 tensors.

    Raises:
        ValueError: ``trajectory`` not ``(T, D)`` with the plane's ``D``, or ``d1`` and ``d2``
            linearly dependent (no unique coordinates).
    """
    if not isinstance(plane, Plane):
        raise ValueError(f"plane must be a Plane, got {type(plane).__name__}")
    traj = _checkpoints(trajectory)
    if traj.shape[1] != plane.dim:
        raise ValueError(f"trajectory has rows of size {traj.shape[1]}; the plane lives in D={plane.dim}")
    device = plane.origin.device
    dirs = torch.stack([plane.d1, plane.d2]).to(torch.float64)          # (2, D)
    origin = plane.origin.to(torch.float64)
    gram = dirs @ dirs.T
    # Rounding of the directions' own dtype bounds how well the Gram matrix is known.
    if float(torch.linalg.det(gram)) <= 64 * torch.finfo(plane.origin.dtype).eps * float(gram[0, 0] * gram[1, 1]):
        raise ValueError("plane directions d1 and d2 are zero or linearly dependent; no unique coordinates")
    rows = max(1, PROJECT_BLOCK_BYTES // (8 * plane.dim))
    coords, residual = [], []
    for lo in range(0, traj.shape[0], rows):
        part = traj[lo:lo + rows]
        part = torch.from_numpy(np.array(part)) if isinstance(part, np.ndarray) else part.detach()
        xs = part.to(device=device, dtype=torch.float64) - origin    # (t, D)
        c = torch.linalg.solve(gram, (xs @ dirs.T).T).T                # (t, 2)
        coords.append(c)
        residual.append(torch.linalg.vector_norm(xs - c @ dirs, dim=1))
    return Projection(torch.cat(coords), torch.cat(residual))
