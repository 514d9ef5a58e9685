"""One P-BFGS iteration (gradient + Armijo line search) on ResNet-20 with CIFAR-shaped data, d = 40.

ours:      :func:`l2o_lib.pbfgs.line_search_step`, the body of ``train_pbfgs``: one
           ``loss_and_grad`` on the flat parameters, the ``d × d`` algebra, then one forward pass
           per trial at ``theta + α basisᵀp``, all in memory (BatchNorm trials write a scratch
           copy of the buffers).
reference: what the public DLDR code does per iteration: module-level autograd, the gradient
           gathered by a per-tensor Python loop (``torch.cat`` of every ``p.grad``), a
           ``copy.deepcopy(model)`` per iteration, and for every line-search try
           ``torch.save(model.state_dict(), tmpfile)``, the trial written into the parameters by
           a per-tensor loop, a forward pass, and ``load_state_dict(torch.load(tmpfile))`` to
           restore; the same BFGS update (product form, the reference's absolute ``1e-20``
           curvature test) and the same ``c``, ``β``.
sgd:       a plain ``torch.optim.SGD`` step (forward, backward, step) on the same model and batch,
           for scale: ``ratio_vs_sgd = ours_s / sgd_s`` is the price of the line search.
floor:     the passes an iteration cannot avoid, timed alone in the same rounds: one gradient pass
           (``gradient_s``) and one train-mode forward per trial (``forward_s``);
           ``floor_vs_sgd = (gradient_s + line_search_evals · forward_s) / sgd_s`` is the best ratio any
           implementation of the paper's line search could reach at this many trials, ``ours_vs_floor``
           how far ours is from it.

Every timed call of either P-BFGS variant runs the *same* iterations: ``iterations`` consecutive
iterations of one P-BFGS run (after ``warm_iterations`` from the initial weights), each from its
snapshot (parameters, ``B``, previous projected gradient and step) on its own batch, in the same
subspace; times are per iteration. Letting each variant run on would not compare like with like:
on a noisy mini-batch problem BFGS is chaotic, the float32-vs-float64 rounding of the two ``B``
updates makes the trajectories part after a few steps, and their trial counts then differ. From
the same snapshots both do the same BFGS updates; their trials can still differ where a trial's
loss sits at the Armijo bound and the curvature tests differ (``line_search_evals`` and
``reference_line_search_evals``: means per iteration over the timed calls; ``line_search_evals_range``:
the fewest and most of ours). Several snapshots, not one, because the trial count of a single
iteration (1 to 4 here) would decide the ratio. Restoring a snapshot costs ours nothing (the update
is pure) and the reference one ``vector_to_parameters`` of a copy (about a millisecond, inside its
timing).

Subspace: in quick mode a random 40-dimensional subspace (``random_subspace``), which is enough
for timing: only the number of trials depends on it, and it is reported. In full mode the DLDR
subspace of a short SGD run (80 steps, a checkpoint every 2, 41 checkpoints), as in the paper.
"""

import copy
import os
import statistics
import tempfile

import torch
import torch.nn.functional as F

from l2o_lib.benchmark import alternate, target, time_per_call, torch_sgd_steps
from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import momentum
from l2o_lib.pbfgs import line_search_step, pbfgs
from l2o_lib.subspace import dldr, random_subspace, sample_trajectory

D_SUB, C, BETA, MAX_TRIES = 40, 0.4, 0.55, 30


def targets(r: dict) -> list[dict]:
    """Issue 10's targets, from the record's fields: the line search's price, and on a GPU the speed-up."""
    return [target("P-BFGS iteration / SGD step", r["ratio_vs_sgd"], 1.5),
            target("P-BFGS speed-up vs the reference-style iteration", r["reference_s"] / r["ours_s"], 5, ">=", "cuda")]


def _subspace(flat, theta0, x, y, batch, quick, device):
    if quick:
        return random_subspace(flat.dim, D_SUB, origin=theta0, seed=0, device=device)
    sampler = BatchSampler(ArrayData(x, y), batch, seed=1)
    _, traj = sample_trajectory(flat, momentum(lr=0.1, momentum=0.9), sampler, steps=2 * D_SUB, every=2,
                                theta=theta0)
    return dldr(traj.checkpoints, D_SUB)


def run(*, quick: bool, device: str) -> dict:
    batch, n = 128, (1024 if quick else 10000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)
    batches = [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(8)]

    flat = FlatModel(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device))
    theta0 = flat.flatten()
    sub = _subspace(flat, theta0, x, y, batch, quick, device)
    basis = sub.basis

    # the snapshots the timed calls start from: iterations warm, ..., warm + n_snapshots - 1 of one run
    method = pbfgs(sub, c=C, beta=BETA, max_backtracks=MAX_TRIES)
    buffers = flat.init_buffers()
    scratch = {k: v.clone() for k, v in buffers.items()}
    warm, n_snapshots = (1, 2) if quick else (10, 8)
    theta, state, snapshots = theta0, method.init(theta0), []
    for k in range(warm + n_snapshots):
        batch_k = batches[k % len(batches)]
        if k >= warm:
            snapshots.append((theta, state, k, batch_k))
        theta, state, _, _ = line_search_step(flat, method, theta, state, k, batch_k, buffers, scratch)
    theta_s, _, _, batch_s = snapshots[0]

    # ours
    ours_evals = []

    def ours():
        for theta_k, state_k, k, batch_k in snapshots:
            _, _, _, info = line_search_step(flat, method, theta_k, state_k, k, batch_k, buffers, scratch)
            ours_evals.append(info["evals"])

    # reference
    model = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).train()
    params = list(model.parameters())
    tmpdir = tempfile.mkdtemp(prefix="pbfgs_bench_")
    tmpfile = os.path.join(tmpdir, "temporary.pt")
    ref_evals = []

    def write(direction, scale):
        # The reference's per-tensor parameter update.
        offset = 0
        with torch.no_grad():
            for p in model.parameters():
                p.add_(direction[offset:offset + p.numel()].view_as(p), alpha=scale)
                offset += p.numel()

    def reference_step(theta_s, state_s, batch_s):
        # restart from the snapshot; a copy, since vector_to_parameters makes the parameters views of
        # its argument and write() below would then move the snapshot itself
        torch.nn.utils.vector_to_parameters(theta_s.clone(), params)
        B, g_last, s = state_s.B.float(), state_s.prev_gz.float(), state_s.prev_s.float()
        xb, yb = batch_s
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        grad = torch.cat([p.grad.reshape(-1) for p in params])
        _snapshot = copy.deepcopy(model)  # noqa: F841 (the public code copies the model every iteration)
        gk = basis @ grad
        yk = gk - g_last
        ys = yk @ s
        if ys.item() > 1e-20:  # the reference's absolute curvature test
            rho = 1.0 / ys
            V = torch.eye(D_SUB, device=device) - rho * torch.outer(yk, s)
            B = V.T @ B @ V + rho * torch.outer(s, s)
        p = -(B @ gk)
        slope = (gk @ p).item()
        direction = p @ basis
        loss0, alpha, tries = loss.item(), 1.0, 0
        for _ in range(MAX_TRIES):
            torch.save(model.state_dict(), tmpfile)
            write(direction, alpha)
            with torch.no_grad():
                new = F.cross_entropy(model(xb), yb).item()
            model.load_state_dict(torch.load(tmpfile))
            tries += 1
            if new <= loss0 + C * alpha * slope:
                break
            alpha *= BETA
        write(direction, alpha)
        ref_evals.append(tries)

    def reference():
        for theta_k, state_k, _, batch_k in snapshots:
            reference_step(theta_k, state_k, batch_k)

    # plain SGD, for scale
    sgd = torch_sgd_steps(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device), lambda: batch_s)

    # the two passes an iteration is made of, for the floor it cannot go below
    grad_scratch = {k: v.clone() for k, v in buffers.items()}

    def forward():
        with torch.no_grad():  # as a trial runs
            flat.loss(theta_s, batch_s, scratch, train=True)

    passes = {"gradient_s": lambda: flat.loss_and_grad(theta_s, batch_s, grad_scratch), "forward_s": forward}

    # (function, calls per timing, iterations per call): a P-BFGS call runs every snapshot once
    repeat, rounds = (2, 2) if quick else (5, 3)
    runs = {"ours_s": (ours, 1, n_snapshots), "reference_s": (reference, 1, n_snapshots), "sgd_s": (sgd, repeat, 1),
            **{k: (fn, repeat, 1) for k, fn in passes.items()}}
    measures = {k: (lambda fn=fn, calls=calls, per=per: time_per_call(fn, device=device, warmup=0, repeat=calls) / per)
                for k, (fn, calls, per) in runs.items()}
    try:
        for fn, _, _ in runs.values():
            fn()
        ours_evals.clear()  # the trial counts of the timed calls only
        ref_evals.clear()
        # SGD and the passes in the same rounds as both variants: drift in the machine's load hits all alike
        times = alternate(measures, rounds=rounds)
    finally:
        if os.path.exists(tmpfile):
            os.remove(tmpfile)
        os.rmdir(tmpdir)
    timing = {k: statistics.median(v) for k, v in times.items()}
    mean = lambda v: sum(v) / len(v)
    evals = mean(ours_evals)
    floor = timing["gradient_s"] + evals * timing["forward_s"]
    out = {**timing, "ratio_vs_sgd": timing["ours_s"] / timing["sgd_s"],
            "forward_vs_sgd": timing["forward_s"] / timing["sgd_s"], "floor_vs_sgd": floor / timing["sgd_s"],
            "ours_vs_floor": timing["ours_s"] / floor,
            "line_search_evals": evals, "line_search_evals_range": [min(ours_evals), max(ours_evals)],
            "reference_line_search_evals": mean(ref_evals),
            "warm_iterations": warm, "iterations": n_snapshots,
            "model": "resnet20", "batch_size": batch, "parameters": flat.dim, "subspace_dim": D_SUB,
            "subspace": "random" if quick else "dldr(sgd 80 steps)", "method": "P-BFGS"}
    return {**out, "targets": targets(out)}
