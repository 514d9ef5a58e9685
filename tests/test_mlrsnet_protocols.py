"""MLR-SNet under two protocols (issue 18): several learned schedules in one comparison, each on the
optimizer it was meta-trained for; the paper's untuned baselines; paired gaps; the piecewise-constant
control made of a schedule's own LRs."""

import numpy as np
import pytest
import torch

from l2o_lib.data import Dataset
from l2o_lib.mlrsnet import (HAND_DESIGNED, MLRSNet, TrainedSchedule, baseline_configs, compare_schedules,
                             control_config, paired_gap, paper_baseline_configs, piece_means, piecewise_schedule)

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(steps=24, batch_size=32, eval_every=24, model_kwargs={"hidden": (16,)}, n_val=200, paired_batches=True)


def schedule(momentum: float, seed: int = 0) -> TrainedSchedule:
    return TrainedSchedule([MLRSNet(8, seed=seed + s).state_dict() for s in range(3)], hidden=8,
                           info={"momentum": momentum, "weight_decay": 5e-4})


@pytest.fixture(scope="module")
def digits(digits_split):
    train, test = digits_split
    return Dataset("digits", train, test, (64,), 10)


def test_piece_means_and_piecewise_schedule_share_the_thirds():
    lrs = np.array([[1.0] * 4 + [2.0] * 3 + [4.0] * 3, [3.0] * 10])   # 10 steps: thirds of 4, 3, 3 steps
    np.testing.assert_allclose(piece_means(lrs), [[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]])
    f = piecewise_schedule([1.0, 2.0, 4.0], 10)
    assert [f(t) for t in range(10)] == lrs[0].tolist()
    with pytest.raises(ValueError, match="lrs"):
        piece_means(np.array([[1.0, np.nan, 1.0]]))
    with pytest.raises(ValueError, match="constants"):
        piecewise_schedule([1.0, -2.0], 10)
    with pytest.raises(ValueError, match="momentum"):
        control_config(np.ones((2, 3)), momentum=1.5)


def test_each_schedule_drives_the_optimizer_it_was_meta_trained_for(digits):
    # Replaying a schedule's own per-step LRs (one piece per step) on plain SGD must retrace its runs
    # exactly: this holds only if the schedule meta-trained with momentum 0 drove plain SGD.
    plain, heavy = ("MLR-SNet (SGD)", "m0"), ("MLR-SNet", "m0")
    cmp = compare_schedules("mlp", digits, [], seeds=[0, 1], schedules={plain: schedule(0.0), heavy: schedule(0.9)},
                            **KW)
    assert set(cmp.rows) == {plain, heavy} and cmp.lrs(*plain).shape == (2, 24)
    exact = piece_means(cmp.lrs(*plain), pieces=24)
    replay = compare_schedules("mlp", digits, [control_config(exact, momentum=0.0)], seeds=[0, 1], **KW)
    ours, theirs = cmp.by_seed(*plain, metric="loss"), replay.by_seed("Control", "three constants", metric="loss")
    assert ours == pytest.approx(theirs, rel=1e-4)
    assert cmp.by_seed(*heavy, metric="loss") != pytest.approx(ours, rel=1e-4)   # momentum changes the runs
    np.testing.assert_allclose(replay.lrs("Control", "three constants"), exact, rtol=1e-6)


def test_learned_entries_are_checked(digits):
    configs = baseline_configs(sgd_lrs=(0.1,), methods=["Fixed"])
    with pytest.raises(ValueError, match="repeats"):
        compare_schedules("mlp", digits, configs, seeds=[0], schedules={("Fixed", "lr=0.1"): schedule(0.9)}, **KW)
    with pytest.raises(ValueError, match="keys"):
        compare_schedules("mlp", digits, configs, seeds=[0], schedules={"MLR-SNet": schedule(0.9)}, **KW)
    with pytest.raises(ValueError, match="TrainedSchedule"):
        compare_schedules("mlp", digits, configs, seeds=[0], schedules={("MLR-SNet", "x"): MLRSNet(8)}, **KW)
    with pytest.raises(ValueError, match="control holds constants for 2 runs"):
        compare_schedules("mlp", digits, [control_config(np.ones((2, 3)), momentum=0.0)], seeds=[0], **KW)


def test_paper_baselines_are_plain_sgd_from_one_lr_with_their_own_names(digits):
    configs = paper_baseline_configs(lr=0.1, hd_hyper_lrs=(1e-4,))
    assert [c.method for c in configs] == [*(f"SGD+{m}" for m in HAND_DESIGNED), "Adam (default)", "SGD+HD"]
    assert [c.setting for c in configs[:5]] == ["lr=0.1"] * 5 and configs[5].setting == "lr=0.001"
    # plain SGD: the paper's SGD+Fixed at lr 0.1 retraces a control that holds 0.1 on momentum 0
    fixed = [c for c in configs if c.method == "SGD+Fixed"]
    cmp = compare_schedules("mlp", digits, [*fixed, control_config(np.full((1, 3), 0.1), momentum=0.0)], seeds=[0], **KW)
    assert cmp.by_seed("SGD+Fixed", "lr=0.1", "loss") == pytest.approx(cmp.by_seed("Control", "three constants", "loss"),
                                                                        rel=1e-5)


def test_paired_gap_is_in_points_over_shared_seeds():
    assert paired_gap({0: 0.80, 1: 0.70, 2: 0.5}, {0: 0.75, 1: 0.70}) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="share no seed"):
        paired_gap({0: 0.8}, {1: 0.8})


def test_by_seed_and_lrs_name_a_missing_entry(digits):
    cmp = compare_schedules("mlp", digits, baseline_configs(sgd_lrs=(0.1,), methods=["Fixed"]), seeds=[0], **KW)
    assert cmp.by_seed("Fixed", "lr=0.1").keys() == {0}
    torch.testing.assert_close(torch.as_tensor(cmp.lrs("Fixed", "lr=0.1")), torch.full((1, 24), 0.1))
    with pytest.raises(ValueError, match="no runs"):
        cmp.by_seed("Cosine", "lr=0.1")
    with pytest.raises(ValueError, match="no runs"):
        cmp.lrs("Cosine", "lr=0.1")
