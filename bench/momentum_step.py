"""One training step of Momentum on ResNet-20 with CIFAR-shaped data.

ours:      FlatModel + the pure ``momentum`` transform, data resident on the device and batches
           drawn by index (``BatchSampler.sample``), parameters one flat vector.
reference: the usual script: ``torch.optim.SGD(momentum=0.9)`` on the module, batches from a
           ``DataLoader`` over a ``TensorDataset`` (shuffle, default collate), ``.to(device)``
           every step.
Same model, batch size and data; seconds per step, warm-up excluded. No target: this is the measure of
what the functional path costs against ``torch.optim`` (the README's known weakness).
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from l2o_lib.benchmark import compare
from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import momentum


def targets(r: dict) -> list[dict]:
    """None: issue 10 sets no target for this case."""
    return []


def run(*, quick: bool, device: str) -> dict:
    batch, n = 128, (1024 if quick else 10000)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(10, (n,), generator=g)

    # ours
    flat = FlatModel(build_model("resnet20", (3, 32, 32), 10, seed=0).to(device))
    sampler = BatchSampler(ArrayData(x.to(device), y.to(device)), batch, seed=0)
    tx = momentum(lr=0.1, momentum=0.9)
    theta = flat.flatten()
    buffers = flat.init_buffers()
    box = {"theta": theta, "state": tx.init(theta), "step": 0}

    def ours():
        _, grad = flat.loss_and_grad(box["theta"], sampler.sample(), buffers)
        delta, box["state"] = tx.update(grad, box["state"], box["theta"], box["step"])
        box["theta"] = box["theta"] + delta
        box["step"] += 1

    # reference
    model = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    it = {"iter": iter(loader)}

    def reference():
        try:
            xb, yb = next(it["iter"])
        except StopIteration:
            it["iter"] = iter(loader)
            xb, yb = next(it["iter"])
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()

    timing = compare(ours, reference, device=device, warmup=1 if quick else 3,
                     repeat=3 if quick else 10, rounds=2 if quick else 3)
    return {**timing, "model": "resnet20", "batch_size": batch, "parameters": flat.dim, "targets": []}
