"""One L3RS step vs one Adam step on the same model and batch (issue 7: ``ours_s <= 1.2 x`` Adam).

Both are the body of a flat-parameter training loop: ``loss_and_grad`` on the flat parameters,
the transform's update and ``theta + delta``. L3RS adds Adam's direction plus SGD's, one
``index_add`` for all per-layer norms, the shared MLP on an ``(L, F)`` feature matrix and one
gather to mix the normalised directions back per entry; the forward/backward is shared. The
model is a ResNet-20 (``quick``: batch 32; full: batch 128) in eval mode, as fine-tuning runs.
``ratio = reference_s / ours_s`` (``>= 0.83`` meets the target); the record's target is ``ours_vs_adam <= 1.2``.
"""


import torch

from l2o_lib.benchmark import median_times, target
from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import L3RSConfig, init_phi, l3rs
from l2o_lib.models import build_model
from l2o_lib.optim import adam


def targets(r: dict) -> list[dict]:
    """The issue's target, from the record's fields."""
    return [target("L3RS step / Adam step", r["ours_vs_adam"], 1.2)]


def run(*, quick: bool, device: str) -> dict:
    batch = 32 if quick else 128
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    module = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).eval()
    flat = FlatModel(module)
    theta0 = flat.flatten()
    config = L3RSConfig(n_layers=len(flat.segments()), base_lr=1e-3)
    phi = init_phi(config).to(device)

    def stepper(transform, takes_loss):
        box = {"theta": theta0.clone(), "state": transform.init(theta0), "k": 0}

        def step():
            loss, grad = flat.loss_and_grad(box["theta"], (x, y), train=False)
            extra = {"loss": loss} if takes_loss else {}
            delta, box["state"] = transform.update(grad, box["state"], box["theta"], box["k"], **extra)
            box["theta"] = box["theta"] + delta
            box["k"] += 1
        return step

    steps = 10_000
    ours = stepper(l3rs(phi, config, total_steps=steps, segments=flat.segments()), True)
    ref = stepper(adam(1e-3), False)
    repeat, rounds = (3, 3) if quick else (10, 5)
    timing = median_times({"ours_s": ours, "reference_s": ref}, device=device, warmup=2, repeat=repeat, rounds=rounds)
    out = {**timing, "ours_vs_adam": timing["ours_s"] / timing["reference_s"], "batch": batch,
           "layers": config.n_layers, "params": flat.dim}
    return {**out, "targets": targets(out)}
