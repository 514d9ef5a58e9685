"""One training step under MLR-SNet vs one plain SGD-with-momentum step, in the same flat-parameter loop.

ours:      :func:`l2o_lib.mlrsnet.meta_train` run for ``3 · t_val`` steps and divided by the steps: every
           step feeds the mini-batch loss through the schedule LSTM and applies the LR it returns; every
           ``t_val``-th step also takes the validation look-ahead (one forward/backward on a validation
           batch, a backward through the LSTM, an Adam step on it, the divergence guard's one host sync and
           its copy of the network). The meta-updates are thus amortised at the configured ``t_val``.
reference: :func:`l2o_lib.training.train_flat` with ``momentum(lr=0.1, momentum=0.9, weight_decay=5e-4)``, the
           same number of steps on the same data (the hand-designed baseline's step).
meta-test: ``mlrsnet_rule`` vs ``transform_rule(momentum)`` in :func:`l2o_lib.population.train_population`
           with one run: the per-step price of the LSTM alone (no meta-updates), reported as
           ``meta_test_overhead``.

sgd:       a plain ``torch.optim.SGD`` step of the module (same momentum, weight decay, batch size and
           device-resident batches), the step issue 10's bound divides by.

``overhead = ours_s / reference_s`` is issue 6's number (≤ 1.15 at ``t_val = 100``); issue 10's is
``overhead_vs_sgd_tval300 = ours_s_tval300 / sgd_s_tval300`` (≤ 1.05); ``ratio`` (the runner's
``reference / ours``) is the inverse of the first. Both modes time ``t_val = 100`` (the paper's) and 300 (the public code's). Quick
mode: the notebook's model (an MLP on MNIST-1D-shaped data, 1.5 ms steps on a CPU core, where the LSTM's
fixed ~0.1 ms per step shows most); full mode: ResNet-20 on CIFAR-shaped data.
"""

import statistics

import torch

from l2o_lib.benchmark import target, time_per_call, torch_sgd_steps
from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.mlrsnet import TrainedSchedule, MLRSNet, meta_train, mlrsnet_rule
from l2o_lib.models import build_model
from l2o_lib.optim import momentum
from l2o_lib.population import train_population, transform_rule
from l2o_lib.training import train_flat

# t_val -> (the field its bound is on, the step it divides by, the bound): issue 6, then issue 10
BOUNDS = {100: ("overhead", "momentum-SGD step (train_flat)", 1.15),
          300: ("overhead_vs_sgd", "torch.optim SGD step", 1.05)}


def targets(r: dict) -> list[dict]:
    """One target per timed ``t_val`` that has a bound, from the record's fields."""
    out = []
    for key in sorted(k for k in r if k.startswith("t_val")):
        t_val, suffix = r[key], key[len("t_val"):]
        if t_val in BOUNDS:
            field, per, bound = BOUNDS[t_val]
            if f"{field}{suffix}" not in r:  # records from before the torch.optim reference
                field, per = "overhead", "momentum-SGD step (train_flat)"
            out.append(target(f"MLR-SNet step, meta-updates every T_val = {t_val} / {per}", r[f"{field}{suffix}"], bound))
    return out


def run(*, quick: bool, device: str) -> dict:
    if quick:
        name, shape, n, t_vals = "mlp", (40,), 4000, (100, 300)
    else:
        name, shape, n, t_vals = "resnet20", (3, 32, 32), 4096, (100, 300)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)
    train, val = ArrayData(x[: n * 3 // 4], y[: n * 3 // 4]), ArrayData(x[n * 3 // 4:], y[n * 3 // 4:])
    model = FlatModel(build_model(name, shape, 10, seed=0).to(device))
    theta0 = model.flatten()
    sgd = momentum(lr=0.1, momentum=0.9, weight_decay=5e-4)
    warmup, repeat, rounds = (1, 2, 7) if quick else (1, 1, 3)  # quick: 2 ms steps, noisy; more rounds

    record = {"model": name, "parameters": model.dim, "batch_size": 128}
    for t_val in t_vals:
        steps = 3 * t_val

        def ours():
            meta_train(model, train, val, steps=steps, num_classes=10, t_val=t_val, theta=theta0, desc=None)

        def reference():
            train_flat(model, sgd, BatchSampler(train, 128, seed=0), steps=steps, theta=theta0)

        fns = {"ours": ours, "ref": reference,
               "sgd": torch_sgd_steps(build_model(name, shape, 10, seed=0).to(device),
                                      BatchSampler(train, 128, seed=0).sample, steps, momentum=0.9, weight_decay=5e-4)}
        times = {k: [] for k in fns}
        for fn in fns.values():
            time_per_call(fn, device=device, warmup=0, repeat=warmup)
        for _ in range(rounds):  # alternating rounds: drift in the machine's load hits all alike
            for k, fn in fns.items():
                times[k].append(time_per_call(fn, device=device, warmup=0, repeat=repeat) / steps)
        o, r, sgd_s = (statistics.median(times[k]) for k in ("ours", "ref", "sgd"))
        suffix = "" if t_val == t_vals[0] else f"_tval{t_val}"
        record.update({f"ours_s{suffix}": o, f"reference_s{suffix}": r, f"overhead{suffix}": o / r,
                       f"sgd_s{suffix}": sgd_s, f"overhead_vs_sgd{suffix}": o / sgd_s, f"t_val{suffix}": t_val})

    # Meta-test: the LSTM's per-step price alone, same loop for both.
    schedule = TrainedSchedule([MLRSNet(seed=s).state_dict() for s in range(3)])
    steps = 200 if quick else 100
    f0 = torch.tensor([2.3], device=device)

    def test_ours():
        train_population(model, train, mlrsnet_rule(schedule, total_steps=steps, num_classes=10, f0=f0),
                         thetas=theta0[None], steps=steps)

    def test_ref():
        train_population(model, train, transform_rule(sgd), thetas=theta0[None], steps=steps)

    a, b = [], []
    for fn in (test_ours, test_ref):
        time_per_call(fn, device=device, warmup=0, repeat=1)
    for _ in range(rounds):
        a.append(time_per_call(test_ours, device=device, warmup=0, repeat=repeat) / steps)
        b.append(time_per_call(test_ref, device=device, warmup=0, repeat=repeat) / steps)
    record.update({"meta_test_s": statistics.median(a), "meta_test_reference_s": statistics.median(b),
                   "meta_test_overhead": statistics.median(a) / statistics.median(b)})
    return {**record, "targets": targets(record)}
