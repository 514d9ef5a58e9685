"""A 2-D loss-landscape grid of ResNet-20 (eval mode) on CIFAR-shaped random data.

ours:      ``l2o_lib.landscape.grid``: the grid points of a chunk (chunk size from the memory
           heuristic) stacked into a ``(K, D)`` tensor and scored by one vmapped
           ``FlatModel.batched_evaluate`` call, loss and accuracy. On the CPU the cache-sized
           budget gives chunks of one point here (vmap does not pay there), each a plain
           functional ``FlatModel.evaluate``; the batching is for accelerators.
reference: the reference library's loop (Li et al.'s ``loss-landscape``: ``set_weights`` then
           ``eval_loss``): for every grid point write ``origin + a·d1 + b·d2`` into the module's
           parameters with a per-tensor Python loop (``p.data.copy_``), run ``model(x)`` under
           ``no_grad``, and read the loss and the number correct with ``.item()``.
Same model, filter-normalised random plane (``random_plane``, seed 0), span [-1, 1]², data.
Full mode: a 51 × 51 grid on 256 images; quick mode: 7 × 7 on 64 images.

``ours_s`` and ``reference_s`` are seconds for the WHOLE grid. Where the whole grid would take
too long (full mode on the CPU: 0.4-0.6 s per point and side measured here, about 20-25 minutes
each), both sides are timed on the same 2 × 8 sub-grid (the first rows × first columns of the
grid, 16 points) and scaled by
``points / timed points``; ``ours_extrapolated_from`` and ``reference_extrapolated_from`` give the
number of points actually timed (``points`` when nothing was extrapolated).
Target (issue 10, GPU only): ``ratio = reference_s / ours_s >= 10``.
``max_loss_rel_diff`` checks that both sides computed the same losses on the timed points (relative
to ``max(1, |loss|)``: at the corners of the plane the losses of this untrained net reach ~1e5).
"""

import numpy as np
import torch
import torch.nn.functional as F

from l2o_lib.benchmark import compare, target
from l2o_lib.functional import FlatModel
from l2o_lib.landscape import auto_chunk_size, grid, random_plane
from l2o_lib.models import build_model

SPAN = (-1.0, 1.0, -1.0, 1.0)


def targets(r: dict) -> list[dict]:
    """The issue's target, from the record's fields (a GPU's: vmap does not pay on 2 CPU cores)."""
    return [target("landscape grid speed-up vs the per-point loop", r["reference_s"] / r["ours_s"], 10, ">=", "cuda")]


def run(*, quick: bool, device: str) -> dict:
    R, n = (7, 64) if quick else (51, 256)
    points = R * R
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)

    flat = FlatModel(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).eval())
    theta = flat.flatten()
    plane = random_plane(flat, theta, seed=0)
    alphas = np.linspace(SPAN[0], SPAN[1], R)
    betas = np.linspace(SPAN[2], SPAN[3], R)

    # Timed sub-grid: rows × cols of the full grid, same spacing (the whole grid unless CPU full).
    extrapolate = not quick and torch.device(device).type == "cpu"
    rows, cols = (2, 8) if extrapolate else (R, R)
    sub_span = (alphas[0], alphas[rows - 1], betas[0], betas[cols - 1])
    timed = rows * cols
    box = {}

    def ours():
        box["ours"] = grid(flat, plane, x, y, span=sub_span, resolution=(rows, cols), batch_size=n)

    # reference: its own module, parameters overwritten point by point.
    model = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).eval()
    params = dict(model.named_parameters())
    split = lambda v: [t.view(s) for t, s in zip(torch.split(v, flat.numels), flat.shapes)]
    layers = list(zip([params[name] for name in flat.names], split(plane.origin), split(plane.d1), split(plane.d2)))

    def reference():
        loss = np.zeros((rows, cols))
        acc = np.zeros((rows, cols))
        for i in range(rows):
            for j in range(cols):
                a, b = float(alphas[i]), float(betas[j])
                for p, w, u, v in layers:
                    p.data.copy_(w + a * u + b * v)
                with torch.no_grad():
                    out = model(x)
                    loss[i, j] = F.cross_entropy(out, y).item()
                    acc[i, j] = (out.argmax(1) == y).sum().item() / n
        box["reference"] = loss

    if extrapolate or quick:
        # Warm up on a few points only (a whole warm-up grid would cost as much as the timing).
        grid(flat, plane, x, y, span=SPAN, resolution=2, batch_size=n)
        with torch.no_grad():
            model(x)
        timing = compare(ours, reference, device=device, warmup=0, repeat=1, rounds=2)
    else:
        timing = compare(ours, reference, device=device, warmup=1, repeat=1, rounds=2)
    scale = points / timed
    diff = np.abs(box["ours"].loss - box["reference"]) / np.maximum(1.0, np.abs(box["reference"]))
    out = {
        "ours_s": timing["ours_s"] * scale,
        "reference_s": timing["reference_s"] * scale,
        "points": points,
        "resolution": R,
        "batch": n,
        "ours_extrapolated_from": timed,
        "reference_extrapolated_from": timed,
        "chunk_size": min(timed, auto_chunk_size(flat, theta, x, batch_size=n)),
        # Losses reach ~1e5 at the corners (random init, eval-mode BatchNorm), so relative.
        "max_loss_rel_diff": float(diff.max()),
        "loss_range": [float(box["reference"].min()), float(box["reference"].max())],
        "model": "resnet20",
        "parameters": flat.dim,
    }
    return {**out, "targets": targets(out)}
