"""Notebook 05's teaching figures and knobs: the speed-up of L3RS as a function of the target level, the
mean curve of a metric over runs, and L3RS over a base-optimizer set other than the paper's (the
notebook's ``base_optimizers`` parameter), vmapped as in meta-training."""

import numpy as np
import pytest
import torch

from l2o_lib.claims import speedup_by_seed
from l2o_lib.l3rs import (BASE_LABELS, BASES, L3RSConfig, init_phi, level_targets, metric_curve, population_losses,
                          steps_by_level)
from l2o_lib.training import History

pytestmark = pytest.mark.usefixtures("one_thread")


def _hist(loss, acc, steps):
    h = History(np.zeros(steps[-1]), np.asarray(steps), np.asarray(loss, float), np.zeros(len(steps)), 0.0)
    h.extra.update({"test_curve_accuracy": np.asarray(acc, float), "test_accuracy": acc[-1]})
    return h


STEPS = [0, 2, 4, 6, 8]


def test_level_targets_move_from_the_start_to_the_final_value():
    base = [_hist([1.0, .8, .6, .4, .2], [.2, .4, .6, .7, .8], STEPS)]
    assert level_targets(base, "loss", 1.0) == [pytest.approx(0.2)]
    assert level_targets(base, "loss", 0.5) == [pytest.approx(0.6)]
    assert level_targets(base, "accuracy", 0.25) == [pytest.approx(0.35)]
    # a diverged run: its last finite value is the final one
    assert level_targets([_hist([1.0, .5, np.nan, np.nan, np.nan], [.2] * 5, STEPS)], "loss", 1.0) == [0.5]
    with pytest.raises(ValueError, match="fractions"):
        level_targets(base, "loss", 0.0)


def test_steps_by_level_count_each_level_and_keep_runs_that_never_get_there():
    base = [_hist([1.0, .8, .6, .4, .2], [.2, .4, .6, .7, .8], STEPS)] * 2
    fast = [_hist([1.0, .6, .2, .2, .2], [.2, .6, .8, .8, .8], STEPS)] * 2     # fast early, level at the end
    stuck = [_hist([1.0, .6, .5, .5, .5], [.2, .6, .6, .6, .6], STEPS)] * 2    # fast early, never reaches the end
    hist = {"base": base, "fast": fast, "stuck": stuck}
    rows = steps_by_level(hist, methods={0: "fast", 1: "stuck"}, baseline="base", metric="loss", fractions=(0.5, 1.0))
    # q = 0.5: target 0.6, the baseline there at step 4, both methods at step 2
    assert rows[0]["fraction"] == 0.5 and rows[0]["targets"] == [pytest.approx(0.6)] * 2
    assert rows[0]["baseline"] == [4, 4] and rows[0]["methods"] == {0: [2, 2], 1: [2, 2]}
    # q = 1: target 0.2, the baseline at 8, "fast" at 4, "stuck" never (None: censored, kept)
    assert rows[1]["baseline"] == [8, 8] and rows[1]["methods"] == {0: [4, 4], 1: [None, None]}
    # the notebook's speed-up from them: a never-reached run counts as the horizon (ratio 8 / 8 = 1)
    s = speedup_by_seed(rows[1]["methods"], rows[1]["baseline"], horizon=8)
    assert s["ratios"] == {0: 2.0, 1: 1.0} and s["bound"] == "upper" and s["mean"] == pytest.approx(1.5)
    acc = steps_by_level(hist, methods={0: "fast"}, baseline="base", metric="accuracy", fractions=(1.0,))
    assert acc[0]["baseline"] == [8, 8] and acc[0]["methods"] == {0: [4, 4]}    # 0.8 at step 4 vs 8
    with pytest.raises(ValueError, match="lack"):
        steps_by_level(hist, methods={0: "nobody"}, baseline="base")
    with pytest.raises(ValueError, match="metric"):
        steps_by_level(hist, methods={0: "fast"}, baseline="base", metric="error")


def test_metric_curve_is_the_mean_and_std_over_runs():
    runs = [_hist([1.0, .5, .2, .2, .2], [.2, .4, .6, .7, .8], STEPS), _hist([1.0, .7, .4, .2, .2], [.2, .6, .6, .7, .6], STEPS)]
    acc = metric_curve(runs, "accuracy")
    np.testing.assert_array_equal(acc["x"], STEPS)
    np.testing.assert_allclose(acc["y"], [.2, .5, .6, .7, .7])
    np.testing.assert_allclose(acc["y_std"], [0, .1, 0, 0, .1], atol=1e-12)
    np.testing.assert_allclose(metric_curve(runs, "loss")["y"], [1.0, .6, .3, .2, .2])
    with pytest.raises(ValueError, match="evaluation steps"):
        metric_curve([runs[0], _hist([1.0, .5, .2], [.2, .4, .6], [0, 4, 8])], "loss")


def test_every_base_has_a_label():
    assert set(BASE_LABELS) == set(BASES)


@pytest.fixture(scope="module")
def family(l3rs_family_parts):
    return l3rs_family_parts[0]


@pytest.mark.parametrize("bases", [("sgd", "adam", "lion"), ("adam", "lamb", "adamax")])
def test_other_base_sets_run_vmapped_as_one_member_at_a_time(family, bases):
    cfg = L3RSConfig(n_layers=len(family.model.names), bases=bases, base_lr=1e-2)
    phis = init_phi(cfg) + 0.05 * torch.randn(3, cfg.dim, generator=torch.Generator().manual_seed(0))
    task = family.sample("train", 0)
    vmapped = population_losses(family.model, phis, cfg, task, steps=5, batch_size=16, chunk_size=2)
    looped = population_losses(family.model, phis, cfg, task, steps=5, batch_size=16, vectorize=False)
    assert torch.isfinite(vmapped).all()
    torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-6)
