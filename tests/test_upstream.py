"""What later notebooks read from notebooks 03-05 (l2o_lib.upstream)."""

import math
from types import SimpleNamespace

import pytest

from l2o_lib import upstream
from l2o_lib.artifacts import trained_path
from l2o_lib.metrics import summary_table
from l2o_lib.results import Run


@pytest.mark.parametrize("cell, expected", [
    ("0.8123 ± 0.0100", (0.8123, 0.01)), ("12.50 ± 3.00 (2/3)", (12.5, 3.0)), ("-1e-03 ± 2E-4", (-0.001, 0.0002)),
    (0.75, (0.75, math.nan)), ("—", (math.nan, math.nan)), (None, (math.nan, math.nan)),
])
def test_parse_mean_std_reads_summary_table_cells(cell, expected):
    mean, std = upstream.parse_mean_std(cell)
    assert (mean, std) == pytest.approx(expected, nan_ok=True)


def test_parse_mean_std_inverts_summary_table():
    table = summary_table([{"m": "a", "x": 0.5}, {"m": "a", "x": 0.7}, {"m": "b", "x": None}, {"m": "b", "x": 2.0}],
                          by="m", metrics=["x"], digits=4)
    assert upstream.parse_mean_std(table["x"][0]) == pytest.approx((0.6, 0.1414), abs=1e-4)
    assert upstream.parse_mean_std(table["x"][1]) == pytest.approx((2.0, 0.0))   # "2.0000 ± 0.0000 (1/2)"


@pytest.mark.parametrize("cell", ["0.81", "0.81 +- 0.02", "about 0.8 ± 0.1", [0.8]])
def test_parse_mean_std_refuses_other_text(cell):
    with pytest.raises(ValueError, match="mean ± std|not a number"):
        upstream.parse_mean_std(cell)


def _save_04(root, rows, **params):
    run = Run("04_mlrsnet", root=root / "ci", params={"sgd_lrs": [0.03, 0.1], "adam_lrs": [1e-3],
                                                      "hd_hyper_lrs": [1e-3], **params}, resume=False)
    run.save_result("accuracy_table", rows)


def test_best_hand_designed_picks_the_most_accurate_schedule_at_its_tuned_setting(tmp_path):
    root = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match="l2o run 04 --profile ci"):
        upstream.best_hand_designed("ci", root=root)
    _save_04(root, [
        {"method": "MLR-SNet", "tuned setting": "3 meta-seeds", "n": 3, "accuracy": "0.9900 ± 0.0010"},
        {"method": "Adam", "tuned setting": "lr=0.001", "n": 3, "accuracy": "0.9500 ± 0.0010"},
        {"method": "Fixed", "tuned setting": "lr=0.1", "n": 3, "accuracy": "0.8000 ± 0.0100"},
        {"method": "Cosine", "tuned setting": "lr=0.03", "n": 3, "accuracy": "0.8500 ± 0.0300"},
        {"method": "SGDR", "tuned setting": "lr=0.1", "n": 3, "accuracy": "—"}])
    best = upstream.best_hand_designed("ci", root=root)
    assert (best.method, best.setting) == ("Cosine", "lr=0.03") and callable(best.make)
    _save_04(root, [{"method": "Fixed", "tuned setting": "lr=9", "n": 3, "accuracy": "0.8 ± 0.0"}])
    with pytest.raises(ValueError, match="not in notebook 04's grid"):
        upstream.best_hand_designed("ci", root=root)
    _save_04(root, [{"method": "Adam", "tuned setting": "lr=0.001", "n": 3, "accuracy": "0.8 ± 0.0"}])
    with pytest.raises(ValueError, match="no hand-designed schedule"):
        upstream.best_hand_designed("ci", root=root)


def test_ensure_trained_runs_only_the_missing_notebooks_in_the_folder_above_root(tmp_path):
    root = tmp_path / "runs"
    for kind in ("sl2o", "l3rs"):
        path = trained_path(kind, "ci", root=root)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
    calls = []

    def fake_run(path, *, profile, cwd):
        calls.append((path.stem, profile, cwd))
        made = trained_path("mlrsnet", profile, root=cwd / "runs")
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_bytes(b"x")
        return SimpleNamespace(ok=True, error=None)

    assert upstream.missing_trained("ci", root=root) == ["04_mlrsnet"]
    assert upstream.ensure_trained("ci", root=root, run=fake_run) == ["04_mlrsnet"]
    assert calls == [("04_mlrsnet", "ci", tmp_path)]
    assert upstream.ensure_trained("ci", root=root, run=fake_run) == [] and len(calls) == 1


def test_ensure_trained_reports_a_failed_or_silent_notebook_and_a_root_not_named_runs(tmp_path):
    failing = lambda path, **kw: SimpleNamespace(ok=False, error="cell 3: boom")
    with pytest.raises(RuntimeError, match="(?s)03_sl2o failed.*boom"):
        upstream.ensure_trained("ci", root=tmp_path / "runs", run=failing)
    silent = lambda path, **kw: SimpleNamespace(ok=True, error=None)
    with pytest.raises(RuntimeError, match="saved no optimizer"):
        upstream.ensure_trained("ci", root=tmp_path / "runs", run=silent)
    with pytest.raises(ValueError, match="named 'runs'"):
        upstream.ensure_trained("ci", root=tmp_path / "elsewhere", run=silent)
