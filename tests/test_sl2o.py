"""SL2O: the LSTM rule and the RNNprop transform (``l2o_lib.rnnprop``), SGD† as a fixed rule, meta-gradients against
finite differences, the divergence guard in meta-training, resume and transfer (save / load: test_artifacts.py)."""

import pytest
import torch
from torch import nn

from l2o_lib.data import BatchSampler, load_dataset
from l2o_lib.functional import FlatModel
from l2o_lib.models import build_model
from l2o_lib.optim import sgd
from l2o_lib.results import Run
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.sl2o import SELECTION_SEED, SL2O, MetaHistory, Problem, meta_gradient, meta_train, selection_curve, sl2o
from l2o_lib.subspace import dagger, random_subspace
from l2o_lib.training import train_flat, train_module

F64 = torch.float64


class FixedRule:
    """A rule that ignores the features and returns ``lr · g``: SL2O with it is SGD."""

    def __init__(self, lr):
        self.lr = lr

    def init_carry(self, grad):
        return grad.new_zeros(0)

    def __call__(self, grad, features, carry):
        return self.lr * grad, carry


@pytest.fixture(scope="module")
def task():
    data = load_dataset("logistic", n_train=512, n_test=256, dim=10, seed=0)
    return data


def problem(data, *, d=6, hidden=(16,), dtype=torch.float32, seed=0, test=True, batch_size=64):
    net = build_model("mlp", data.input_shape, data.num_classes, hidden=hidden, seed=seed).to(dtype)
    model = FlatModel(net)
    theta0 = model.flatten()
    space = random_subspace(model.dim, d, origin=theta0, seed=seed).to(dtype=dtype)
    train = (data.train.x.to(dtype), data.train.y)
    return Problem(model, train, batch_size, space, val=(data.test.x.to(dtype), data.test.y) if test else None)


def test_reference_size_and_validation():
    rule = LSTMRule()
    assert sum(p.numel() for p in rule.parameters()) == 392   # LSTMCell(2, 8) + Linear(8, 1, no bias)
    with pytest.raises(ValueError, match="hidden"):
        LSTMRule(hidden=0)
    with pytest.raises(ValueError, match="scale"):
        LSTMRule(scale=-1.0)
    with pytest.raises(ValueError, match="betas"):
        rnnprop(rule, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="rule"):
        rnnprop(lambda g, f, c: (g, c))


def test_rule_steps_are_bounded_by_scale_and_shaped_like_grad():
    rule = LSTMRule(hidden=4, layers=2, scale=0.3)
    g = torch.randn(3, 7) * 100
    tx = rnnprop(rule)
    state = tx.init(g)
    assert state.carry.shape == (2, 2, 21, 4)
    delta, state = tx.update(g, state, torch.zeros_like(g), 0)
    assert delta.shape == g.shape and delta.abs().max() <= 0.3
    assert not delta.requires_grad   # meta-test: no graph is built


def test_fixed_rule_reproduces_sgd_dagger_exactly(task):
    p = problem(task)
    kw = dict(steps=25, theta=p.theta0, eval_data=None)
    ours = train_flat(p.model, sl2o(FixedRule(0.5), p.space), BatchSampler(task.train, 32, seed=3), **kw)
    ref = train_flat(p.model, dagger(sgd(lr=0.5), p.space), BatchSampler(task.train, 32, seed=3), **kw)
    assert torch.equal(ours.theta, ref.theta)
    assert torch.equal(torch.as_tensor(ours.train_loss), torch.as_tensor(ref.train_loss))


def test_rnnprop_features_are_the_bias_corrected_moments():
    seen = []

    class Spy(FixedRule):
        def __call__(self, grad, features, carry):
            seen.append(features.clone())
            return super().__call__(grad, features, carry)

    tx = rnnprop(Spy(0.1), betas=(0.9, 0.99), eps=1e-8)
    g1, g2 = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    state = tx.init(g1)
    _, state = tx.update(g1, state, g1, 0)
    _, state = tx.update(g2, state, g1, 1)
    m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9 ** 2)
    v = (0.99 * 0.01 * g1 ** 2 + 0.01 * g2 ** 2) / (1 - 0.99 ** 2)
    torch.testing.assert_close(seen[1][..., 0], m / torch.sqrt(v + 1e-8))
    torch.testing.assert_close(seen[1][..., 1], g2 / torch.sqrt(v + 1e-8))
    torch.testing.assert_close(seen[0][..., 1], g1.sign(), atol=1e-4, rtol=0)   # first step: |g|/√g² = 1


def _finite_difference(rule, p, name, index, *, steps, first_order, h=1e-6):
    param = dict(rule.named_parameters())[name]
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            param.view(-1)[index] += sign * h
        values.append(meta_gradient(rule, p, steps=steps, first_order=first_order, seed=5)[0])
        with torch.no_grad():
            param.view(-1)[index] -= sign * h
    return (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("steps, first_order", [(2, False), (1, True)])
def test_meta_gradient_matches_finite_differences(task, steps, first_order):
    # Second order is the exact derivative of the unrolled loss; first order is exact too when
    # no gradient input depends on the weights (one step).
    p = problem(task, dtype=F64)
    rule = LSTMRule(hidden=4, scale=0.5).to(F64)
    _, grads = meta_gradient(rule, p, steps=steps, first_order=first_order, seed=5)
    for name in ("cells.0.weight_ih", "cells.0.bias_hh", "out.weight"):
        for index in (0, 3):
            fd = _finite_difference(rule, p, name, index, steps=steps, first_order=first_order)
            assert grads[name].view(-1)[index].item() == pytest.approx(fd, rel=1e-4, abs=1e-9), (name, index)


def test_first_order_drops_only_the_gradient_path(task):
    p = problem(task, dtype=F64)
    rule = LSTMRule(hidden=4, scale=0.5).to(F64)
    loss1, g1 = meta_gradient(rule, p, steps=3, first_order=True, seed=1)
    loss2, g2 = meta_gradient(rule, p, steps=3, first_order=False, seed=1)
    assert loss1 == pytest.approx(loss2, rel=1e-12)   # same unrolled losses
    diff = sum((g1[n] - g2[n]).norm() for n in g1) / sum(g2[n].norm() for n in g2)
    assert 0 < diff < 0.5


def test_batched_tasks_equal_a_loop_over_tasks(task):
    p = problem(task)
    z = torch.randn(3, p.dim) * 0.1
    batches = p.batches(torch.Generator().manual_seed(0), 3)
    looped = torch.stack([p.losses(z[i:i + 1], (batches[0][i:i + 1], batches[1][i:i + 1]))[0] for i in range(3)])
    torch.testing.assert_close(p.losses(z, batches), looped)


def test_meta_training_lowers_the_unrolled_loss(task):
    p = problem(task)
    rule = LSTMRule(scale=0.3)
    before = meta_gradient(rule, p, steps=30, seed=123)[0]
    history = meta_train(rule, p, epochs=4, steps_per_task=60, unroll=10, meta_lr=0.01, tasks_per_step=2)
    after = meta_gradient(rule, p, steps=30, seed=123)[0]
    assert after < 0.9 * before
    assert len(history.meta_loss) == 4 * 6 and history.best_epoch is not None
    assert len(history.epoch_val_loss) == 4 and not history.events


def test_guard_rolls_back_an_injected_nan(task):
    p = problem(task)

    class Poisoned(LSTMRule):
        calls = 0

        def forward(self, grad, features, carry):
            type(self).calls += 1
            step, carry = super().forward(grad, features, carry)
            return (step * float("nan") if type(self).calls == 7 else step), carry

    rule = Poisoned(scale=0.3)
    history = meta_train(rule, p, epochs=1, steps_per_task=40, unroll=10)
    assert len(history.events) == 1 and "non-finite" in history.events[0].reason
    assert all(torch.isfinite(v).all() for v in rule.state_dict().values())
    assert all(torch.isfinite(torch.tensor(history.epoch_val_loss)))


def test_guard_gives_up_with_a_clear_error(task):
    p = problem(task)

    class Broken(LSTMRule):
        def forward(self, grad, features, carry):
            step, carry = super().forward(grad, features, carry)
            return step * float("nan"), carry

    with pytest.raises(RuntimeError, match="diverged"):
        meta_train(Broken(), p, epochs=1, steps_per_task=40, unroll=2, patience=3)


def test_checkpoint_and_resume(task, tmp_path):
    p = problem(task)
    run = Run("sl2o", root=tmp_path, params={"x": 1})
    first = LSTMRule()
    meta_train(first, p, epochs=2, steps_per_task=20, unroll=10, run=run)
    assert run.checkpoint_steps == [1, 2]
    resumed = LSTMRule()
    history = meta_train(resumed, p, epochs=3, steps_per_task=20, unroll=10, run=Run("sl2o", root=tmp_path))
    assert len(history.meta_loss) == 6 and len(history.epoch_val_loss) == 3
    straight = LSTMRule()
    meta_train(straight, p, epochs=3, steps_per_task=20, unroll=10)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_keeps_the_guards_reference_loss(task, tmp_path):
    # explode < 1 makes the first accepted meta-loss decide every later step: a resumed run that
    # forgot it would take its own first unroll as the reference and accept what the run refused.
    p = problem(task)
    kwargs = dict(steps_per_task=20, unroll=10, explode=0.995, patience=50)
    straight = LSTMRule()
    whole = meta_train(straight, p, epochs=3, **kwargs)
    meta_train(LSTMRule(), p, epochs=1, run=Run("ref", root=tmp_path, params={"x": 1}), **kwargs)
    resumed = LSTMRule()
    history = meta_train(resumed, p, epochs=3, run=Run("ref", root=tmp_path, params={"x": 1}), **kwargs)
    assert len(whole.events) >= 2 and history.events == whole.events
    assert history.meta_loss == whole.meta_loss and history.epoch_val_loss == whole.epoch_val_loss
    assert history.best_epoch == whole.best_epoch
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        assert torch.equal(a, b)


def test_a_run_resumes_only_with_the_selection_it_started_with(task, tmp_path):
    p = problem(task)
    meta_train(LSTMRule(), p, epochs=1, steps_per_task=10, unroll=10, select="final_val",
               run=Run("sel", root=tmp_path, params={"x": 1}))
    with pytest.raises(ValueError, match="select='mean_val' cannot resume.*select='final_val'"):
        meta_train(LSTMRule(), p, epochs=2, steps_per_task=10, unroll=10, run=Run("sel", root=tmp_path))
    history = meta_train(LSTMRule(), p, epochs=2, steps_per_task=10, unroll=10, select="final_val",
                         run=Run("sel", root=tmp_path))
    assert len(history.epoch_val_loss) == 2 and history.epoch_val_mean == []


def test_fewer_epochs_than_the_run_holds_is_refused(task, tmp_path):
    p = problem(task)
    meta_train(LSTMRule(), p, epochs=3, steps_per_task=10, unroll=10, run=Run("few", root=tmp_path, params={"x": 1}))
    with pytest.raises(ValueError, match="epochs=2 is smaller than the 3 the run already holds"):
        meta_train(LSTMRule(), p, epochs=2, steps_per_task=10, unroll=10, run=Run("few", root=tmp_path))
    history = meta_train(LSTMRule(), p, epochs=3, steps_per_task=10, unroll=10, run=Run("few", root=tmp_path))
    assert len(history.epoch_val_loss) == 3   # the finished run itself still loads


@pytest.mark.parametrize("select", ["final_val", "mean_val"])
def test_an_epoch_is_scored_by_the_rule_it_ended_with(task, select):
    p = problem(task)

    class PoisonedLastUnroll(LSTMRule):
        calls = 0

        def forward(self, grad, features, carry):
            type(self).calls += 1
            step, carry = super().forward(grad, features, carry)
            return (step * float("nan") if type(self).calls == 15 else step), carry

    rule = PoisonedLastUnroll(scale=0.3)
    history = meta_train(rule, p, epochs=1, steps_per_task=20, unroll=10, select=select)
    assert [e.step for e in history.events] == [1]   # the second and last unroll was refused
    # The epoch ended with the rule rolled back to after the first unroll: score that rule, on the
    # epoch's own task (final_val) or on the fixed selection task (mean_val).
    plain = LSTMRule(scale=0.3)
    plain.load_state_dict(rule.state_dict())
    order = 0 if select == "final_val" else SELECTION_SEED
    ended = train_flat(p.model, sl2o(plain, p.space), _TaskBatches(p, seed=order), steps=20, theta=p.space.origin)
    start = p.model.evaluate(p.space.origin, *p.val)["loss"]
    expected = float(p.model.evaluate(ended.theta, *p.val)["loss"])
    assert history.epoch_val_loss == [pytest.approx(expected, rel=1e-5)] and expected != pytest.approx(float(start))


def test_mean_val_selects_the_epoch_with_the_lowest_mean_validation_loss(task):
    p = problem(task)
    rule = LSTMRule(scale=0.3, seed=1)
    history = meta_train(rule, p, epochs=4, steps_per_task=30, unroll=10, meta_lr=0.03)
    assert len(history.epoch_val_mean) == len(history.epoch_val_loss) == 4
    assert history.best_epoch == min(range(4), key=history.epoch_val_mean.__getitem__)
    assert len(set(history.epoch_val_mean)) > 1   # the epochs differ, so the choice means something
    # the rule handed back is the selected epoch's: its selection run reproduces that epoch's score
    curve, _ = selection_curve(rule, p, steps=30, seed=SELECTION_SEED)
    assert sum(curve) / len(curve) == pytest.approx(history.epoch_val_mean[history.best_epoch], rel=1e-5)
    assert MetaHistory.from_dict(history.as_dict()) == history


def test_mean_val_prefers_the_fast_rule_to_the_one_with_the_lower_end(task, monkeypatch):
    # Epoch 0's rule ends lower but gets there late; epoch 1's is low all along: mean_val keeps epoch 1.
    curves = iter([([1.0, 0.1], 0.9), ([0.2, 0.15], 0.8)])
    monkeypatch.setattr("l2o_lib.sl2o.meta_training.selection_curve", lambda *args, **kwargs: next(curves))
    history = meta_train(LSTMRule(scale=0.3), problem(task), epochs=2, steps_per_task=10, unroll=10)
    assert history.epoch_val_mean == [pytest.approx(0.55), pytest.approx(0.175)]
    assert history.epoch_val_loss == [0.1, 0.15] and history.best_epoch == 1


def test_selection_curve_scores_evenly_spaced_points_of_one_run(task):
    p = problem(task)
    rule = LSTMRule(scale=0.3, seed=2)
    curve, accuracy = selection_curve(rule, p, steps=20, seed=5, points=4)
    ended = [train_flat(p.model, sl2o(rule, p.space), _TaskBatches(p, seed=5), steps=k, theta=p.space.origin).theta
             for k in (5, 10, 15, 20)]
    assert curve == pytest.approx([float(p.model.evaluate(t, *p.val)["loss"]) for t in ended], rel=1e-5)
    assert accuracy == pytest.approx(float(p.model.evaluate(ended[-1], *p.val)["accuracy"]))
    with pytest.raises(ValueError, match="select='best'.*final_val.*mean_val"):
        meta_train(rule, p, epochs=1, steps_per_task=10, unroll=10, select="best")


class _TaskBatches:
    """The batches of meta-training's task ``seed`` (``Problem.batches``, one task), as a sampler."""

    def __init__(self, p, seed):
        self.p, self.generator = p, torch.Generator().manual_seed(seed)

    def sample(self):
        x, y = self.p.batches(self.generator, 1)
        return x[0], y[0]


def test_torch_optim_adapter_matches_the_functional_path(task):
    p = problem(task, test=False)
    rule = LSTMRule(scale=0.3, seed=1)
    ref = train_flat(p.model, sl2o(rule, p.space), BatchSampler(task.train, 32, seed=2), steps=15, theta=p.theta0)
    module = p.model.module
    p.model.load(p.theta0)
    opt = SL2O(module.parameters(), rule, p.space)
    train_module(module, opt, BatchSampler(task.train, 32, seed=2), steps=15)
    torch.testing.assert_close(p.model.flatten(), ref.theta, atol=1e-5, rtol=0)
    # state_dict round trip: a fresh optimizer continues exactly like the original
    state = opt.state_dict()
    twin = SL2O(module.parameters(), rule, p.space)
    twin.load_state_dict(state)
    assert torch.equal(twin.state[next(iter(module.parameters()))]["flat"]["z"],
                       opt.state[next(iter(module.parameters()))]["flat"]["z"])
    with pytest.raises(ValueError, match="subspace"):
        SL2O(nn.Linear(3, 2).parameters(), rule, p.space)


def test_transfer_to_a_model_of_another_size(task):
    source = problem(task, d=6, hidden=(16,))
    rule = LSTMRule(scale=0.3)
    meta_train(rule, source, epochs=1, steps_per_task=30, unroll=10)
    target = problem(task, d=11, hidden=(32, 32), seed=1)
    h = train_flat(target.model, sl2o(rule, target.space), BatchSampler(task.train, 32, seed=0), steps=30,
                   theta=target.theta0)
    assert torch.isfinite(torch.as_tensor(h.train_loss)).all()
    plain = train_flat(target.model, sl2o(rule), BatchSampler(task.train, 32, seed=0), steps=30, theta=target.theta0)
    assert torch.isfinite(torch.as_tensor(plain.train_loss)).all()   # plain L2O: every coordinate


def test_meta_train_validates_before_work(task):
    p = problem(task)
    with pytest.raises(ValueError, match="unroll"):
        meta_train(LSTMRule(), p, steps_per_task=5, unroll=10)
    with pytest.raises(ValueError, match="meta_lr"):
        meta_train(LSTMRule(), p, meta_lr=0)
    with pytest.raises(ValueError, match="rule"):
        meta_train(FixedRule(0.1), p)
    with pytest.raises(ValueError, match="batch_size"):
        Problem(p.model, p.train, 0, p.space)


def test_lora_coordinates_of_a_tiny_vit():
    # SL2O's transformer setting: the rule acts on LoRA factors of the attention projections.
    from l2o_lib.lora import lora_space

    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 8, 8), torch.randint(0, 4, (64,))
    vit = build_model("vit_tiny", (3, 8, 8), 4, seed=0, patch=4, dim=16, depth=1, heads=2)
    model = FlatModel(vit)
    space = lora_space(model, rank=2)
    p = Problem(model, (x, y), 16, space)
    assert p.start().shape == (1, space.dim)
    loss, grads = meta_gradient(LSTMRule(scale=0.1), p, steps=3)
    assert torch.isfinite(torch.tensor(loss)) and any(g.abs().sum() > 0 for g in grads.values())
    from l2o_lib.data import ArrayData
    h = train_flat(model, sl2o(LSTMRule(scale=0.1), space), BatchSampler(ArrayData(x, y), 16, seed=0), steps=5,
                   theta=p.theta0)
    assert torch.isfinite(torch.as_tensor(h.train_loss)).all()


def test_problem_loss_and_grad_equals_autograd_through_the_lift(task):
    p = problem(task, d=6)
    z = p.start(1) + 0.1
    batch = p.batches(torch.Generator().manual_seed(0), 1)
    loss, g = p.loss_and_grad(z, batch)          # one task: the module-autograd path, then P g
    leaf = z.clone().requires_grad_(True)
    want_loss = p.losses(leaf, batch).sum()
    (want,) = torch.autograd.grad(want_loss, leaf)
    torch.testing.assert_close(loss, want_loss.detach())
    torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-7)
    assert g.shape == (1, 6) and not g.requires_grad


def test_problem_from_task_selects_on_the_validation_split_never_test(task):
    from l2o_lib.tasks import make_task

    net = build_model("mlp", task.input_shape, task.num_classes, hidden=(16,), seed=0)
    t = make_task(task, FlatModel(net), n_val=64, seed=0, batch_size=32)
    space = random_subspace(t.model.dim, 4, origin=t.model.flatten(), seed=0)
    p = Problem.from_task(t, space)
    assert torch.equal(p.val[0], t.val.x) and torch.equal(p.train[0], t.train.x) and p.batch_size == 32
    assert len(p.train[0]) == 512 - 64
    assert not hasattr(p, "test")
    with pytest.raises(ValueError, match="task"):
        Problem.from_task((t.train.x, t.train.y), space)


def test_meta_history_reads_checkpoints_from_before_the_rename():
    old = {"meta_loss": [1.0], "epoch_test_loss": [0.5], "epoch_test_accuracy": [0.9], "best_epoch": 0,
           "events": [], "seconds": 1.0, "inner_steps": 10}
    h = MetaHistory.from_dict(old)
    assert h.epoch_val_loss == [0.5] and h.epoch_val_accuracy == [0.9]
    assert MetaHistory.from_dict(h.as_dict()) == h
