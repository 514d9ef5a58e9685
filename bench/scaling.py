"""How the cost of an SL2O first-order meta-training inner step grows with the model and the meta-batch.

Every point times :func:`l2o_lib.sl2o.meta_train`'s inner loop (``run_task``, first order, T = 10, an
Adam meta-step at the end of every unroll, as in ``bench/sl2o_meta_step.py``) in a random 40-dimensional
subspace through the model's initial weights, per inner step, and a plain ``torch.optim.SGD`` step of the
same model at the same batch size (``sgd_s``), timed in the same alternating rounds so that drift in the
machine's load hits both alike.

* ``models``: one task per meta-step, the model growing MLP (MNIST-1D-shaped data, 15 k weights) →
  ResNet-20 (CIFAR-shaped, 0.27 M) → ResNet-18 (CIFAR-shaped, 11 M; full mode only).
  ``ratio_vs_sgd = ours_s / sgd_s``.
* ``meta_batch``: the MLP with ``tasks_per_step`` K = 1, 2, 4, 8 (full: also 16) tasks trained side by
  side, one vmapped model call per inner step. The meta-step does K tasks' work, so it is compared
  with K SGD steps: ``per_task_vs_sgd = ours_s / (K · sgd_s)``, which falls below 1 when batching the
  tasks pays. (Models with BatchNorm cannot be vmapped over tasks, hence the MLP.)

Quick mode: batch 8 (the ResNet's cost is what grows, not the data), three unrolls per call, two rounds;
full mode: batch 128, three unrolls per call, three rounds (ResNet-18 on a CPU: one; its step takes 8 s
there). One unroll of each side warms up. The headline ``ours_s`` / ``reference_s``
are the largest model's meta-step and SGD step. The numbers are a report, not a target.
"""


import torch

from l2o_lib.benchmark import median_times, torch_sgd_steps
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.sl2o import Problem, run_task, step_on_unroll
from l2o_lib.subspace import random_subspace

D_SUB, T = 40, 10
SHAPES = {"mlp": (40,), "resnet20": (3, 32, 32), "resnet18": (3, 32, 32)}


def _point(name: str, *, tasks: int, batch: int, unrolls: int, rounds: int, device: str) -> dict:
    """Seconds per inner step of a K-task first-order meta-step and of one SGD step, for one model."""
    shape = SHAPES[name]
    n = max(256, 4 * batch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)
    module = build_model(name, shape, 10, seed=0).to(device)
    flat = FlatModel(module)
    theta0 = flat.flatten()
    problem = Problem(flat, (x, y), batch, random_subspace(flat.dim, D_SUB, origin=theta0, seed=0, device=device))
    rule = LSTMRule().to(device)
    meta_opt = torch.optim.Adam(rule.parameters(), lr=1e-3)
    transform = rnnprop(rule, differentiable=True)
    gen = torch.Generator(device=device).manual_seed(0)
    steps = T * unrolls

    on_unroll = step_on_unroll(meta_opt)

    def meta_steps(n):
        return lambda: run_task(problem, transform, gen, steps=n, unroll=T, tasks=tasks, first_order=True,
                                on_unroll=on_unroll)

    sgd_module = build_model(name, shape, 10, seed=0).to(device)

    def sgd_steps(n):
        return torch_sgd_steps(sgd_module, lambda: tuple(t[0] for t in problem.batches(gen, 1)), n)

    fns = {"ours_s": meta_steps(steps), "sgd_s": sgd_steps(steps)}
    for warm in (meta_steps(T), sgd_steps(T)):  # one unroll warms every code path; a whole call is not needed
        warm()
    t = median_times(fns, device=device, warmup=0, rounds=rounds, per=steps)
    return {"model": name, "parameters": flat.dim, "tasks": tasks, "batch": batch, "rounds": rounds, **t,
            "ratio_vs_sgd": t["ours_s"] / t["sgd_s"], "per_task_vs_sgd": t["ours_s"] / (tasks * t["sgd_s"])}


def run(*, quick: bool, device: str) -> dict:
    batch, unrolls, rounds = (8, 3, 2) if quick else (128, 3, 3)
    models = ("mlp", "resnet20") if quick else ("mlp", "resnet20", "resnet18")
    meta_batches = (1, 2, 4, 8) if quick else (1, 2, 4, 8, 16)
    kw = dict(batch=batch, unrolls=unrolls, rounds=rounds, device=device)
    # ResNet-18's step takes 8 s on a 2-core CPU: one round there keeps full mode under an hour
    by_model = [_point(name, tasks=1, **{**kw, "rounds": 1 if name == "resnet18" and device == "cpu" else rounds})
                for name in models]
    by_tasks = [by_model[0]] + [_point("mlp", tasks=k, **kw) for k in meta_batches[1:]]
    top = by_model[-1]
    return {"ours_s": top["ours_s"], "reference_s": top["sgd_s"], "model": top["model"],
            "models": by_model, "meta_batch": by_tasks, "batch": batch, "unroll": T, "d": D_SUB,
            "per": "inner step", "targets": []}
