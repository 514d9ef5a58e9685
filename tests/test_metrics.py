import math

import numpy as np
import pytest
import torch

from l2o_lib.metrics import (accuracy, convergence_step, convergence_steps, mean_std, speedup,
                             steps_to_target, summary_table)


def test_convergence_step_definition():
    # a loss that decays then flattens at 0.05: the first t where the last 20 values vary by
    # less than 0.1 (std) and the value is within 0.1 of the best
    t = np.arange(300)
    L = 2.0 * np.exp(-t / 20) + 0.05
    step = convergence_step(L, window=20)
    brute = next(i for i in range(19, 300) if np.std(L[i - 19:i + 1]) < 0.1 and L[i] < L.min() + 0.1)
    assert step == brute
    assert convergence_step(L, window=20, std_tol=1e-9) is None


def test_convergence_uses_global_best_over_runs():
    fast = np.r_[np.linspace(2, 0.5, 50), np.full(100, 0.5)]   # plateaus at 0.5
    good = np.r_[np.linspace(2, 0.1, 100), np.full(50, 0.1)]   # reaches 0.1 later
    own = convergence_step(fast)
    shared = convergence_steps({"fast": fast, "good": good})
    assert own is not None and shared["fast"] is None  # 0.5 is not within 0.1 of 0.1
    assert shared["good"] is not None


def test_non_finite_losses_never_converge():
    L = np.full(50, np.nan)
    assert convergence_step(L, best=0.0) is None


def test_steps_to_target_and_speedup():
    L = [5, 4, 3, 2, 1, 0.5]
    assert steps_to_target(L, 2) == 3
    assert steps_to_target(L, 0.1) is None
    assert steps_to_target(torch.tensor(L), 3.0, smooth=2) == 3
    assert steps_to_target([0.1, 0.5, 0.7, 0.6], 0.6, mode="above") == 2
    with pytest.raises(ValueError, match="mode"):
        steps_to_target(L, 1.0, mode="up")
    assert speedup(300, 100) == 3.0
    assert math.isnan(speedup(300, None))


def test_accuracy():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="rows"):
        accuracy(logits, torch.tensor([0]))


def test_mean_std_and_table():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert mean_std([None, 4.0]) == (4.0, 0.0, 1)
    recs = [{"opt": "A", "steps": 10, "acc": 0.9}, {"opt": "A", "steps": 14, "acc": 0.8},
            {"opt": "B", "steps": None, "acc": 0.7}, {"opt": "B", "steps": 20, "acc": 0.7}]
    table = summary_table(recs, by="opt", metrics=["steps", "acc"])
    assert list(table["opt"]) == ["A", "B"]
    assert table.loc[0, "steps"] == "12.00 ± 2.83" and table.loc[0, "n"] == 2
    assert table.loc[1, "steps"] == "20.00 ± 0.00 (1/2)"
    with pytest.raises(ValueError, match="lack"):
        summary_table(recs, by="optimizer", metrics=["steps"])


def test_bad_thresholds():
    with pytest.raises(ValueError, match="window"):
        convergence_step([1.0] * 30, window=0)
    with pytest.raises(ValueError, match="std_tol"):
        convergence_step([1.0] * 30, std_tol=-1)
    with pytest.raises(ValueError, match="empty"):
        convergence_step([])
