"""FlatModel: layout, views, gradients, BatchNorm buffers, batched evaluation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from l2o_lib.functional import FlatModel


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 1, 8, 8, generator=g), torch.randint(3, (16,), generator=g)


def test_flatten_unflatten_round_trip_and_views():
    fm = FlatModel(small_cnn())
    theta = fm.flatten()
    assert theta.shape == (sum(p.numel() for p in fm.module.parameters()),) == (fm.dim,)
    parts = fm.unflatten(theta)
    for (name, p) in fm.module.named_parameters():
        assert torch.equal(parts[name], p)
        assert parts[name].data_ptr() >= theta.data_ptr()  # a view into theta, not a copy
    parts["0.weight"].zero_()
    assert theta[: fm.numels[0]].abs().sum() == 0


def test_load_writes_into_module():
    fm = FlatModel(small_cnn())
    theta = torch.randn(fm.dim)
    fm.load(theta)
    assert torch.equal(fm.flatten(), theta)


def test_loss_and_grad_match_module_autograd(batch):
    model = small_cnn()
    fm = FlatModel(small_cnn())
    theta = fm.flatten()
    buffers = fm.init_buffers()
    loss, g = fm.loss_and_grad(theta, batch, buffers)
    model.train()
    ref_loss = F.cross_entropy(model(batch[0]), batch[1])
    ref_loss.backward()
    ref_g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    assert torch.allclose(loss, ref_loss) and torch.allclose(g, ref_g, atol=1e-6)
    # train mode updated our buffers exactly as the module updated its own, and not the module of fm
    assert torch.allclose(buffers["1.running_mean"], model[1].running_mean)
    assert fm.module[1].running_mean.abs().sum() == 0
    assert fm.module.training  # the mode switch was undone


def test_create_graph_gives_second_order(batch):
    fm = FlatModel(nn.Linear(64, 3))
    x, y = batch[0].flatten(1), batch[1]
    theta = fm.flatten().requires_grad_(True)
    _, g = fm.loss_and_grad(theta, (x, y), create_graph=True)
    (hv,) = torch.autograd.grad(g @ torch.ones_like(g), theta)
    assert hv.abs().sum() > 0


def test_batched_loss_equals_loop(batch):
    fm = FlatModel(small_cnn())
    base = fm.flatten()
    thetas = base + 0.1 * torch.randn(5, fm.dim, generator=torch.Generator().manual_seed(1))
    batched = fm.batched_loss(thetas, batch, chunk_size=2)
    loop = torch.stack([fm.loss(t, batch, train=False) for t in thetas])
    assert torch.allclose(batched, loop, atol=1e-5)
    assert fm.module[1].running_mean.abs().sum() == 0  # eval mode: nothing written


def test_evaluate_accuracy(batch):
    fm = FlatModel(small_cnn())
    theta = fm.flatten()
    out = fm.evaluate(theta, *batch, batch_size=5)
    logits = fm.apply(theta, batch[0])
    assert out["accuracy"].item() == pytest.approx((logits.argmax(-1) == batch[1]).float().mean().item())
    assert out["loss"].item() == pytest.approx(F.cross_entropy(logits, batch[1]).item(), rel=1e-5)


def test_wrong_size_theta_is_rejected(batch):
    fm = FlatModel(small_cnn())
    with pytest.raises(ValueError, match=rf"theta has shape \(7,\); this model needs \({fm.dim},\)"):
        fm.loss(torch.zeros(7), batch)
    with pytest.raises(ValueError, match="theta"):
        fm.batched_loss(torch.zeros(fm.dim), batch)
    with pytest.raises(ValueError, match="module"):
        FlatModel("not a module")


def test_batched_evaluate_equals_loop(batch):
    fm = FlatModel(small_cnn())
    thetas = fm.flatten() + 0.2 * torch.randn(4, fm.dim, generator=torch.Generator().manual_seed(2))
    many = fm.batched_evaluate(thetas, *batch, batch_size=5, chunk_size=3)
    for k, theta in enumerate(thetas):
        one = fm.evaluate(theta, *batch, batch_size=7)
        assert many["loss"][k].item() == pytest.approx(one["loss"].item(), rel=1e-5)
        assert many["accuracy"][k].item() == pytest.approx(one["accuracy"].item())


def test_batched_evaluate_of_one_row_equals_evaluate(batch):
    fm = FlatModel(small_cnn())
    theta = fm.flatten()
    one = fm.batched_evaluate(theta[None], *batch)
    ref = fm.evaluate(theta, *batch)
    assert one["loss"].shape == (1,) and one["loss"][0].item() == pytest.approx(ref["loss"].item())


def _functional(fm, theta, batch, buffers=None, train=True):
    """The functional_call-over-views path, forced by a theta that requires grad."""
    loss, g = fm.loss_and_grad(theta.clone().requires_grad_(True), batch, buffers, train=train)
    return loss.detach(), g


@pytest.mark.parametrize("train", [True, False])
def test_leaf_path_equals_the_functional_path(batch, train):
    fm = FlatModel(small_cnn())
    theta = fm.flatten() + 0.01 * torch.randn(fm.dim, generator=torch.Generator().manual_seed(1))
    before = fm.flatten()
    buf_leaf, buf_func = fm.init_buffers(), fm.init_buffers()
    for _ in range(3):
        loss_a, g_a = fm.loss_and_grad(theta, batch, buf_leaf, train=train)
        loss_b, g_b = _functional(fm, theta, batch, buf_func, train=train)
        torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(g_a, g_b, rtol=1e-5, atol=1e-7)
        theta = theta - 0.1 * g_a
    for k in buf_leaf:  # BatchNorm statistics move in the caller's buffers, the same way
        torch.testing.assert_close(buf_leaf[k], buf_func[k])
    assert train == (not torch.equal(buf_leaf["1.running_mean"], fm.init_buffers()["1.running_mean"]))
    assert torch.equal(fm.flatten(), before)  # the module's own weights are never written


def test_leaf_path_updates_the_modules_own_buffers_when_none_are_given(batch):
    fm_a, fm_b = FlatModel(small_cnn()), FlatModel(small_cnn())
    theta = fm_a.flatten()
    fm_a.loss_and_grad(theta, batch)
    _functional(fm_b, theta, batch)
    torch.testing.assert_close(fm_a.module[1].running_mean, fm_b.module[1].running_mean)
    assert not torch.equal(fm_a.module[1].running_mean, torch.zeros(4))


def test_leaf_path_follows_the_module_to_another_dtype_and_its_frozen_weights(batch):
    fm = FlatModel(small_cnn())
    fm.module[4].bias.requires_grad_(False)  # frozen after the layout was taken: read, not trained
    fm = FlatModel(fm.module)
    fm.loss_and_grad(fm.flatten(), batch)
    with torch.no_grad():
        fm.module[4].bias.add_(torch.arange(3.0))  # the next call sees the frozen weight's new value
    torch.testing.assert_close(fm.loss_and_grad(fm.flatten(), batch)[0], _functional(fm, fm.flatten(), batch)[0])
    fm.module.double()
    x, y = batch
    loss, g = fm.loss_and_grad(fm.flatten(), (x.double(), y))
    assert g.dtype == torch.float64 and loss.dtype == torch.float64
    torch.testing.assert_close(g, _functional(fm, fm.flatten(), (x.double(), y))[1])


def test_leaf_path_trains_what_the_layout_holds_even_if_requires_grad_changed_since(batch):
    fm = FlatModel(small_cnn())
    fm.module[0].weight.requires_grad_(False)  # after the layout was taken: still part of theta
    g = fm.loss_and_grad(fm.flatten(), batch)[1]
    torch.testing.assert_close(g, _functional(fm, fm.flatten(), batch)[1])
    assert g[: fm.numels[0]].abs().sum() > 0
