"""L3RS's two meta-training protocols (issue 18): the paper's fitness (evaluation-batch loss after a
sampled number of steps) next to ours (mean training loss), the paper's baselines and their selection
by accuracy, speed-ups on accuracy or loss against one chosen baseline, and the Adam share of the mix."""

import numpy as np
import pytest
import torch

from l2o_lib.finetuning import finetune
from l2o_lib.l3rs import (PAPER_LRS, L3RSConfig, baseline_factories, best_baseline, eval_batch, generation_tasks,
                          init_phi, l3rs, make_fitness, population_fitness, population_run, share_ends,
                          speedup_records, tune_baselines)
from l2o_lib.l3rs.fitness import _batch_index
from l2o_lib.training import History

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def family(l3rs_family_parts):
    return l3rs_family_parts[0]


def _phis(cfg, n=3):
    return init_phi(cfg) + 0.05 * torch.randn(n, cfg.dim, generator=torch.Generator().manual_seed(1))


def test_eval_loss_is_the_loss_of_the_final_weights_of_a_run_told_its_length(family):
    cfg = L3RSConfig(n_layers=len(family.model.names), base_lr=1e-2)
    phis, task, steps, batch = _phis(cfg), family.sample("train", 0), 7, 16
    xb, yb = eval_batch(task, 50)
    losses, evals = population_run(family.model, phis, cfg, task, steps=steps, batch_size=batch, eval_batch=(xb, yb))
    assert losses.shape == (3, steps) and evals.shape == (3,)
    # Reference: the pure transform, told T = steps, on the same batches, one member at a time.
    index = _batch_index(task, steps, batch, task.theta0.device)
    for i in range(3):
        tx = l3rs(phis[i], cfg, total_steps=steps, segments=family.model.segments())
        theta = task.theta0.clone()
        state = tx.init(theta)
        for k in range(steps):
            loss, grad = family.model.loss_and_grad(theta, (task.train.x[index[k]], task.train.y[index[k]]), train=False)
            delta, state = tx.update(grad, state, theta, k, loss=loss)
            theta = theta + delta
        expected = family.model.evaluate(theta, xb, yb)["loss"]
        torch.testing.assert_close(evals[i], torch.as_tensor(expected, dtype=evals.dtype), rtol=1e-4, atol=1e-6)
    # Without an evaluation batch there is none, and the losses are population_losses' own.
    assert population_run(family.model, phis, cfg, task, steps=steps, batch_size=batch)[1] is None


def test_the_two_fitness_definitions_and_per_task_lengths(family):
    cfg = L3RSConfig(n_layers=len(family.model.names), base_lr=1e-2)
    phis, tasks = _phis(cfg), [family.sample("train", 0), family.sample("train", 1)]
    ours = population_fitness(family.model, phis, cfg, tasks, steps=5, batch_size=16)
    paper = population_fitness(family.model, phis, cfg, tasks, steps=[3, 6], batch_size=16, fitness="eval_final",
                               eval_size=40)
    expected = -torch.stack([population_run(family.model, phis, cfg, t, steps=k, batch_size=16,
                                            eval_batch=eval_batch(t, 40))[1] for t, k in zip(tasks, (3, 6))]).mean(0)
    torch.testing.assert_close(paper, expected)
    means = -torch.stack([population_run(family.model, phis, cfg, t, steps=5, batch_size=16)[0].mean(1) for t in tasks])
    torch.testing.assert_close(ours, means.mean(0))
    assert not torch.allclose(ours, paper)
    with pytest.raises(ValueError, match="fitness"):
        population_fitness(family.model, phis, cfg, tasks, steps=5, fitness="final_loss")
    with pytest.raises(ValueError, match="steps"):
        population_fitness(family.model, phis, cfg, tasks, steps=[5])


def test_generation_tasks_are_seeded_per_stream_and_lengths_lie_in_the_range(family):
    a_tasks, a_len = generation_tasks(family, 3, count=4, stream=0, steps=20, min_steps=10)
    b_tasks, b_len = generation_tasks(family, 3, count=4, stream=0, steps=20, min_steps=10)
    assert a_len == b_len and all(10 <= k <= 20 for k in a_len) and len(set(a_len)) > 1
    assert all(torch.equal(a.theta0, b.theta0) for a, b in zip(a_tasks, b_tasks))
    other, _ = generation_tasks(family, 3, count=4, stream=1, steps=20, min_steps=10)
    assert [t.seed for t in other] != [t.seed for t in a_tasks]
    assert generation_tasks(family, 3, count=2, stream=0, steps=20)[1] == [20, 20]
    with pytest.raises(ValueError, match="min_steps"):
        generation_tasks(family, 0, count=1, stream=0, steps=5, min_steps=6)
    cfg = L3RSConfig(n_layers=len(family.model.names), base_lr=1e-2)
    fn = make_fitness(family, cfg, fitness="eval_final", steps=6, min_steps=3, batch_size=16, eval_size=40)
    assert fn(_phis(cfg), 0).shape == (3,)
    with pytest.raises(ValueError, match="fitness"):
        make_fitness(family, cfg, fitness="nope", steps=6)


def test_paper_baselines_and_selection_by_accuracy(family):
    assert PAPER_LRS == (1e-5, 1e-4, 1e-3)
    paper = baseline_factories(10, family.head_mask(), sgd=False)
    assert "SGD-momentum (cosine)" not in paper and "Adam (const, head)" in paper
    # At lr 1e-7 nothing moves (chance accuracy); the accuracy criterion must prefer 0.03 by maximising.
    factories = {"Adam (const)": paper["Adam (const)"]}
    tuned = tune_baselines(family, factories, (1e-7, 0.03), seeds=[0, 1], steps=15, batch_size=16,
                           criterion="final_accuracy", desc=None)
    assert tuned["Adam (const)"]["lr"] == 0.03 and tuned["Adam (const)"]["maximize"]
    scores = tuned["Adam (const)"]["scores"]
    assert scores[0.03] > scores[1e-7]
    with pytest.raises(ValueError, match="criterion"):
        tune_baselines(family, factories, (0.03,), seeds=[0], steps=5, criterion="accuracy")


def test_best_baseline_uses_the_score_of_each_chosen_lr():
    low = {"A": {"lr": 2, "scores": {1: 0.5, 2: 0.1}, "maximize": False},
           "B": {"lr": 2, "scores": {1: 0.05, 2: 0.3}, "maximize": False}}
    assert best_baseline(low) == "A"            # B's 0.05 is not at its chosen LR
    high = {"A": {"lr": 1, "scores": {1: 0.7}, "maximize": True}, "B": {"lr": 1, "scores": {1: 0.9}, "maximize": True}}
    assert best_baseline(high) == "B"
    with pytest.raises(ValueError, match="tuned"):
        best_baseline({})


def _hist(loss, acc, steps):
    h = History(np.zeros(steps[-1]), np.asarray(steps), np.asarray(loss, float), np.zeros(len(steps)), 0.0)
    h.extra.update({"test_curve_accuracy": np.asarray(acc, float), "test_accuracy": acc[-1]})
    return h


def test_speedups_on_accuracy_and_loss_against_a_chosen_baseline():
    steps = [0, 2, 4, 6, 8]
    hist = {"base": [_hist([1, .8, .6, .4, .2], [.3, .5, .6, .7, .8], steps)],
            "other": [_hist([1, .1, .1, .1, .1], [.3, .9, .9, .9, .9], steps)],
            "ours": [_hist([1, .5, .2, .1, .1], [.3, .8, .8, .8, .8], steps)]}
    acc = speedup_records(hist, method="ours", baselines=["base"], metric="accuracy", baseline="base")[0]
    assert acc["baseline steps"] == 8 and acc["ours steps"] == 2 and acc["speedup"] == 4.0   # 0.8 reached at step 2
    loss = speedup_records(hist, method="ours", baselines=["base"], metric="loss", baseline="base")[0]
    assert loss["baseline steps"] == 8 and loss["ours steps"] == 4 and loss["speedup"] == 2.0
    # Per-task best (no baseline given): "other" by accuracy; ours never reaches 0.9, a censored None.
    best = speedup_records(hist, method="ours", baselines=["base", "other"], metric="accuracy")[0]
    assert best["best baseline"] == "other" and best["ours steps"] is None and np.isnan(best["speedup"])
    with pytest.raises(ValueError, match="metric"):
        speedup_records(hist, method="ours", baselines=["base"], metric="error")


def test_share_ends_average_over_layers_then_the_first_and_last_tenth():
    cfg = L3RSConfig(n_layers=2, bases=("sgd", "adam"))
    t = np.linspace(0, 1, 20)
    adam = np.stack([1 - t, 1 - t], -1)                    # (T, L): Adam's share falls from 1 to 0
    h = History(np.zeros(20), np.zeros(1), np.zeros(1), np.zeros(1), 0.0)
    h.extra["mu"] = np.stack([1 - adam, adam], -1)          # (T, L, P) in the order of cfg.bases
    (first, last), = share_ends([h], cfg)
    assert first == pytest.approx(1 - t[:2].mean()) and last == pytest.approx(1 - t[-2:].mean())
    with pytest.raises(ValueError, match="fraction"):
        share_ends([h], cfg, fraction=0.0)
    with pytest.raises(ValueError, match="base"):
        share_ends([h], cfg, base="lion")


def test_finetune_test_curve_follows_the_test_split(family):
    task = family.sample("test", 0)
    tx = baseline_factories(8)["Adam (const)"](0.03)
    hist = finetune(family.model, tx, task, steps=8, batch_size=16, eval_every=4, test_curve=True)
    assert hist.extra["test_curve_accuracy"].shape == hist.eval_steps.shape == (3,)
    assert hist.extra["test_curve_accuracy"][-1] == pytest.approx(hist.extra["test_accuracy"])
    assert hist.extra["test_curve_loss"][-1] == pytest.approx(hist.extra["test_loss"], rel=1e-5)
    assert len(hist.val_loss) == 0
    plain = finetune(family.model, tx, task, steps=8, batch_size=16, eval_every=4)
    assert "test_curve_accuracy" not in plain.extra
