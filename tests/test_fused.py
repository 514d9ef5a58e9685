"""The fused SL2O step (``l2o_lib.rnnprop.fused_rnnprop``) against the module path it replaces: same steps, same
state, same meta-gradients, eager and compiled, on the CPU and (when there is one) on CUDA."""

import pytest
import torch

from l2o_lib.data import load_dataset
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.rnnprop import LSTMRule, fused_rnnprop, rnnprop
from l2o_lib.sl2o import SL2O, Problem, meta_train, run_task
from l2o_lib.subspace import random_subspace

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def unroll(rule, grads, **kwargs):
    """Steps of ``rnnprop(rule, **kwargs)`` over ``grads``, its final state and the gradient of
    ``Σ‖step‖²`` with respect to the rule's weights (the meta-gradient path)."""
    tx = rnnprop(rule, differentiable=True, **kwargs)
    state, deltas = tx.init(grads[0]), []
    for k, g in enumerate(grads):
        delta, state = tx.update(g, state, None, k)
        deltas.append(delta)
    loss = sum((d * d).sum() for d in deltas)
    return torch.stack(deltas), state, torch.autograd.grad(loss, list(rule.parameters()))


def assert_same(a, b, *, rtol, atol):
    (da, sa, ga), (db, sb, gb) = a, b
    torch.testing.assert_close(da, db, rtol=rtol, atol=atol)
    for x, y in zip(sa, sb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def grads(shape, n=6, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device) for _ in range(n)]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("shape", [(40,), (3, 7)])
def test_eager_fused_step_equals_the_module_path(layers, shape):
    rule = LSTMRule(hidden=8, layers=layers, scale=0.5, seed=layers)
    gs = grads(shape)
    assert_same(unroll(rule, gs), unroll(rule, gs, fused=True, compile="never"), rtol=1e-5, atol=1e-6)


def test_fused_step_is_not_the_module_path_of_another_rule():
    # the comparison above can fail: a rule with other weights gives other steps
    gs = grads((40,))
    a = unroll(LSTMRule(seed=0), gs)[0]
    b = unroll(LSTMRule(seed=1), gs, fused=True, compile="never")[0]
    assert not torch.allclose(a, b, atol=1e-6)


def test_fused_meta_test_step_builds_no_graph():
    rule = LSTMRule(seed=0)
    tx = rnnprop(rule, fused=True, compile="never")
    g = torch.randn(40)
    delta, state = tx.update(g, tx.init(g), None, 0)
    assert not delta.requires_grad and not state.carry.requires_grad


def test_fused_validation():
    with pytest.raises(ValueError, match="LSTMRule"):
        fused_rnnprop(lambda g, f, c: (g, c))
    with pytest.raises(ValueError, match="compile"):
        fused_rnnprop(LSTMRule(), compile="sometimes")
    with pytest.raises(ValueError, match="betas"):
        rnnprop(LSTMRule(), fused=True, betas=(0.9, 1.0))


def _problem():
    data = load_dataset("logistic", n_train=256, n_test=64, dim=10, seed=0)
    model = FlatModel(build_model("mlp", data.input_shape, data.num_classes, hidden=(16,), seed=0))
    space = random_subspace(model.dim, 6, origin=model.flatten(), seed=0)
    return Problem(model, (data.train.x, data.train.y), 32, space, val=(data.test.x, data.test.y))


def test_meta_training_with_the_fused_step_follows_the_module_path():
    problem, rules, histories = _problem(), {}, {}
    for fused in (False, True):
        rules[fused] = LSTMRule(seed=0, scale=0.3)
        histories[fused] = meta_train(rules[fused], problem, epochs=2, steps_per_task=20, unroll=5, fused=fused,
                                      desc=None)
    torch.testing.assert_close(histories[True].meta_loss, histories[False].meta_loss, rtol=1e-4, atol=1e-6)
    for a, b in zip(rules[False].parameters(), rules[True].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_torch_optim_adapter_with_the_fused_step():
    steps = {}
    for fused in (False, True):
        torch.manual_seed(0)
        net = torch.nn.Linear(5, 3)
        opt = SL2O(net.parameters(), LSTMRule(seed=0), fused=fused)
        for k in range(4):
            opt.zero_grad()
            net(torch.full((2, 5), 0.1 * (k + 1))).pow(2).sum().backward()
            opt.step()
        steps[fused] = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    torch.testing.assert_close(steps[True], steps[False], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_compiled_step_equals_the_eager_one_on_the_cpu():
    # inductor's C++ code on the CPU: the same kernels CUDA gets, as Triton, on a GPU
    from torch._dynamo.utils import counters

    rule = LSTMRule(seed=0, scale=0.5)
    gs = grads((3, 40), n=4)
    eager = unroll(rule, gs, fused=True, compile="never")
    counters.clear()
    compiled = unroll(rule, gs, fused=True, compile="always")
    # dynamo really compiled the step (a fallback to eager would make the comparison vacuous)
    assert counters["stats"]["unique_graphs"] >= 1
    assert_same(eager, compiled, rtol=1e-4, atol=1e-6)


@cuda
@pytest.mark.cuda
def test_compiled_step_on_cuda_equals_the_module_path():
    rule = LSTMRule(seed=0, scale=0.5).cuda()
    gs = grads((3, 40), n=4, device="cuda")
    assert_same(unroll(rule, gs), unroll(rule, gs, fused=True), rtol=1e-4, atol=1e-6)  # auto: compiled on CUDA


@cuda
@pytest.mark.cuda
def test_sl2o_meta_training_unroll_on_cuda_equals_the_cpu():
    meta_losses = {}
    for device in ("cpu", "cuda"):
        problem = _problem()
        model = FlatModel(problem.model.module.to(device))
        space = random_subspace(model.dim, 6, origin=model.flatten(), seed=0, device=device)
        x, y = (t.to(device) for t in problem.train)
        p = Problem(model, (x, y), 32, space)
        order = torch.Generator().manual_seed(0)  # the same batches on both devices

        def same_batches(generator, k, x=x, y=y, device=device):
            index = torch.randint(len(x), (k, 32), generator=order).to(device)
            return x[index], y[index]

        p.batches = same_batches
        rule = LSTMRule(seed=0, scale=0.3).to(device)
        meta_opt = torch.optim.Adam(rule.parameters(), lr=1e-2)
        seen = []

        def on_unroll(value, objective):
            meta_opt.zero_grad()
            objective.backward()
            meta_opt.step()
            seen.append(value)
            return True

        run_task(p, rnnprop(rule, differentiable=True, fused=True), torch.Generator(device=device), steps=20,
                 unroll=5, tasks=1, first_order=True, on_unroll=on_unroll)
        meta_losses[device] = torch.stack(seen).cpu()
    torch.testing.assert_close(meta_losses["cuda"], meta_losses["cpu"], rtol=1e-3, atol=1e-4)
