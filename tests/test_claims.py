"""The claims table's arithmetic: bootstrap intervals, censored step counts, verdicts, claims.json."""

import json

import numpy as np
import pytest

from l2o_lib import claims
from l2o_lib.results import Run


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_seeds():
    rng = np.random.default_rng(0)
    few, many = rng.normal(2.0, 0.5, 3), rng.normal(2.0, 0.5, 300)
    lo3, hi3 = claims.bootstrap_interval(few)
    lo300, hi300 = claims.bootstrap_interval(many)
    assert lo3 <= few.mean() <= hi3 and lo300 <= many.mean() <= hi300
    assert hi300 - lo300 < hi3 - lo3
    assert lo300 < 2.0 < hi300


def test_bootstrap_interval_is_seeded_and_one_value_is_a_point():
    values = [1.0, 2.0, 4.0, 3.5]
    assert claims.bootstrap_interval(values, seed=3) == claims.bootstrap_interval(values, seed=3)
    assert claims.bootstrap_interval([2.5]) == (2.5, 2.5)


@pytest.mark.parametrize("bad", [[], [1.0, None], [1.0, float("inf")]])
def test_bootstrap_refuses_missing_values(bad):
    with pytest.raises(ValueError, match="values"):
        claims.bootstrap_interval(bad)


def test_mean_std_interval():
    out = claims.mean_std_interval([1.0, 2.0, 3.0])
    assert out["mean"] == 2.0 and out["std"] == pytest.approx(1.0) and out["n"] == 3
    assert out["interval"][0] <= 2.0 <= out["interval"][1]
    assert claims.format_estimate(out) .startswith("2.00 ± 1.00 [")


def test_censored_runs_count_as_the_horizon_not_dropped():
    s = claims.censored_summary([100, None, 200], horizon=800)
    assert (s.n, s.censored, s.mean) == (3, 1, pytest.approx((100 + 800 + 200) / 3))
    assert s.lower_bound and s.median == 200.0
    assert "1 of 3 never converged in 800 steps" in s.text()
    # dropping the censored run would have said 150: the summary must not
    assert s.mean > 150
    assert claims.censored_summary([None, None, 5], horizon=10).median is None
    assert claims.censored_summary([5, 7], horizon=10).text() == "6.0"


@pytest.mark.parametrize("steps, match", [([], "at least one"), ([5, 11], r"steps\[1\]"), ([1.5], r"steps\[0\]")])
def test_censored_summary_refuses_bad_steps(steps, match):
    with pytest.raises(ValueError, match=match):
        claims.censored_summary(steps, horizon=10)


def test_verdicts():
    assert claims.verdict(3.6, (3.2, 4.0), 3.41, null=1.0) == "reproduced"
    assert claims.verdict(2.1, (1.8, 2.4), 3.41, null=1.0) == "partly"
    assert claims.verdict(0.5, (0.4, 0.6), 3.41, null=1.0) == "not reproduced"
    assert claims.verdict(2.1, (1.8, 2.4), 3.41) == "not reproduced"          # no null: reaching it or not
    assert claims.verdict(0.3, (0.1, 0.6), 0.5, higher_is_better=False) == "reproduced"
    assert claims.verdict(1.2, (0.9, 1.5), 0.5, higher_is_better=False) == "not reproduced"
    assert claims.verdict(float("nan"), (0, 1), 0.5) == "not reproduced"
    # a wide interval that only reaches the paper's value is not a reproduction
    assert claims.verdict(14.5, (0.4, 42.4), 0.5, higher_is_better=False) == "partly"
    assert claims.verdict(3.0, (2.5, 3.6), 3.41) == "partly"
    assert claims.verdict(-0.2, (-0.6, 0.3), 0.0, null=-0.5, by="interval") == "reproduced"   # within noise
    with pytest.raises(ValueError, match="by"):
        claims.verdict(1.0, (0.0, 2.0), 1.0, by="median")


def test_claim_row_checks_and_round_trips_through_a_run(tmp_path):
    row = claims.claim_row(claim="SL2O needs fewer steps than Momentum†", source="Table 1", paper="3.41x",
                           ours_paper_protocol=np.float64(2.5), ours_strong=2.0, seeds=3, interval=(1.5, 3.0),
                           verdict="partly")
    assert tuple(row) == claims.CLAIM_FIELDS
    with pytest.raises(ValueError, match="verdict"):
        claims.claim_row(**{**row, "verdict": "maybe"})
    with pytest.raises(ValueError, match="interval"):
        claims.claim_row(**{**row, "interval": (3.0, 1.0)})
    run = Run("03_sl2o", root=tmp_path, params={"a": 1})
    path = claims.save_claims(run, [row])
    assert json.loads(path.read_text())[0]["ours_paper_protocol"] == 2.5
    with pytest.raises(ValueError, match="claim_row"):
        claims.save_claims(run, [{"claim": "x"}])
    (tmp_path / "05_l3rs" / "results").mkdir(parents=True)
    (tmp_path / "05_l3rs" / "results" / "claims.json").write_text("{broken")
    rows = claims.collect_claims(tmp_path)
    assert [r["notebook"] for r in rows] == ["03_sl2o", "05_l3rs"]
    assert rows[0]["verdict"] == "partly" and "UNREADABLE" in rows[1]["claim"]


def test_speedup_by_seed_one_ratio_per_meta_seed_with_censoring():
    out = claims.speedup_by_seed({0: [50, 50], 1: [100, 100], 2: [25, 25]}, [200, 200], horizon=800)
    assert out["ratios"] == {0: 4.0, 1: 2.0, 2: 8.0}
    assert out["mean"] == pytest.approx(14 / 3) and out["n"] == 3 and out["bound"] == "exact"
    censored_base = claims.speedup_by_seed({0: [50, 50]}, [200, None], horizon=800)
    assert censored_base["ratios"][0] == pytest.approx(500 / 50) and censored_base["bound"] == "lower"
    assert claims.speedup_by_seed({0: [None, 50]}, [200, 200], horizon=800)["bound"] == "upper"
    assert claims.speedup_by_seed({0: [None, 50]}, [None, 200], horizon=800)["bound"] == "unknown"
    with pytest.raises(ValueError, match="method_steps"):
        claims.speedup_by_seed({}, [1], horizon=10)


def test_steps_table_counts_runs_that_never_converged():
    table = claims.steps_table({"SL2O": [40, 50], "Momentum†": [300, None]}, horizon=800)
    assert table["never converged"].tolist() == [0, 1]
    assert table["convergence steps"].tolist()[0] == "45.0"
    assert table["convergence steps"].tolist()[1].startswith("≥ 550.0")


def test_findings_are_written_from_the_rows():
    row = claims.claim_row(claim="faster", source="Table 1", paper="3.41x", ours_paper_protocol="2.0",
                           ours_strong="1.5", seeds=3, interval=(1.0, 3.0), verdict="partly", explanation="because")
    text = claims.findings([row], method="SL2O", seeds_word="meta-training seeds")
    assert "3.41x" in text and "**partly**" in text and "3 meta-training seeds" in text and "because" in text
    with pytest.raises(ValueError, match="rows"):
        claims.findings([], method="SL2O")


def test_claims_frame_orders_columns_and_prints_intervals():
    row = claims.claim_row(claim="c", source="s", paper="2x", ours_paper_protocol="1", ours_strong="1", seeds=3,
                           interval=(1.0, 2.5), verdict="partly")
    frame = claims.claims_frame([{"notebook": "05_l3rs", **row}])
    assert list(frame.columns)[:2] == ["notebook", "claim"] and frame["interval"][0] == "[1, 2.5]"
    assert claims.claims_frame([]).empty


def test_direction_verdict_asks_the_whole_interval_past_the_null():
    assert claims.direction_verdict(2.0, (0.5, 3.0)) == "reproduced"
    assert claims.direction_verdict(1.0, (-0.5, 2.0)) == "partly"          # the interval reaches the null
    assert claims.direction_verdict(-1.0, (-2.0, 0.5)) == "not reproduced"
    assert claims.direction_verdict(0.0, (0.0, 0.0)) == "not reproduced"   # no effect is not "more"
    assert claims.direction_verdict(0.8, (0.7, 0.9), null=1.0, higher_is_better=False) == "reproduced"
    assert claims.direction_verdict(1.2, (1.1, 1.3), null=1.0, higher_is_better=False) == "not reproduced"
    assert claims.direction_verdict(float("nan"), (0.5, 1.0)) == "not reproduced"


def test_direction_verdict_refuses_a_reversed_interval():
    with pytest.raises(ValueError, match="interval"):
        claims.direction_verdict(0.5, (1.0, 0.0))


def test_time_to_target_reads_the_clock_at_the_first_evaluation_reaching_it():
    times, curve = [0.0, 1.5, 3.0, 4.5], [0.1, 0.8, float("nan"), 0.95]
    assert claims.time_to_target(times, curve, 0.8) == 1.5          # reached exactly: counts
    assert claims.time_to_target(times, curve, 0.9) == 4.5          # NaN at 3.0 does not count
    assert claims.time_to_target(times, curve, 0.99) is None        # never: censored, reported as None
    with pytest.raises(ValueError, match="times and curve"):
        claims.time_to_target([0.0, 1.0], [0.5], 0.4)
    with pytest.raises(ValueError, match="target"):
        claims.time_to_target([0.0], [0.5], float("nan"))
