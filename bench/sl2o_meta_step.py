"""One SL2O meta-training inner step (first order, T = 10) on ResNet-20 with CIFAR-shaped data, d = 40.

ours:      :func:`l2o_lib.sl2o.meta_train`'s loop (``run_task``) on the flat parameters: one
           ``loss`` + ``autograd.grad`` per step with respect to the 40 coordinates, the LSTM on
           40 rows, and every T steps a backward pass through the LSTM chain only (the
           first-order surrogate) and an Adam step. Timed over several unrolls, per inner step.
reference: what the public SL2O code does per step: a ``DataLoader`` batch, module-level
           autograd through parameters rebuilt as non-leaf tensors (``p - Pᵀu`` per tensor, with
           ``retain_grad``), ``loss.backward(retain_graph=True)`` into both the weights and the
           LSTM, the gradient gathered by a per-tensor Python loop, ``P @ g`` and the same LSTM;
           ``meta_optimizer.step()`` every T steps. ``reference_shipped_s`` adds the
           ``torch.autograd.set_detect_anomaly(True)`` the public code leaves on.
sgd:       a plain ``torch.optim.SGD`` step on the same model and batch size:
           ``ratio_vs_sgd = ours_s / sgd_s`` (issue 10's target: <= 1.1).
second order (a detail, no target): the same loop with ``first_order=False``, back-propagating through
           the optimizee's gradients too (``second_order_s``, ``second_order_vs_sgd``).

Targets: ``ratio_vs_sgd <= 1.1`` anywhere; on a GPU also ``ratio = reference_s / ours_s >= 10``.
"""


import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from l2o_lib.benchmark import median_times, target, torch_sgd_steps
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.sl2o import Problem, run_task, step_on_unroll
from l2o_lib.subspace import random_subspace

D_SUB, T = 40, 10


def targets(r: dict) -> list[dict]:
    """The issue's targets, from the record's fields."""
    return [target("SL2O meta-training inner step (first order) / SGD step", r["ratio_vs_sgd"], 1.1),
            target("SL2O meta-training speed-up vs the reference-style loop", r["reference_s"] / r["ours_s"], 10, ">=",
                   "cuda")]


def run(*, quick: bool, device: str) -> dict:
    # Three unrolls even in quick mode: a task computes one gradient more than it has steps (the last
    # point's loss), which one unroll would inflate to 10 % of the time; real tasks have 500-1000 steps.
    batch, n, unrolls = (32, 1024, 3) if quick else (128, 4096, 3)
    steps = T * unrolls
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)

    flat = FlatModel(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device))
    theta0 = flat.flatten()
    space = random_subspace(flat.dim, D_SUB, origin=theta0, seed=0, device=device)
    problem = Problem(flat, (x, y), batch, space)
    rule = LSTMRule().to(device)
    meta_opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
    transform = rnnprop(rule, differentiable=True)
    gen = torch.Generator(device=device).manual_seed(0)

    on_unroll = step_on_unroll(meta_opt)

    def ours(first_order=True):
        run_task(problem, transform, gen, steps=steps, unroll=T, tasks=1, first_order=first_order,
                 on_unroll=on_unroll)

    # ---- reference style
    model = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).train()
    names = [k for k, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    P = space.basis
    ref_rule = LSTMRule().to(device)
    ref_opt = torch.optim.Adam(ref_rule.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True)

    def reference(anomaly=False):
        params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
        m = torch.zeros(D_SUB, 1, device=device)
        v = torch.zeros(D_SUB, 1, device=device)
        carry = ref_rule.init_carry(torch.zeros(D_SUB, device=device))
        it = iter(loader)
        for i in range(steps):
            xb, yb = next(it)
            with torch.autograd.set_detect_anomaly(anomaly):
                loss = F.cross_entropy(functional_call(model, params, (xb,)), yb)
                for p in params.values():
                    p.retain_grad()
                loss.backward(retain_graph=True)
                flatg = torch.cat([params[k].grad.data.reshape(-1, 1) for k in names])
                grad = P @ flatg
                m.mul_(0.9).add_(0.1 * grad)
                v.mul_(0.99).add_(0.01 * grad ** 2)
                mh, vh = m / (1 - 0.9 ** (i + 1)), v / (1 - 0.99 ** (i + 1))
                feats = torch.cat([mh / (vh.sqrt() + 1e-8), grad / (vh.sqrt() + 1e-8)], 1)
                upd, carry = ref_rule(grad.view(-1), feats, carry)
                up = (P.T @ upd.view(-1, 1)).view(-1)
                offs, new = 0, {}
                for k, s in zip(names, sizes):
                    new[k] = params[k] - up[offs:offs + s].view_as(params[k])
                    offs += s
                params = new
            if (i + 1) % T == 0:
                ref_opt.step()
                ref_opt.zero_grad()
                params = {k: p.detach().requires_grad_(True) for k, p in params.items()}
                carry = carry.detach()

    sgd = torch_sgd_steps(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device),
                          lambda: tuple(t[0] for t in problem.batches(gen, 1)), steps)

    # The targets' pair (ours, SGD) alternates in rounds of its own; the memory-hungry variants (the
    # reference style, second order, anomaly detection) run in separate rounds, since running them
    # between the two would leave the allocator and caches in another state for whichever comes next.
    groups = [{"ours_s": ours, "sgd_s": sgd},
              {"reference_s": reference, "second_order_s": lambda: ours(first_order=False)}]
    if not quick:
        groups[1]["reference_shipped_s"] = lambda: reference(anomaly=True)
    repeat, rounds = (1, 3) if quick else (2, 3)
    timing = {}
    for fns in groups:
        timing.update(median_times(fns, device=device, repeat=repeat, rounds=rounds, per=steps))
    out = {**timing, "ratio_vs_sgd": timing["ours_s"] / timing["sgd_s"],
           "reference_vs_sgd": timing["reference_s"] / timing["sgd_s"], "batch": batch, "unroll": T, "d": D_SUB,
           "second_order_vs_sgd": timing["second_order_s"] / timing["sgd_s"], "per": "inner step"}
    if "reference_shipped_s" in timing:
        out["reference_shipped_vs_sgd"] = timing["reference_shipped_s"] / timing["sgd_s"]
    out["targets"] = targets(out)
    return out
