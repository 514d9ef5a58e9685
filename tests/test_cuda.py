"""The GPU paths: meta-training and the landscape grid with data and state on a CUDA device.

Skipped (not removed) without a GPU; CI has none. The same code runs on the CPU in the other test
files; here the device changes and the properties must still hold: the vmapped population equals the
member loop, the grid equals the CPU's grid, MLR-SNet training lowers the loss, SL2O meta-training
stays finite.
(``tests/test_fused.py`` holds the CUDA tests of the fused SL2O step.)
"""

import numpy as np
import pytest
import torch

from l2o_lib.data import ArrayData
from l2o_lib.finetuning import FinetuneTask
from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import L3RSConfig, init_phi, population_losses
from l2o_lib.landscape import grid, random_plane
from l2o_lib.mlrsnet import meta_train as mlrsnet_meta_train
from l2o_lib.models import build_model
from l2o_lib.sl2o import LSTMRule, Problem, meta_train as sl2o_meta_train
from l2o_lib.subspace import random_subspace

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _toy(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    model = FlatModel(build_model("mlp", (8,), 3, seed=0, hidden=(16,)).to(device))
    return model, ArrayData(x.to(device), y.to(device))


def test_landscape_grid_on_cuda_equals_the_cpu():
    out = {}
    for device in ("cpu", "cuda"):
        model, data = _toy(device)
        plane = random_plane(model, model.flatten(), seed=0)
        out[device] = grid(model, plane, data.x, data.y, resolution=5, chunk_size=8)
    np.testing.assert_allclose(out["cuda"].loss, out["cpu"].loss, rtol=1e-4, atol=1e-5)


def test_l3rs_population_on_cuda_vmap_equals_the_member_loop():
    model, data = _toy("cuda")
    config = L3RSConfig(n_layers=len(model.segments()))
    phis = init_phi(config, seed=0).cuda() + 0.01 * torch.randn(4, config.dim, device="cuda")
    task = FinetuneTask(model.flatten(), data, data, [0, 1, 2], 0)
    vmapped = population_losses(model, phis, config, task, steps=5, batch_size=32)
    looped = population_losses(model, phis, config, task, steps=5, batch_size=32, vectorize=False)
    assert vmapped.is_cuda
    torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-5)


def test_mlrsnet_meta_training_on_cuda_lowers_the_loss():
    model, data = _toy("cuda")
    train, val = data.subset(torch.arange(384, device="cuda")), data.subset(torch.arange(384, 512, device="cuda"))
    result = mlrsnet_meta_train(model, train, val, steps=200, num_classes=3, t_val=20, batch_size=64,
                                val_batch_size=64, desc=None)
    loss = result.history.train_loss
    assert np.isfinite(loss).all() and loss[-20:].mean() < 0.8 * loss[:20].mean()


def test_sl2o_meta_training_on_cuda_with_the_fused_step_stays_finite():
    model, data = _toy("cuda")
    space = random_subspace(model.dim, 6, origin=model.flatten(), seed=0, device="cuda")
    problem = Problem(model, (data.x, data.y), 64, space)
    rule = LSTMRule(seed=0, scale=0.3)
    history = sl2o_meta_train(rule, problem, epochs=3, steps_per_task=50, unroll=10, fused=True, desc=None)
    assert next(rule.parameters()).is_cuda
    assert np.isfinite(history.meta_loss).all() and not history.events
