"""Evaluating the loss on a plane: 1-D interpolations, 2-D grids in memory-sized vmapped chunks
(:func:`auto_chunk_size`), and bilinear reads of a grid at trajectory points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from ..config import check_int, check_nonnegative
from ..functional import FlatModel
from .checks import check_model, check_resolution, check_span, check_vector, check_xy, split_xy
from .planes import Plane, Projection

__all__ = ["LandscapeGrid", "Interpolation", "interpolate", "grid", "grid_values_at", "auto_chunk_size"]


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
    check_model(model)
    check_vector("theta_a", theta_a, model.dim)
    check_vector("theta_b", theta_b, model.dim)
    check_int("steps", steps, minimum=2)
    check_nonnegative("extend", extend)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    x, y = split_xy(batch_or_data)
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
    check_model(model)
    if not isinstance(plane, Plane):
        raise ValueError(f"plane must be a Plane, got {type(plane).__name__}")
    if plane.dim != model.dim:
        raise ValueError(f"plane lives in D={plane.dim}; the model has D={model.dim}")
    a0, a1, b0, b1 = check_span(span)
    ra, rb = check_resolution(resolution)
    check_int("batch_size", batch_size)
    if chunk_size is not None:
        check_int("chunk_size", chunk_size)
    x, y = check_xy(x, y)
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
