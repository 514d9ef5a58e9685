"""One NES generation of L3RS: the population's inner fine-tuning runs vmapped vs one member after another.

The same :func:`l2o_lib.l3rs.population_losses` call with ``vectorize=True`` (each inner step of
all ``2 * pairs`` members is one ``vmap``-ed gradient + L3RS update) and ``vectorize=False`` (the
reference: a Python loop over members with the same step function). The task is the quick
profile's: an MLP (100, 100) pretrained on 4 MNIST-1D classes, fine-tuned on 3 others. Issue 7's
target is ``>= 10x`` on a GPU; a 2-core CPU gains far less (the per-member work is already
vectorised over the batch). ``ratio = reference_s / ours_s``; the record's target is ``speedup_vmap >= 10``
on a GPU.
"""

from l2o_lib.benchmark import median_times, target
from l2o_lib.data import load_dataset
from l2o_lib.finetuning import TaskFamily, pretrain_backbone
from l2o_lib.l3rs import L3RSConfig, init_phi, population_losses
from l2o_lib.meta import antithetic_noise, nes_members


def targets(r: dict) -> list[dict]:
    """The issue's target, from the record's fields."""
    return [target("NES generation speed-up, vmap vs sequential members", r["speedup_vmap"], 10, ">=", "cuda")]


def run(*, quick: bool, device: str) -> dict:
    data = load_dataset("mnist1d", device=device)
    backbone = pretrain_backbone("mlp", data, [0, 1, 2, 3], steps=300, lr=3e-3, desc=None)
    family = TaskFamily(data, "mlp", backbone, {"train": [4, 5, 6], "test": [7, 8, 9]}, k=3, n_train=600)
    config = L3RSConfig(n_layers=len(family.layer_names), base_lr=1e-2)
    pairs = 8 if quick else (16 if device == "cpu" else 64)
    steps = 10 if quick else 50
    phi = init_phi(config).to(device)
    members = nes_members(phi, antithetic_noise(pairs, config.dim, seed=0, generation=0, device=device), 0.1)
    task = family.sample("train", 0)

    def generation(vectorize):
        return lambda: population_losses(family.model, members, config, task, steps=steps, batch_size=64,
                                         vectorize=vectorize)

    # one warm-up call each: the first vmap call pays one-off set-up costs
    timing = median_times({"ours_s": generation(True), "reference_s": generation(False)}, device=device,
                          rounds=1 if quick else 3)
    out = {**timing, "population": 2 * pairs, "inner_steps": steps, "speedup_vmap": timing["reference_s"] / timing["ours_s"]}
    return {**out, "targets": targets(out)}
