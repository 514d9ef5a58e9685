"""Hooks of the torch.optim training loop: losses, closure and per-step callbacks."""

import torch
from torch import nn

from l2o_lib.data import ArrayData, BatchSampler
from l2o_lib.training import train_module


class Recording(torch.optim.SGD):
    """SGD that remembers what its closure returned."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.seen = []

    def step(self, closure=None):
        loss = super().step(closure)
        self.seen.append(None if loss is None else float(loss))
        return loss


def setup():
    torch.manual_seed(0)
    data = ArrayData(torch.randn(64, 5), torch.randint(0, 3, (64,)))
    return nn.Linear(5, 3), BatchSampler(data, 16, seed=0)


def test_hooks_see_each_loss_and_each_updated_module():
    net, sampler = setup()
    opt = Recording(net.parameters())
    losses, snapshots = [], []
    h = train_module(net, opt, sampler, steps=6, on_loss=lambda loss: losses.append(float(loss)), loss_closure=True,
                     on_step=lambda k, module: snapshots.append((k, module.weight.detach().clone())))
    assert losses == [float(v) for v in h.train_loss]
    assert opt.seen == losses                          # the closure returns the computed loss
    assert [k for k, _ in snapshots] == list(range(1, 7))
    assert torch.equal(snapshots[-1][1], net.weight.detach())
    assert not torch.equal(snapshots[0][1], snapshots[-1][1])


def test_without_closure_the_run_is_unchanged():
    net_a, sampler_a = setup()
    train_module(net_a, Recording(net_a.parameters()), sampler_a, steps=5)
    net_b, sampler_b = setup()
    train_module(net_b, Recording(net_b.parameters()), sampler_b, steps=5, loss_closure=True)
    assert torch.equal(net_a.weight, net_b.weight)
