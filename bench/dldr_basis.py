"""DLDR's basis on checkpoints of ResNet-20's size (D = 269,722).

ours:      ``l2o_lib.subspace.dldr`` (blockwise float64 Gram matrix of the centred checkpoints,
           ``eigh`` of the t × t matrix, ``u_i = W v_i / σ_i``), checkpoints on the device.
reference: scikit-learn ``PCA(n_components=d).fit`` on the same checkpoints as a numpy array
           (its default solver choice; ``random_state=0``).
Also ``sgd_step_s``: one ``torch.optim.SGD`` step of ResNet-20 at batch 128 on CIFAR-shaped random
data, and ``ratio_vs_sgd_step = ours_s / sgd_step_s`` (issue 10's target: ≤ 1, for 81 checkpoints).

The checkpoints are a random walk (cumulative sums of random steps from a random start, so the
trajectory has structure), generated once: t = 81, d = 40 (t = 31, d = 30 in quick mode, since
d ≤ t - 1).
"""

import torch
from sklearn.decomposition import PCA

from l2o_lib.benchmark import compare, target, time_per_call, torch_sgd_steps
from l2o_lib.models import build_model, count_parameters
from l2o_lib.subspace import dldr


def targets(r: dict) -> list[dict]:
    """The issue's target, from the record's fields (named with the checkpoints actually used)."""
    return [target(f"DLDR basis from {r['checkpoints']} checkpoints / SGD step", r["ratio_vs_sgd_step"], 1.0)]


def run(*, quick: bool, device: str) -> dict:
    t = 31 if quick else 81
    d = min(40, t - 1)
    model = build_model("resnet20", (3, 32, 32), 10, seed=0).to(device).train()
    D = count_parameters(model)

    g = torch.Generator().manual_seed(0)
    start = 0.1 * torch.randn(D, generator=g)
    checkpoints = (start + (0.01 * torch.randn(t, D, generator=g)).cumsum(0)).to(device)
    array = checkpoints.cpu().numpy()

    def ours():
        dldr(checkpoints, d)

    fitted = {}

    def reference():
        fitted["pca"] = PCA(n_components=d, random_state=0).fit(array)

    timing = compare(ours, reference, device=device, warmup=1, repeat=2 if quick else 3,
                     rounds=2 if quick else 3)

    # One SGD step of ResNet-20, batch 128, CIFAR-shaped data resident on the device.
    x = torch.randn(128, 3, 32, 32, generator=g).to(device)
    y = torch.randint(10, (128,), generator=g).to(device)
    sgd_step_s = time_per_call(torch_sgd_steps(model, lambda: (x, y)), device=device, warmup=1, repeat=3 if quick else 10)
    out = {**timing, "sgd_step_s": sgd_step_s, "ratio_vs_sgd_step": timing["ours_s"] / sgd_step_s,
           "checkpoints": t, "d": d, "parameters": D,
           "reference_solver": getattr(fitted["pca"], "_fit_svd_solver", "unknown")}
    return {**out, "targets": targets(out)}
