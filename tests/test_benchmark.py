"""Bench targets (``met``), the bench table, legacy records and a raising case, on fake case files."""

import json

import pytest

from l2o_lib import benchmark, cli
from l2o_lib.benchmark import (check_targets, evaluate_targets, find_cases, load_records, run_case, run_cases, table,
                               tally, target, target_rows, write_table)

FAKE = """
from l2o_lib.benchmark import target

def targets(r):
    return [target("our step / SGD step", r["ours_s"] / r["sgd_s"], 1.1),
            target("speed-up vs reference", r["reference_s"] / r["ours_s"], 10, ">=", "cuda"),
            target("speed-up vs reference, any device", r["reference_s"] / r["ours_s"], 3, ">=")]

def run(*, quick, device):
    out = {"ours_s": 0.5, "reference_s": 2.0, "sgd_s": 0.4, "extra": 7}
    return {**out, "targets": targets(out)}
"""

BROKEN = """
def run(*, quick, device):
    raise RuntimeError("boom | at step 3")
"""


@pytest.fixture
def cases(tmp_path):
    d = tmp_path / "bench"
    d.mkdir()
    (d / "fake.py").write_text(FAKE)
    (d / "broken.py").write_text(BROKEN)
    return d


def test_target_validation_names_the_case_and_field():
    assert target("x", 1, 2) == {"name": "x", "value": 1.0, "target": 2.0, "op": "<=", "device": "any"}
    with pytest.raises(ValueError, match="case 'c'.*op='<'"):
        check_targets("c", [{"name": "x", "value": 1, "target": 2, "op": "<"}])
    with pytest.raises(ValueError, match="case 'c'.*device='tpu'"):
        check_targets("c", [{"name": "x", "value": 1, "target": 2, "op": "<=", "device": "tpu"}])
    with pytest.raises(ValueError, match="case 'c'.*no \\['target'\\]"):
        check_targets("c", [{"name": "x", "value": 1, "op": "<="}])
    with pytest.raises(ValueError, match="must be a list"):
        check_targets("c", {"name": "x"})
    assert check_targets("c", [{"name": "x", "value": None, "target": 2, "op": ">="}])[0]["device"] == "any"


def test_met_follows_op_bound_and_device():
    ts = [target("le ok", 1.0, 1.0), target("le bad", 1.01, 1.0), target("ge ok", 12, 10, ">="),
          target("ge bad", 9.9, 10, ">="), target("gpu", 50, 10, ">=", "cuda"), target("cpu only", 0.5, 1, "<=", "cpu"),
          target("nan", float("nan"), 1.0)]
    on_cpu = {t["name"]: t.get("met") for t in evaluate_targets(ts, "cpu")}
    assert on_cpu == {"le ok": True, "le bad": False, "ge ok": True, "ge bad": False, "gpu": None, "cpu only": True,
                      "nan": False}
    assert "met" not in evaluate_targets(ts, "cpu")[4]     # another device's target: not judged
    on_gpu = {t["name"]: t.get("met") for t in evaluate_targets(ts, "cuda:0")}
    assert on_gpu["gpu"] is True and on_gpu["cpu only"] is None


def test_run_case_adds_met_and_keeps_the_case_keys(cases, tmp_path):
    rec = run_case(cases / "fake.py", quick=True, device="cpu", out_dir=tmp_path / "out")
    assert rec["ratio"] == 4.0 and rec["extra"] == 7 and rec["quick"] is True
    met = {t["name"]: t.get("met") for t in rec["targets"]}
    # 0.5 / 0.4 = 1.25 > 1.1: missed; the cuda target is not judged on the CPU; 4 >= 3: met
    assert met == {"our step / SGD step": False, "speed-up vs reference": None, "speed-up vs reference, any device": True}
    stored = json.loads((tmp_path / "out" / "fake.json").read_text())
    assert stored["targets"] == rec["targets"]


def test_run_case_rejects_bad_targets(tmp_path):
    (tmp_path / "bad.py").write_text("def run(*, quick, device):\n"
                                     "    return {'ours_s': 1, 'reference_s': 1, 'targets': [{'name': 'x'}]}\n")
    with pytest.raises(ValueError, match="'bad'.*targets\\[0\\]"):
        run_case(tmp_path / "bad.py", quick=True, device="cpu", out_dir=tmp_path / "out")


def test_run_cases_reports_a_raising_case_and_runs_the_rest(cases, tmp_path):
    out = tmp_path / "out"
    seen = []
    records = run_cases(find_cases([], cases), quick=True, device="cpu", out_dir=out, on_done=seen.append)
    assert [r["case"] for r in records] == ["broken", "fake"] == [r["case"] for r in seen]
    assert records[0]["error"] == "RuntimeError: boom | at step 3" and "Traceback" in records[0]["traceback"]
    assert not (out / "broken.json").exists() and (out / "fake.json").exists()
    assert tally(records) == {"met": 1, "missed": 1, "not_applicable": 1, "failed": ["broken"]}


def test_table_lines(cases, tmp_path):
    records = run_cases(find_cases([], cases), quick=True, device="cpu", out_dir=tmp_path / "out")
    text = table(records)
    lines = text.splitlines()
    assert lines[0].startswith("| case | device | mode | ours (s) | reference (s) | ratio | target | value | met |")
    broken = [line for line in lines if line.startswith("| broken")]
    assert len(broken) == 1 and "error: RuntimeError: boom \\| at step 3" in broken[0] and broken[0].endswith("failed |")
    fake = [line for line in lines if line.startswith("| fake")]
    assert len(fake) == 3
    assert fake[0] == "| fake | cpu | quick | 0.5 | 2 | 4× | our step / SGD step ≤ 1.1 | 1.25 | missed |"
    assert fake[1] == "| fake | cpu | quick |  |  |  | speed-up vs reference ≥ 10 (cuda) | 4 | n/a |"
    assert fake[2].endswith("| speed-up vs reference, any device ≥ 3 | 4 | met |")
    assert lines[-1] == "targets: 1 met, 1 missed, 1 for another device; failed cases: broken"
    # every row has the header's number of cells (the "|" in the error message is escaped)
    assert {line.replace("\\|", "").count("|") for line in lines if line.startswith("|")} == {10}


def test_case_without_targets_gets_one_line(tmp_path):
    rec = {"case": "plain", "device": "cpu", "quick": False, "ours_s": 1.0, "reference_s": 0.5, "ratio": 0.5, "targets": []}
    assert table([rec]).splitlines()[2] == "| plain | cpu | full | 1 | 0.5 | 0.5× | — |  |  |"
    assert target_rows([rec]) == []


def test_legacy_records_get_targets_from_their_case(cases, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    legacy = {"case": "fake", "device": "cpu", "quick": True, "ours_s": 1.0, "reference_s": 4.0, "sgd_s": 1.0, "ratio": 4.0}
    (out / "fake.json").write_text(json.dumps(legacy))
    (out / "orphan.json").write_text(json.dumps({**legacy, "case": "orphan"}))      # no case file: no targets
    (out / "old.json").write_text(json.dumps({"case": "old", "ours_s": 1.0, "reference_s": 1.0}))
    (cases / "old.py").write_text(FAKE)      # its targets() needs sgd_s, which the old record lacks
    (out / "torn.json").write_text("{not json")
    records = load_records(out, cases)
    assert sorted(records) == ["fake", "old", "orphan"]
    assert records["fake"]["targets_derived"] is True
    assert [t.get("met") for t in records["fake"]["targets"]] == [True, None, True]
    assert "targets" not in records["orphan"] and "targets" not in records["old"]
    assert load_records(tmp_path / "missing", cases) == {}


def test_write_table_merges_this_run_with_stored_records(cases, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.json").write_text(json.dumps({"case": "other", "device": "cpu", "quick": False, "ours_s": 1.0,
                                                "reference_s": 1.0, "ratio": 1.0, "targets": []}))
    (out / "broken.json").write_text(json.dumps({"case": "broken", "device": "cpu", "ours_s": 1.0, "reference_s": 1.0,
                                                 "ratio": 1.0, "targets": []}))
    records = run_cases(find_cases([], cases), quick=True, device="cpu", out_dir=out)
    text, path = write_table(records, out, cases)
    assert path == out / "table.md" and path.read_text() == text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert rows == ["| broken", "| fake", "| fake", "| fake", "| other"]
    assert "error: RuntimeError" in text          # this run's failure replaces the stored record of the case


def test_cli_bench_exits_nonzero_after_running_every_case(cases, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "BENCH_DIR", cases)
    out = tmp_path / "out"
    assert cli.main(["bench", "--quick", "--device", "cpu", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "| fake | cpu | quick |" in captured.out and "failed cases: broken" in captured.out
    assert "RuntimeError: boom" in captured.err
    assert (out / "table.md").read_text() in captured.out
    assert cli.main(["bench", "fake", "--quick", "--device", "cpu", "--out", str(out)]) == 0
    assert cli.main(["bench", "nope", "--out", str(out)]) == 2
    assert cli.main(["bench", "fake", "--device", "tpu", "--out", str(out)]) == 2


def test_mlrsnet_step_cost_model_recovers_planted_costs(monkeypatch):
    # A meta_train whose loop clock is exactly steps · step_s + meta-updates · meta_update_s: the
    # case's two-loop decomposition must give both back, and ours(T) = step_s + meta_update_s / T.
    from types import SimpleNamespace

    case = benchmark._load_case(benchmark.BENCH_DIR / "mlrsnet_step.py")
    step_s, meta_update_s = 0.003, 0.05

    def meta_train(*args, steps, t_val, **kwargs):
        updates = len(range(0, steps, t_val))  # steps 0, t_val, 2 t_val, ... meta-update
        return SimpleNamespace(history=SimpleNamespace(seconds=steps * step_s + updates * meta_update_s))

    monkeypatch.setattr(case, "meta_train", meta_train)
    for name in ("train_flat", "train_population"):
        monkeypatch.setattr(case, name, lambda *a, **k: None)
    monkeypatch.setattr(case, "torch_sgd_steps", lambda *a, **k: (lambda: None))
    r = case.run(quick=False, device="cpu")
    assert r["step_s"] == pytest.approx(step_s) and r["meta_update_s"] == pytest.approx(meta_update_s)
    assert r["ours_s_tval300"] == pytest.approx(step_s + meta_update_s / 300)
    assert r["method"].startswith("modelled") and len(r["targets"]) == 2


def test_alternate_interleaves_and_median_times_warms_up_and_divides():
    calls = []
    values = benchmark.alternate({"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}, rounds=3)
    assert calls == ["a", "b"] * 3 and values == {"a": [1, 1, 1], "b": [2, 2, 2]}
    counts = {"a": 0}

    def fn():
        counts["a"] += 1

    t = benchmark.median_times({"a": fn}, warmup=2, repeat=4, rounds=3, per=10)
    assert counts["a"] == 2 + 4 * 3 and t["a"] >= 0
    with pytest.raises(ValueError, match="rounds"):
        benchmark.median_times({"a": fn}, rounds=0)
    assert counts["a"] == 14  # rejected before any call
