"""The side-by-side table of notebook 08 and the README, built from small fake run and bench files."""

import json

import pandas as pd
import pytest
import torch

from l2o_lib import report
from l2o_lib.report import (COLUMNS, METHODS, bench_frame, markdown, meta_training_seconds, parse_number, scaling_frames,
                             side_by_side)


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def summary(path, rows):
    write_json(path / "results" / "summary.json", [{"method": m, "metric": k, "value": v} for m, k, v in rows])


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    quick = root / "quick"
    summary(quick / "02_pbfgs", [("SGD", "test accuracy", 0.95), ("Adam", "test accuracy", 0.83),
                                 ("P-BFGS", "test accuracy", 0.94), ("P+-BFGS", "test accuracy", 0.99)])
    write_json(quick / "02_pbfgs" / "params.json", {"params": {"model": "convnet", "dataset": "mnist1d"}})
    summary(quick / "03_sl2o", [("SL2O", "test accuracy", 0.9442), ("Momentum†", "test accuracy", 0.9384),
                                ("SL2O", "convergence steps", 62.8), ("Momentum†", "convergence steps", 133.8),
                                ("SL2O", "speed-up vs Momentum† (convergence steps)", 2.13)])
    (quick / "03_sl2o" / "checkpoints").mkdir(parents=True)
    for step, seconds in ((19, 50.0), (20, 59.2)):   # the newest checkpoint holds the whole clock
        torch.save({"history": {"seconds": seconds, "inner_steps": 10}}, quick / "03_sl2o" / "checkpoints" / f"step_{step:08d}.pt")
    summary(quick / "04_mlrsnet", [("Cosine", "test accuracy (same task, tuned)", "0.6857 ± 0.0155"),
                                   ("Fixed", "test accuracy (same task, tuned)", "0.6470 ± 0.0036"),
                                   ("MLR-SNet", "test accuracy (same task, tuned)", "0.6807 ± 0.0202"),
                                   ("MLR-SNet", "held-out tasks within 0.5 points", "2/4")])
    summary(quick / "05_l3rs", [("L3RS", "median speed-up over the best tuned baseline (held-out tasks)", 1.569),
                                ("Adam (const)", "test accuracy (held-out)", 0.7513),
                                ("L3RS (untrained φ0)", "test accuracy (held-out)", 0.80),
                                ("L3RS", "test accuracy (held-out)", 0.7805)])
    write_json(quick / "05_l3rs" / "results" / "nes_history.json", {"generation": [0, 1, 2], "seconds": [1.0, 1.5, 2.0]})
    return root


@pytest.fixture
def bench(tmp_path):
    d = tmp_path / "bench"
    base = {"device": "cpu", "quick": True, "ours_s": 1.0, "reference_s": 1.0, "ratio": 1.0, "targets": []}
    write_json(d / "pbfgs_step.json", {**base, "case": "pbfgs_step", "quick": False, "ratio_vs_sgd": 1.05})
    write_json(d / "dldr_basis.json", {**base, "case": "dldr_basis", "ratio_vs_sgd_step": 0.38, "checkpoints": 81})
    write_json(d / "sl2o_step.json", {**base, "case": "sl2o_step", "ours_vs_momentum_dagger": 0.99})
    write_json(d / "sl2o_meta_step.json", {**base, "case": "sl2o_meta_step", "ratio_vs_sgd": 1.23})
    write_json(d / "mlrsnet_step.json", {**base, "case": "mlrsnet_step", "overhead": 1.36, "t_val": 100,
                                         "overhead_tval300": 1.04, "t_val_tval300": 300, "meta_test_overhead": 1.08})
    # l3rs_step missing on purpose
    return d


def test_rows_land_in_the_right_cells(runs, bench):
    table = side_by_side("quick", runs=runs, bench_dir=bench, cases_dir=None)
    assert list(table.columns) == list(COLUMNS)
    assert list(table["method"]) == [s.method for s in METHODS]
    rows = {r["method"]: r for r in table.to_dict("records")}

    p = rows["DLDR + P-BFGS"]
    assert p["task"] == "convnet on mnist1d"
    assert p["accuracy"] == 0.94 and p["baseline"] == "SGD" and p["baseline_accuracy"] == 0.95  # P+-BFGS is a variant
    assert p["step_cost"] == 1.05 and p["step_cost_what"] == "P-BFGS iteration / SGD step"
    assert p["meta_step_cost"] == 0.38 and p["meta_step_cost_what"] == "DLDR basis from 81 checkpoints / SGD step"
    assert p["meta_training_s"] is None and p["meta_training_what"] == "none needed"
    assert p["speedup"] is None and p["speedup_vs"] is None

    s = rows["SL2O"]
    assert (s["accuracy"], s["baseline"], s["baseline_accuracy"]) == (0.9442, "Momentum†", 0.9384)
    assert (s["steps"], s["baseline_steps"], s["speedup"], s["speedup_vs"]) == (62.8, 133.8, 2.13, "Momentum†")
    assert (s["step_cost"], s["meta_step_cost"]) == (0.99, 1.23)
    assert s["meta_training_s"] == 59.2
    assert s["task"] == ""                                    # no params.json: empty, not an error

    m = rows["MLR-SNet"]
    assert m["accuracy"] == 0.6807 and m["accuracy_text"] == "0.6807 ± 0.0202"
    assert m["baseline"] == "Cosine" and m["baseline_text"] == "0.6857 ± 0.0155"
    assert m["step_cost"] == 1.08
    assert m["meta_step_cost"] == 1.04 and "every T_val = 300" in m["meta_step_cost_what"]   # T_val = 300 preferred
    assert m["meta_training_s"] is None

    l3 = rows["L3RS"]
    assert l3["baseline"] == "Adam (const)" and l3["baseline_accuracy"] == 0.7513   # not the untrained variant
    assert l3["speedup"] == 1.569 and l3["accuracy"] == 0.7805
    assert l3["step_cost"] is None and l3["meta_step_cost"] is None              # no l3rs_step record
    assert l3["meta_training_s"] == pytest.approx(4.5)


def test_sources_name_every_input(runs, bench):
    rows = {r["method"]: r["source"] for r in side_by_side("quick", runs=runs, bench_dir=bench, cases_dir=None)
            .to_dict("records")}
    assert rows["DLDR + P-BFGS"] == ("02_pbfgs summary.json; bench/pbfgs_step.py (full, cpu); "
                                     "bench/dldr_basis.py (quick, cpu)")
    assert rows["SL2O"] == ("03_sl2o summary.json; bench/sl2o_step.py (quick, cpu); bench/sl2o_meta_step.py (quick, cpu); "
                            "03_sl2o meta-checkpoint")
    assert rows["MLR-SNet"] == "04_mlrsnet summary.json; bench/mlrsnet_step.py (quick, cpu)"   # one case, named once
    assert rows["L3RS"] == "05_l3rs summary.json; 05_l3rs nes_history.json"


def test_sl2o_meta_training_time_is_the_mean_over_its_meta_trainings(tmp_path):
    run_dir = tmp_path / "03_sl2o"
    for name, seconds in (("scale1_seed0", 60.0), ("scale1_seed1", 70.0)):
        folder = run_dir / "meta" / name / "checkpoints"
        folder.mkdir(parents=True)
        torch.save({"history": {"seconds": 1.0}}, folder / "step_00000001.pt")
        torch.save({"history": {"seconds": seconds}}, folder / "step_00000002.pt")
    assert meta_training_seconds("sl2o", run_dir) == (65.0, "03_sl2o meta-checkpoints (mean of 2)")
    (run_dir / "meta" / "scale1_seed1" / "checkpoints" / "step_00000003.pt").write_bytes(b"broken")
    assert meta_training_seconds("sl2o", run_dir) == (None, "")


def test_missing_inputs_leave_empty_cells(tmp_path, runs, bench):
    empty = side_by_side("quick", runs=tmp_path / "nothing", bench_dir=tmp_path / "nobench", cases_dir=None)
    assert len(empty) == len(METHODS)
    blank = empty.drop(columns=["method", "notebook", "meta_training_what"])
    assert all(v in (None, "") for v in blank.to_numpy().ravel())
    assert markdown(empty).count("\n") == 2 + len(METHODS)

    # a summary without the usual fields, a corrupt checkpoint and an errored bench record are tolerated too
    write_json(runs / "quick" / "04_mlrsnet" / "results" / "summary.json", [{"note": "no method or metric"}])
    (runs / "quick" / "03_sl2o" / "checkpoints" / "step_00000021.pt").write_bytes(b"not a checkpoint")
    write_json(bench / "sl2o_step.json", {"case": "sl2o_step", "device": "cpu", "error": "RuntimeError: boom"})
    table = side_by_side("quick", runs=runs, bench_dir=bench, cases_dir=None)
    sl2o = table.set_index("method").loc["SL2O"]
    assert sl2o["meta_training_s"] is None and sl2o["step_cost"] is None and sl2o["meta_step_cost"] == 1.23
    mlrsnet = table.set_index("method").loc["MLR-SNet"]
    assert mlrsnet["accuracy"] is None and mlrsnet["baseline"] is None and mlrsnet["step_cost"] == 1.08


def test_markdown_cells(runs, bench):
    text = markdown(side_by_side("quick", runs=runs, bench_dir=bench, cases_dir=None))
    lines = text.splitlines()
    assert lines[0].startswith("| method | task | test accuracy (baseline) | speed-up | step cost |")
    sl2o = next(line for line in lines if line.startswith("| SL2O "))
    cells = [c.strip() for c in sl2o.strip("|").split(" | ")]
    assert cells[2] == "0.9442 (Momentum† 0.9384)"
    assert cells[3] == "2.13× vs Momentum† (62.8 vs 133.8 convergence steps)"
    assert cells[4] == "0.99× (meta-test step / Momentum† step)"
    assert cells[6] == "59 s"
    pbfgs = [c.strip() for c in next(line for line in lines if line.startswith("| DLDR")).strip("|").split(" | ")]
    assert pbfgs[3] == "" and pbfgs[6] == "none needed"
    assert all(line.count(" | ") == 7 for line in lines if line.startswith("| ") and "---" not in line)


def test_parse_number():
    assert parse_number(0.5) == 0.5 and parse_number(3) == 3.0
    assert parse_number("0.6807 ± 0.0202") == 0.6807
    assert parse_number("2/4") is None and parse_number(None) is None and parse_number(True) is None
    assert parse_number(float("nan")) is None


def test_bench_frame_and_scaling_frames():
    records = {"a": {"case": "a", "device": "cpu", "quick": True, "targets": [
        {"name": "cost", "value": 1.2, "target": 1.1, "op": "<=", "device": "any", "met": False},
        {"name": "gpu speed-up", "value": 2.0, "target": 10, "op": ">=", "device": "cuda"}]},
        "b": {"case": "b", "device": "cpu", "quick": False, "targets": [
            {"name": "x", "value": 20.0, "target": 10, "op": ">=", "device": "any", "met": True}]},
        "c": {"case": "c", "device": "cpu", "error": "boom"}}
    frame = bench_frame(records)
    assert list(frame["status"]) == ["missed", "n/a", "met"]
    assert list(frame["headroom"]) == pytest.approx([1.2 / 1.1, 5.0, 0.5])
    assert list(frame["label"]) == ["a", "a #2", "b"]
    assert bench_frame({}).empty and "status" in bench_frame({}).columns

    rec = {"case": "scaling", "models": [{"model": "mlp", "parameters": 10, "ours_s": 1.0, "sgd_s": 0.5}],
           "meta_batch": [{"model": "mlp", "tasks": 1}, {"model": "mlp", "tasks": 2}]}
    frames = scaling_frames(rec)
    assert isinstance(frames["models"], pd.DataFrame) and list(frames["meta_batch"]["tasks"]) == [1, 2]
    assert scaling_frames(None) == {} and scaling_frames({"case": "scaling", "error": "x"}) == {}


def test_meta_training_seconds_kinds(runs):
    assert report.meta_training_seconds("sl2o", runs / "quick" / "03_sl2o") == (59.2, "03_sl2o meta-checkpoint")
    assert report.meta_training_seconds("l3rs", runs / "quick" / "05_l3rs") == (4.5, "05_l3rs nes_history.json")
    assert report.meta_training_seconds(None, runs / "quick" / "04_mlrsnet") == (None, "")
    assert report.meta_training_seconds("sl2o", runs / "quick" / "missing") == (None, "")


def test_summaries_without_the_usual_fields():
    odd = pd.DataFrame([{"notebook": "03_sl2o", "note": "x"}])
    table = report.method_table(odd, {})
    assert table.set_index("method").loc["SL2O", "accuracy"] is None
    assert table.set_index("method").loc["SL2O", "baseline"] is None
