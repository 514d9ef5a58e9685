"""The l2o command, the notebook runner's failure reporting, the bench runner and the profiles."""

import json

import nbformat
import pytest

from l2o_lib import cli
from l2o_lib.benchmark import compare, find_cases, run_case
from l2o_lib.config import check_choice, check_positive, get_profile, resolve_device
from l2o_lib.runner import collect_summaries, find_notebooks, run_notebook


def write_notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [nbformat.v4.new_code_cell(s) for s in sources]
    cells[0].metadata["tags"] = ["parameters"]
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def test_list_shows_notebooks_profiles_and_cases(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "00_quickstart" in out and "quick" in out and "momentum_step" in out


def test_run_unknown_notebook_exits_2(capsys):
    assert cli.main(["run", "99_nothing", "--profile", "ci"]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_profile_is_rejected():
    with pytest.raises(SystemExit):
        cli.main(["run", "--profile", "huge"])
    with pytest.raises(ValueError, match="profile='huge'.*ci.*paper.*quick"):
        get_profile("huge")
    with pytest.raises(ValueError, match="seeds"):
        get_profile("ci", seeds=0)
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile("ci", colour="red")


def test_parse_value():
    assert cli._parse_value("0.1") == 0.1
    assert cli._parse_value("[5, 10]") == [5, 10]
    assert cli._parse_value("mnist1d") == "mnist1d"


@pytest.mark.slow
def test_failing_notebook_reports_cell_and_error(tmp_path):
    nb = write_notebook(tmp_path / "bad.ipynb", 'profile = "quick"\nx = 1',
                        "y = x + 1", "raise ValueError(f'broken at {y} under {profile}')")
    result = run_notebook(nb, profile="ci", parameters={"x": 41}, output_dir=tmp_path / "out", cwd=tmp_path)
    assert not result.ok
    assert "raise ValueError" in result.error          # the failing cell's source
    assert "broken at 42 under ci" in result.error      # its error, with injected parameters


def test_find_notebooks_by_prefix(tmp_path):
    for name in ("00_a", "01_b"):
        write_notebook(tmp_path / f"{name}.ipynb", "profile = 'ci'")
    assert [p.stem for p in find_notebooks(["01"], tmp_path)] == ["01_b"]
    assert [p.stem for p in find_notebooks([], tmp_path)] == ["00_a", "01_b"]


def test_collect_summaries(tmp_path):
    d = tmp_path / "ci" / "00_x" / "results"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps([{"method": "SGD", "metric": "acc", "value": 0.5}]))
    table = collect_summaries("ci", root=tmp_path)
    assert table.to_dict("records") == [{"notebook": "00_x", "method": "SGD", "metric": "acc", "value": 0.5}]


def test_bench_runner_writes_record(tmp_path):
    case = tmp_path / "fake.py"
    case.write_text("def run(*, quick, device):\n    return {'ours_s': 0.5, 'reference_s': 2.0, 'n': 3}\n")
    rec = run_case(case, quick=True, device="cpu", out_dir=tmp_path / "out")
    assert rec["ratio"] == 4.0 and rec["case"] == "fake" and rec["device"] == "cpu"
    assert json.loads((tmp_path / "out" / "fake.json").read_text())["n"] == 3
    with pytest.raises(ValueError, match="unknown bench case"):
        find_cases(["nope"], tmp_path)


def test_compare_measures_the_slower_function():
    import time
    timing = compare(lambda: time.sleep(0.001), lambda: time.sleep(0.004), warmup=0, repeat=3, rounds=1)
    assert timing["ratio"] > 1.5


def test_validators():
    with pytest.raises(ValueError, match="lr must be > 0"):
        check_positive("lr", -1)
    with pytest.raises(ValueError, match="lr must be finite"):
        check_positive("lr", float("nan"))
    with pytest.raises(ValueError, match="mode='x'"):
        check_choice("mode", "x", ["a", "b"])
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    assert resolve_device("cpu") == "cpu"
