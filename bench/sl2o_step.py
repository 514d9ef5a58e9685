"""One SL2O meta-test step vs one Momentum† step on ResNet-20 with CIFAR-shaped data, d = 40.

Both are the body of :func:`l2o_lib.training.train_flat`: ``loss_and_grad`` on the flat
parameters, the transform's update (SL2O: projection, RNNprop features, the 392-weight LSTM on 40
rows under ``no_grad``, lift; Momentum†: projection, momentum, lift) and ``theta + delta``.
The reference is the Momentum† step, the cheapest rule that can run in the same subspace:
``ratio = momentum_s / ours_s``; issue 5's target is ``ours_vs_momentum_dagger <= 1.1``. Issue 10 bounds
the step against a plain ``torch.optim.SGD`` step (momentum 0.9) of the module on the same batch, as the
public code was timed: ``ours_vs_sgd <= 1.03``. That ratio also carries the flat-parameter path's cost
(``functional_call`` over views of one vector; ``momentum_dagger_vs_sgd``).
"""


import torch

from l2o_lib.benchmark import median_times, target, torch_sgd_steps
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import momentum
from l2o_lib.sl2o import LSTMRule, sl2o
from l2o_lib.subspace import dagger, random_subspace


def targets(r: dict) -> list[dict]:
    """The issue's target, from the record's fields."""
    out = [target("SL2O meta-test step / Momentum† step", r["ours_vs_momentum_dagger"], 1.1)]
    if "ours_vs_sgd" in r:  # records from before the torch.optim reference have only the first
        out.append(target("SL2O meta-test step / torch.optim SGD step", r["ours_vs_sgd"], 1.03))
    return out


def run(*, quick: bool, device: str) -> dict:
    batch = 32 if quick else 128
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    flat = FlatModel(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device))
    theta0 = flat.flatten()
    buffers = flat.init_buffers()
    space = random_subspace(flat.dim, 40, origin=theta0, seed=0, device=device)

    def stepper(transform):
        box = {"theta": theta0.clone(), "state": transform.init(theta0), "k": 0}

        def step():
            _, grad = flat.loss_and_grad(box["theta"], (x, y), buffers)
            delta, box["state"] = transform.update(grad, box["state"], box["theta"], box["k"])
            box["theta"] = box["theta"] + delta
            box["k"] += 1
        return step

    ours = stepper(sl2o(LSTMRule().to(device), space))
    fns = {"ours_s": ours, "reference_s": stepper(dagger(momentum(lr=0.1, momentum=0.9), space)),
           "sgd_s": torch_sgd_steps(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device), lambda: (x, y),
                                    momentum=0.9)}
    repeat, rounds = (3, 3) if quick else (10, 5)
    timing = median_times(fns, device=device, warmup=2, repeat=repeat, rounds=rounds)
    out = {**timing, "ours_vs_momentum_dagger": timing["ours_s"] / timing["reference_s"],
           "ours_vs_sgd": timing["ours_s"] / timing["sgd_s"],
           "momentum_dagger_vs_sgd": timing["reference_s"] / timing["sgd_s"], "batch": batch, "d": 40}
    return {**out, "targets": targets(out)}
