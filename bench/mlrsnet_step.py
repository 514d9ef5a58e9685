"""One training step under MLR-SNet vs one plain SGD-with-momentum step, in the same flat-parameter loop.

ours:      :func:`l2o_lib.mlrsnet.meta_train`: every step feeds the mini-batch loss through the schedule LSTM
           and applies the LR it returns; every ``t_val``-th step also takes the validation look-ahead (one
           forward/backward on a validation batch, a backward through the LSTM, an Adam step on it, the
           divergence guard's one host sync and its copy of the network).
reference: :func:`l2o_lib.training.train_flat` with ``momentum(lr=0.1, momentum=0.9, weight_decay=5e-4)``, the
           same number of steps on the same data (the hand-designed baseline's step).
sgd:       a plain ``torch.optim.SGD`` step of the module (same momentum, weight decay, batch size and
           device-resident batches), the step issue 10's bound divides by.
meta-test: ``mlrsnet_rule`` vs ``transform_rule(momentum)`` in :func:`l2o_lib.population.train_population`
           with one run: the per-step price of the LSTM alone (no meta-updates), reported as
           ``meta_test_overhead``.

How the meta-updates are amortised at ``t_val``:

* both modes measure the cost model ``ours(T) = step_s + meta_update_s / T`` on short real loops
  (``parts_steps`` steps with ``t_val = parts_steps``, i.e. one meta-update, and with ``t_val = 1``, one
  at every step; the loops' own clocks, so the shared set-up is left out) and report ``step_s``,
  ``meta_update_s`` and, in quick mode, ``modelled_s*`` next to the direct measurement;
* quick mode (the notebook's MLP on MNIST-1D-shaped data, 2 ms steps, where the LSTM's fixed ~0.1 ms per
  step shows most) also times whole runs of ``3 · t_val`` steps, amortised by the loop itself: that is
  its ``ours_s*``;
* full mode (ResNet-20 on CIFAR-shaped data, 0.75 s steps on a 2-core CPU, where ``3 · 300`` steps per
  call would take hours) reports the cost model as ``ours_s*``, next to ``train_flat`` and SGD timed on
  the same short loops (``method`` says which).

``overhead = ours_s / reference_s`` is issue 6's number (≤ 1.15 at ``t_val = 100``); issue 10's is
``overhead_vs_sgd_tval300 = ours_s_tval300 / sgd_s_tval300`` (≤ 1.05); ``ratio`` (the runner's
``reference / ours``) is the inverse of the first. Both modes report ``t_val = 100`` (the paper's) and 300
(the public code's).
"""

import statistics

import torch

from l2o_lib.benchmark import alternate, target, time_per_call, torch_sgd_steps
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


def _decomposed(model, train, val, theta0, *, steps: int) -> tuple[float, float]:
    """``(step_s, meta_update_s)`` from two real :func:`meta_train` loops of ``steps`` steps: with
    ``t_val = steps`` (one meta-update, at step 0) and with ``t_val = 1`` (one at every step). The
    loops' own clocks (``history.seconds``) leave out the set-up both share (buffers, ``f0``)."""
    def loop(t_val):
        return meta_train(model, train, val, steps=steps, num_classes=10, t_val=t_val, theta=theta0,
                          desc=None).history.seconds
    one, every = loop(steps), loop(1)
    meta_update = (every - one) / (steps - 1)
    return (one - meta_update) / steps, meta_update


def run(*, quick: bool, device: str) -> dict:
    if quick:
        name, shape, n = "mlp", (40,), 4000
    else:
        name, shape, n = "resnet20", (3, 32, 32), 4096
    t_vals = (100, 300)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g).to(device)
    y = torch.randint(10, (n,), generator=g).to(device)
    train, val = ArrayData(x[: n * 3 // 4], y[: n * 3 // 4]), ArrayData(x[n * 3 // 4:], y[n * 3 // 4:])
    model = FlatModel(build_model(name, shape, 10, seed=0).to(device))
    theta0 = model.flatten()
    sgd = momentum(lr=0.1, momentum=0.9, weight_decay=5e-4)
    # quick: 2 ms steps, noisy, more rounds; full: 0.75 s steps on a 2-core CPU, short loops
    repeat, rounds, parts_steps = (2, 7, 50) if quick else (1, 3, 20)

    def per_step(fn, steps):
        return lambda: time_per_call(fn, device=device, warmup=0, repeat=repeat) / steps

    def baselines(steps):
        return {"ref": per_step(lambda: train_flat(model, sgd, BatchSampler(train, 128, seed=0), steps=steps,
                                                   theta=theta0), steps),
                "sgd": per_step(torch_sgd_steps(build_model(name, shape, 10, seed=0).to(device),
                                                BatchSampler(train, 128, seed=0).sample, steps, momentum=0.9,
                                                weight_decay=5e-4), steps)}

    def rounds_of(measures):
        """Each measurement's values over the rounds, after one untimed warm-up call of each."""
        for measure in measures.values():
            measure()
        return alternate(measures, rounds=rounds)

    record = {"model": name, "parameters": model.dim, "batch_size": 128}

    # The cost model ours(T) = step_s + meta_update_s / T, measured on short loops (both modes).
    times = rounds_of({"parts": lambda: _decomposed(model, train, val, theta0, steps=parts_steps),
                       **baselines(parts_steps)})
    step_s = statistics.median(p[0] for p in times["parts"])
    meta_update_s = statistics.median(p[1] for p in times["parts"])
    r_parts, sgd_parts = statistics.median(times["ref"]), statistics.median(times["sgd"])
    record.update({"step_s": step_s, "meta_update_s": meta_update_s, "parts_steps": parts_steps,
                   "parts_reference_s": r_parts, "parts_sgd_s": sgd_parts})

    for t_val in t_vals:
        suffix = "" if t_val == t_vals[0] else f"_tval{t_val}"
        modelled = step_s + meta_update_s / t_val
        if quick:
            # Direct: whole runs of 3 · t_val steps, the meta-updates amortised by the loop itself.
            steps = 3 * t_val
            times = rounds_of({"ours": per_step(lambda: meta_train(model, train, val, steps=steps, num_classes=10,
                                                                   t_val=t_val, theta=theta0, desc=None), steps),
                               **baselines(steps)})
            o, r, sgd_s = (statistics.median(times[k]) for k in ("ours", "ref", "sgd"))
            record[f"modelled_s{suffix}"] = modelled
        else:
            # Full: 3 · 300 ResNet-20 steps per call would take hours on a CPU; the cost model instead.
            o, r, sgd_s = modelled, r_parts, sgd_parts
        record.update({f"ours_s{suffix}": o, f"reference_s{suffix}": r, f"overhead{suffix}": o / r,
                       f"sgd_s{suffix}": sgd_s, f"overhead_vs_sgd{suffix}": o / sgd_s, f"t_val{suffix}": t_val})
    record["method"] = "direct (3 · t_val steps)" if quick else "modelled (step_s + meta_update_s / t_val)"

    # Meta-test: the LSTM's per-step price alone, same loop for both.
    schedule = TrainedSchedule([MLRSNet(seed=s).state_dict() for s in range(3)])
    steps = 200 if quick else 20
    f0 = torch.tensor([2.3], device=device)
    rule = mlrsnet_rule(schedule, total_steps=steps, num_classes=10, f0=f0)
    times = rounds_of({"ours": per_step(lambda: train_population(model, train, rule, thetas=theta0[None], steps=steps), steps),
                       "ref": per_step(lambda: train_population(model, train, transform_rule(sgd), thetas=theta0[None],
                                                                steps=steps), steps)})
    a, b = statistics.median(times["ours"]), statistics.median(times["ref"])
    record.update({"meta_test_s": a, "meta_test_reference_s": b, "meta_test_overhead": a / b})
    return {**record, "targets": targets(record)}
