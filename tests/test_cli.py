"""The l2o command, the notebook runner's failure reporting, the bench runner and the profiles."""

import json
import os
from datetime import datetime, timezone

import nbformat
import pytest
import torch

from l2o_lib import benchmark, cli, runner
from l2o_lib.benchmark import compare, find_cases, run_case
from l2o_lib.config import check_choice, check_positive, get_profile, resolve_device
from l2o_lib.runner import NOTEBOOK_DIR, NotebookResult, collect_summaries, find_notebooks, run_notebook

JAN_2020 = datetime(2020, 1, 1, 12, 0, tzinfo=timezone.utc).timestamp()


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
    assert cli._parse_value("cuda:0") == "cuda:0" and cli._parse_value("runs/other") == "runs/other"
    for text in ("{'SGD': 0.1", "[1, 2", "1O0", "0.1.2", "'cpu"):
        with pytest.raises(ValueError, match="lrs=.*not a valid Python literal"):
            cli._parse_value(text, "lrs")


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


def write_summary(root, notebook, content, *, when=None):
    path = root / "ci" / notebook / "results" / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    if when is not None:
        os.utime(path, (when, when))
    return path


def test_collect_summaries(tmp_path):
    write_summary(tmp_path, "00_x", [{"method": "SGD", "metric": "acc", "value": 0.5}], when=JAN_2020)
    table = collect_summaries("ci", root=tmp_path)
    assert table.to_dict("records") == [{"notebook": "00_x", "status": "ok", "as_of": "2020-01-01 12:00 UTC",
                                         "method": "SGD", "metric": "acc", "value": 0.5}]


def test_collect_summaries_marks_failed_notebooks(tmp_path):
    write_summary(tmp_path, "00_x", [{"method": "SGD", "metric": "acc", "value": 0.5}], when=JAN_2020)
    write_summary(tmp_path, "01_y", [{"method": "Adam", "metric": "acc", "value": 0.7}])
    write_summary(tmp_path, "02_z", [{"method": "BFGS", "metric": "acc", "value": 0.9}])
    rows = collect_summaries("ci", root=tmp_path, failed=["00_x", "01_y", "03_w"], since=JAN_2020 + 60)
    status = dict(zip(rows["notebook"], rows["status"]))
    assert status == {"00_x": "FAILED: numbers from 2020-01-01 12:00 UTC, an earlier run",
                      "01_y": "FAILED: numbers from this run, written before it failed",
                      "02_z": "ok", "03_w": "FAILED: no numbers"}


@pytest.mark.parametrize("content", ["{garbage", "", "3", '["a", "b"]', b"\xff\xfe"])
def test_collect_summaries_reports_an_unreadable_summary(tmp_path, content):
    write_summary(tmp_path, "00_x", [{"method": "SGD", "metric": "acc", "value": 0.5}])
    bad = write_summary(tmp_path, "03_y", "x")
    bad.write_bytes(content) if isinstance(content, bytes) else bad.write_text(content)
    rows = collect_summaries("ci", root=tmp_path).set_index("notebook")
    assert rows.loc["00_x", "value"] == 0.5
    assert rows.loc["03_y", "status"].startswith(f"UNREADABLE: {bad}")
    assert "l2o run 03_y --profile ci" in rows.loc["03_y", "status"]


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


# --- bad input is refused before any work ------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a notebook or a bench case would start."""
    import papermill

    def started(*args, **kwargs):
        raise AssertionError("work started despite bad input")

    monkeypatch.setattr(papermill, "execute_notebook", started)
    monkeypatch.setattr(runner, "run_notebook", started)
    monkeypatch.setattr(benchmark, "run_cases", started)
    monkeypatch.setattr(benchmark, "run_case", started)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
RUN = ["run", "--profile", "ci"]
BAD_CLI = [  # (arguments, words stderr must contain)
    (RUN + ["00", "-p", "steps", "0"], ["steps=0", "00_quickstart", "integer >= 1 or None"]),
    (RUN + ["00", "-p", "steps", "-5"], ["steps=-5"]),
    (RUN + ["00", "-p", "steps", "1O0"], ["steps='1O0'", "not a valid Python literal"]),
    (RUN + ["00", "-p", "seeds", "0"], ["seeds=0"]),
    (RUN + ["00", "-p", "seeds", "True"], ["seeds=True"]),
    (RUN + ["00", "-p", "batch_size", "0"], ["batch_size=0"]),
    (RUN + ["03", "-p", "d", "100"], ["d=100", "03_sl2o", "<= 17", "sub_epochs", "per_epoch"]),
    (RUN + ["02", "-p", "d", "0"], ["d=0", "02_pbfgs"]),
    (RUN + ["02", "-p", "d", "31"], ["d=31", "<= 30", "sample_epochs"]),
    (RUN + ["03", "-p", "overrides", "{'sub_epochs': 2}"], ["SETTINGS['d']=17", "sub_epochs=2"]),
    (RUN + ["00", "-p", "profile", "quick"], ["-p profile", "--profile"]),
    (RUN + ["00", "-p", "bogus", "5"], ["bogus", "00_quickstart", "allowed", "batch_size"]),
    (RUN + ["00", "-p", "lrs", "{'SGD': 0.1"], ["lrs=", "not a valid Python literal"]),
    (RUN + ["00", "-p", "lrs", "{'SGD': 0.1, 'Sgdd': 0.1}"], ["lrs=", "'momentum'", "'sgd'"]),
    (RUN + ["00", "-p", "lrs", "{'SGD': 0.1, 'Momentum': -0.05, 'Adam': 0.003}"], ["lrs=", "> 0"]),
    (RUN + ["03", "-p", "overrides", "{'meta_epoch': 3}"], ["meta_epoch", "allowed keys", "meta_epochs"]),
    (RUN + ["03", "-p", "overrides", "[('meta_epochs', 3)]"], ["overrides=", "must be a dict"]),
    (RUN + ["04", "-p", "overrides", "{'steps': 0}"], ["overrides['steps']=0"]),
    (RUN + ["02", "-p", "overrides", "{'per_epoch': 0}"], ["overrides['per_epoch']=0"]),
    pytest.param(RUN + ["00", "-p", "device", "cuda"], ["device='cuda'", "CUDA is not available"], marks=NO_CUDA),
    (RUN + ["00", "-p", "device", "tpu"], ["device='tpu'"]),
    (RUN + ["00", "-p", "dataset", "nope"], ["dataset='nope'", "mnist1d"]),
    (RUN + ["00", "-p", "model_name", "nope"], ["model_name='nope'", "mlp"]),
    (RUN + ["01", "-p", "seed", "-1"], ["seed=-1", "01_subspaces", "integer >= 0"]),
    (RUN + ["01", "-p", "seed", "0.5"], ["seed=0.5"]),
    (RUN + ["01", "-p", "seed", "1", "-p", "seed", "2"], ["'seed'", "twice"]),
    (RUN + ["06", "-p", "steps", "0"], ["steps=0", "06_landscapes"]),
    (RUN + ["07", "-p", "backend", "matlab"], ["backend='matlab'", "pyoperon"]),
    (RUN + ["08", "-p", "bench_dir", ""], ["bench_dir=''"]),
    (RUN + ["00", "03", "-p", "d", "10"], ["'d'", "00_quickstart"]),   # a key one selected notebook lacks
    (RUN + ["-p", "seed", "1"], ["'seed'", "00_quickstart"]),          # all notebooks: 00 and 08 take no seed
    (RUN + ["99_nothing"], ["99_nothing", "not found"]),
    (RUN + ["00", "--jobs", "0"], ["--jobs"]),
    (["bench", "momentum_step", "--out", "README.md"], ["--out", "README.md", "not a directory"]),
    (["bench", "momentum_step", "--out", "README.md/records"], ["--out", "README.md"]),
    (["bench", "nope"], ["unknown bench case"]),
    (["bench", "momentum_step", "--device", "tpu"], ["device='tpu'"]),
]


@pytest.mark.parametrize("argv, words", BAD_CLI, ids=lambda x: " ".join(x)[:60] if isinstance(x[0], str) and
                         x[0] in ("run", "bench") else None)
def test_cli_refuses_bad_input_before_any_work(argv, words, capsys, no_work, monkeypatch):
    monkeypatch.chdir(runner.REPO_ROOT)   # --out README.md is the repository's README
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, (word, err)


def test_run_notebook_checks_parameters_before_papermill(no_work):
    with pytest.raises(ValueError, match="steps=0 is not allowed for notebook 00_quickstart"):
        runner.run_notebooks([NOTEBOOK_DIR / "00_quickstart.ipynb"], profile="ci", parameters={"steps": 0})
    with pytest.raises(ValueError, match="unknown parameter.*'seed'.*00_quickstart"):
        runner.run_notebooks([NOTEBOOK_DIR / "01_subspaces.ipynb", NOTEBOOK_DIR / "00_quickstart.ipynb"],
                             profile="ci", parameters={"seed": 1})


def test_run_notebook_itself_checks_parameters(monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("papermill started"))
    with pytest.raises(ValueError, match="overrides key.*'bogus'.*allowed keys"):
        run_notebook(NOTEBOOK_DIR / "03_sl2o.ipynb", profile="ci", parameters={"overrides": {"bogus": 1}})
    with pytest.raises(ValueError, match="profile must not be passed"):
        run_notebook(NOTEBOOK_DIR / "03_sl2o.ipynb", profile="ci", parameters={"profile": "quick"})


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """``l2o run`` writing under tmp_path, with notebooks that "run" as ``outcomes`` says (no kernel)."""
    outcomes = {}

    def fake_run_notebook(path, *, profile, parameters=None, cwd=None, **kwargs):
        output = tmp_path / "runs" / profile / "notebooks" / path.name
        written, error = outcomes[path.stem]
        if written:
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text("{}")
        return NotebookResult(path.stem, output, 0.1, error)

    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(runner, "run_notebook", fake_run_notebook)
    return outcomes


def test_results_md_marks_a_failed_notebook_and_the_date_of_its_numbers(tmp_path, fake_runs, capsys):
    runs = tmp_path / "runs"
    write_summary(runs, "00_quickstart", [{"method": "SGD", "metric": "acc", "value": 0.5}], when=JAN_2020)
    write_summary(runs, "01_subspaces", [{"method": "DLDR", "metric": "acc", "value": 0.6}], when=JAN_2020)
    fake_runs.update({"00_quickstart": (False, "KernelDied: before writing"), "01_subspaces": (True, None),
                      "02_pbfgs": (True, "AssertionError: x")})
    assert cli.main(["run", "00", "01", "02", "--profile", "ci"]) == 1
    err = capsys.readouterr().err
    assert "executed notebook: " not in err.split("=== 02_pbfgs")[0]                 # 00's was never written
    assert f"the executed notebook was not written ({runs / 'ci' / 'notebooks' / '00_quickstart.ipynb'}" in err
    assert f"executed notebook: {runs / 'ci' / 'notebooks' / '02_pbfgs.ipynb'}" in err
    table = (runs / "ci" / "results.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "FAILED: numbers from 2020-01-01 12:00 UTC, an earlier run" in rows["00_quickstart"]
    assert "| ok " in rows["01_subspaces"] and "2020-01-01 12:00 UTC" in rows["01_subspaces"]
    assert "FAILED: no numbers" in rows["02_pbfgs"]


def test_a_corrupt_summary_of_another_notebook_is_a_warning_not_a_crash(tmp_path, fake_runs, capsys):
    runs = tmp_path / "runs"
    write_summary(runs, "00_quickstart", [{"method": "SGD", "metric": "acc", "value": 0.5}])
    bad = write_summary(runs, "03_sl2o", '[{"method": "SL2O", "met')
    fake_runs["00_quickstart"] = (True, None)
    assert cli.main(["run", "00", "--profile", "ci"]) == 0
    err = capsys.readouterr().err
    assert f"warning: UNREADABLE: {bad}" in err and "rerun the notebook: l2o run 03_sl2o --profile ci" in err
    table = (runs / "ci" / "results.md").read_text()
    assert "| 00_quickstart | ok" in table and "UNREADABLE" in table


def test_results_md_collects_every_notebooks_claims(tmp_path, fake_runs):
    import json

    runs = tmp_path / "runs"
    write_summary(runs, "00_quickstart", [{"method": "SGD", "metric": "acc", "value": 0.5}])
    from l2o_lib.claims import claim_row

    row = claim_row(claim="SL2O converges faster than Momentum†", source="Table 1", paper="3.41-6.68x",
                    ours_paper_protocol="4.1", ours_strong="2.2", seeds=3, interval=(3.0, 5.0), verdict="reproduced")
    (runs / "ci" / "03_sl2o" / "results").mkdir(parents=True)
    (runs / "ci" / "03_sl2o" / "results" / "claims.json").write_text(json.dumps([row]))
    fake_runs["00_quickstart"] = (True, None)
    assert cli.main(["run", "00", "--profile", "ci"]) == 0
    table = (runs / "ci" / "results.md").read_text()
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in table.split("## Claims")[1].strip().splitlines()]
    assert cells[0][:4] == ["notebook", "claim", "source", "paper"]
    assert cells[2][:4] == ["03_sl2o", "SL2O converges faster than Momentum†", "Table 1", "3.41-6.68x"]
    assert "[3, 5]" in cells[2] and "reproduced" in cells[2]


def test_parallel_run_starts_a_notebook_after_those_it_reads(tmp_path, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    events, lock = [], threading.Lock()

    def fake_run_notebook(path, *, profile, parameters=None, cwd=None, **kwargs):
        with lock:
            events.append(("start", path.stem))
        time.sleep({"03_sl2o": 0.3, "05_l3rs": 0.2}.get(path.stem, 0.05))
        with lock:
            events.append(("end", path.stem))
        return NotebookResult(path.stem, tmp_path / path.name, 0.1, None)

    monkeypatch.setattr(runner, "run_notebook", fake_run_notebook)
    monkeypatch.setattr(runner, "ProcessPoolExecutor", ThreadPoolExecutor)
    names = ["00_quickstart", "03_sl2o", "05_l3rs", "07_symbolic", "08_benchmarks"]
    paths = [NOTEBOOK_DIR / f"{n}.ipynb" for n in names]
    done = []
    results = runner.run_notebooks(paths, profile="ci", jobs=2, on_done=done.append)
    assert [r.name for r in results] == names and sorted(r.name for r in done) == sorted(names)
    at = {e: i for i, e in enumerate(events)}
    assert at[("start", "07_symbolic")] > max(at[("end", "03_sl2o")], at[("end", "05_l3rs")])
    assert at[("start", "08_benchmarks")] > at[("end", "07_symbolic")]
    assert at[("start", "05_l3rs")] < at[("end", "03_sl2o")]      # independent ones do run side by side


def test_the_notebooks_that_reuse_trained_optimizers_wait_for_every_kind():
    # runner.NEEDS names the notebooks literally (runner stays light for CLI errors); it must follow
    # artifacts.KINDS, the notebooks that save a trained optimizer, and 08 waits for every notebook.
    from l2o_lib.artifacts import KINDS

    trained = {kind.notebook for kind in KINDS.values()}
    assert set(runner.NEEDS["06_landscapes"]) == set(runner.NEEDS["07_symbolic"]) == trained
    assert set(runner.NEEDS["08_benchmarks"]) == {p.stem for p in runner.find_notebooks([])} - {"08_benchmarks"}
