"""Crash-safe writes and run directories (l2o_lib.files, l2o_lib.rundir, l2o_lib.results)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from l2o_lib.files import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from l2o_lib.results import read_params
from l2o_lib.rundir import Run, resume_or_start


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- atomic writes


def test_atomic_writes_round_trip_and_leave_no_temp_files(tmp_path):
    nested = tmp_path / "a" / "b"
    atomic_write_bytes(nested / "x.bin", b"\x00\x01")
    atomic_write_text(nested / "x.txt", "héllo\n")
    obj = {
        "f": np.float32(0.5),
        "i": np.int64(3),
        "arr": np.arange(3),
        "t0": torch.tensor(2.5),
        "t": torch.ones(2, requires_grad=True),
        "tuple": (1, 2),
    }
    atomic_write_json(nested / "x.json", obj)
    atomic_torch_save(nested / "x.pt", {"w": torch.arange(4)})

    assert (nested / "x.bin").read_bytes() == b"\x00\x01"
    assert (nested / "x.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((nested / "x.json").read_text()) == {
        "f": 0.5, "i": 3, "arr": [0, 1, 2], "t0": 2.5, "t": [1.0, 1.0], "tuple": [1, 2],
    }
    assert torch.equal(torch.load(nested / "x.pt")["w"], torch.arange(4))
    assert _leftovers(nested) == []
    assert oct((nested / "x.txt").stat().st_mode & 0o777) == oct(0o644)


def test_crash_before_rename_keeps_the_original(tmp_path, monkeypatch):
    target = tmp_path / "params.json"
    atomic_write_json(target, {"version": 1})

    def crash(src, dst):
        raise OSError("simulated crash during os.replace")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"version": 2})
    with pytest.raises(OSError):
        atomic_torch_save(tmp_path / "ckpt.pt", {"a": torch.zeros(1)})

    assert json.loads(target.read_text()) == {"version": 1}
    assert not (tmp_path / "ckpt.pt").exists()
    assert _leftovers(tmp_path) == []


def test_unserialisable_json_raises_before_touching_the_file(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, [1])
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert json.loads(target.read_text()) == [1]


# --------------------------------------------------------------------------- Run


def test_run_writes_params_json(tmp_path):
    run = Run("exp", root=tmp_path, params={"lr": np.float64(0.1), "steps": 10, "betas": (0.9, 0.99)})
    info = json.loads((tmp_path / "exp" / "params.json").read_text())
    assert info["params"] == {"lr": 0.1, "steps": 10, "betas": [0.9, 0.99]}
    assert set(info) >= {"git_commit", "torch_version", "created"}
    assert info["git_commit"] is None or len(info["git_commit"]) >= 40
    assert run.params == info["params"] and not run.resumed


def test_run_accepts_a_dataclass_as_params(tmp_path):
    @dataclass(frozen=True)
    class P:
        lr: float = 0.1
        name: str = "adam"

    run = Run("dc", root=tmp_path, params=P())
    assert run.params == {"lr": 0.1, "name": "adam"}
    assert Run("dc", root=tmp_path, params=P()).resumed


def test_metrics_persist_and_reload_on_resume(tmp_path):
    run = Run("m", root=tmp_path, params={"a": 1})
    run.log_metrics(0, loss=torch.tensor(1.5), acc=np.float32(0.25))
    run.log_metrics(1, loss=1.0)
    assert run.metrics == [{"step": 0, "loss": 1.5, "acc": 0.25}, {"step": 1, "loss": 1.0}]

    again = Run("m", root=tmp_path, params={"a": 1})
    assert again.resumed and again.metrics == run.metrics
    frame = again.metrics_frame()
    assert list(frame.columns)[0] == "step" and list(frame["loss"]) == [1.5, 1.0]
    assert Run("m", root=tmp_path).metrics == run.metrics  # params=None: reopen for analysis


def test_torn_metrics_line_is_dropped_with_a_warning(tmp_path):
    run = Run("torn", root=tmp_path)
    run.log_metrics(0, loss=1.0)
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "lo')  # killed mid-write
    with pytest.warns(RuntimeWarning, match="unreadable"):
        again = Run("torn", root=tmp_path)
    again.log_metrics(1, loss=0.5)
    assert Run("torn", root=tmp_path).metrics == [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}]


def test_checkpoints_keep_only_the_newest(tmp_path):
    run = Run("ck", root=tmp_path)
    assert run.latest_checkpoint() is None
    for step in (10, 20, 30, 40):
        run.save_checkpoint({"w": torch.full((2,), float(step))}, step, keep=2)
    files = sorted(p.name for p in (run.path / "checkpoints").iterdir())
    assert files == ["step_00000030.pt", "step_00000040.pt"]
    step, state = run.latest_checkpoint()
    assert step == 40 and torch.equal(state["w"], torch.full((2,), 40.0))
    assert torch.equal(run.load_checkpoint(30)["w"], torch.full((2,), 30.0))
    with pytest.raises(FileNotFoundError, match="available"):
        run.load_checkpoint(10)


def test_resume_or_start_continues_from_the_last_checkpoint(tmp_path):
    params = {"steps": 6}
    run = Run("loop", root=tmp_path, params=params)
    start, state = resume_or_start(run, lambda: {"x": torch.tensor(0.0)})
    assert start == 0
    for step in range(start, 5):  # "killed" after logging step 4, last checkpoint at 4 steps
        state["x"] += 1
        run.log_metrics(step, x=state["x"])
        if (step + 1) % 2 == 0:
            run.save_checkpoint(state, step + 1)

    run = Run("loop", root=tmp_path, params=params)
    start, state = resume_or_start(run, lambda: pytest.fail("must not re-initialise"))
    assert start == 4 and float(state["x"]) == 4.0
    assert [m["step"] for m in run.metrics] == [0, 1, 2, 3]  # step 4 is logged again below
    for step in range(start, 6):
        state["x"] += 1
        run.log_metrics(step, x=state["x"])
    assert [m["x"] for m in Run("loop", root=tmp_path).metrics] == [1, 2, 3, 4, 5, 6]


def test_resume_with_different_params_raises(tmp_path):
    Run("p", root=tmp_path, params={"lr": 0.1, "steps": 5})
    with pytest.raises(ValueError, match=r"different params.*lr: 0.1 -> 0.2.*resume=False"):
        Run("p", root=tmp_path, params={"lr": 0.2, "steps": 5})


def test_resume_false_starts_fresh(tmp_path):
    run = Run("fresh", root=tmp_path, params={"lr": 0.1})
    run.log_metrics(0, loss=1.0)
    run.save_checkpoint({"a": torch.zeros(1)}, 1)
    fresh = Run("fresh", root=tmp_path, params={"lr": 0.2}, resume=False)
    assert fresh.metrics == [] and fresh.latest_checkpoint() is None and fresh.params == {"lr": 0.2}


def test_resume_auto_reopens_same_params_and_restarts_on_a_change(tmp_path):
    run = Run("auto", root=tmp_path, params={"lr": 0.1}, resume="auto")
    run.save_checkpoint({"a": torch.zeros(1)}, 1)
    same = Run("auto", root=tmp_path, params={"lr": 0.1}, resume="auto")
    assert same.resumed and same.checkpoint_steps == [1]
    changed = Run("auto", root=tmp_path, params={"lr": 0.2}, resume="auto")
    assert not changed.resumed and changed.latest_checkpoint() is None and changed.params == {"lr": 0.2}
    with pytest.raises(ValueError, match="resume"):
        Run("auto", root=tmp_path, params={"lr": 0.2}, resume="yes")


def test_resume_false_refuses_to_delete_a_foreign_directory(tmp_path):
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to delete"):
        Run("notarun", root=tmp_path, resume=False)
    assert (tmp_path / "notarun" / "precious.txt").exists()


@pytest.mark.parametrize("name", ["", "  ", "a/b", "a\\b", "..", ".hidden", 3, None])
def test_bad_run_name_raises(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        Run(name, root=tmp_path)


def test_results_round_trip_and_validation(tmp_path):
    run = Run("r", root=tmp_path)
    run.save_result("summary", {"final_loss": torch.tensor(0.125), "curve": np.array([1.0, 0.5])})
    assert run.has_result("summary")
    assert run.load_result("summary") == {"final_loss": 0.125, "curve": [1.0, 0.5]}
    with pytest.raises(FileNotFoundError, match="summary"):
        run.load_result("other")
    with pytest.raises(ValueError, match="name"):
        run.save_result("../escape", {})
    with pytest.raises(ValueError, match="keep"):
        run.save_checkpoint({}, 1, keep=0)
    with pytest.raises(ValueError, match="step"):
        run.log_metrics(-1, loss=1.0)


# --------------------------------------------------------------------------- damaged or foreign files (issue 20)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_garbage_params_json_raises_naming_the_file(tmp_path):
    Run("g", root=tmp_path, params={"a": 1})
    params_file = tmp_path / "g" / "params.json"
    params_file.write_text("{not json")
    for resume in (True, "auto"):
        with pytest.raises(ValueError, match=rf"{re.escape(str(params_file))} is not valid JSON.*resume=False"):
            Run("g", root=tmp_path, params={"a": 1}, resume=resume)
    params_file.write_text("[1, 2]")  # valid JSON, but not a run's
    with pytest.raises(ValueError, match=r"params\.json does not hold a run's params"):
        Run("g", root=tmp_path)
    fresh = Run("g", root=tmp_path, params={"a": 2}, resume=False)
    assert fresh.params == {"a": 2} and not fresh.resumed


def test_read_params_names_a_garbage_params_json(tmp_path):
    Run("03_sl2o", root=tmp_path / "ci", params={"d": 4})
    assert read_params("ci", "03_sl2o", root=tmp_path) == {"d": 4}
    (tmp_path / "ci" / "03_sl2o" / "params.json").write_text("")
    with pytest.raises(ValueError, match=r"03_sl2o.params\.json is not valid JSON"):
        read_params("ci", "03_sl2o", root=tmp_path)


def _half_deleted_run(root, name="half"):
    """What an older Run(resume=False) killed while deleting file by file left: no params.json."""
    run = Run(name, root=root, params={"lr": 0.1})
    run.log_metrics(0, loss=1.0)
    run.save_checkpoint({"x": torch.tensor(7.0)}, 5)
    run.save_result("summary", {"loss": 1.0})
    (run.path / "params.json").unlink()
    return run.path


def test_a_directory_without_params_json_is_never_resumed(tmp_path):
    path = _half_deleted_run(tmp_path)
    for resume in (True, "auto"):
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*no params\.json.*resume=False"):
            Run("half", root=tmp_path, params={"lr": 0.2}, resume=resume)
    fresh = Run("half", root=tmp_path, params={"lr": 0.2}, resume=False)  # only run files: may be deleted
    assert fresh.latest_checkpoint() is None and fresh.metrics == [] and not fresh.has_result("summary")

    (tmp_path / "new").mkdir()  # but a creation killed before params.json's rename is no run yet
    (tmp_path / "new" / ".params.json.x1y2.tmp").write_text('{"par')
    run = Run("new", root=tmp_path, params={"a": 1}, resume="auto")
    assert run.params == {"a": 1} and not run.resumed and _leftovers(run.path) == []


def test_a_foreign_directory_is_neither_resumed_nor_deleted(tmp_path):
    path = _half_deleted_run(tmp_path, "mixed")
    (path / "notes.txt").write_text("mine")
    for resume in (True, "auto"):
        with pytest.raises(ValueError, match="not a run directory"):
            Run("mixed", root=tmp_path, params={"lr": 0.1}, resume=resume)
    with pytest.raises(ValueError, match="refusing to delete"):
        Run("mixed", root=tmp_path, resume=False)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoints", "metrics.jsonl", "notes.txt", "results"]


def test_resume_false_renames_the_run_aside_and_leftovers_are_removed(tmp_path, monkeypatch):
    import l2o_lib.rundir as rundir

    old = Run("r", root=tmp_path, params={"lr": 0.1})
    old.save_checkpoint({"x": torch.tensor(1.0)}, 3)
    deleted = []
    monkeypatch.setattr(rundir.shutil, "rmtree", lambda path, **kw: deleted.append(path))  # "killed" here
    fresh = Run("r", root=tmp_path, params={"lr": 0.2}, resume=False)
    assert fresh.latest_checkpoint() is None and fresh.params == {"lr": 0.2}
    assert len(deleted) == 1 and deleted[0].parent == tmp_path and deleted[0].name.startswith(".r.deleting-")
    assert (deleted[0] / "checkpoints" / "step_00000003.pt").exists()  # moved whole, not yet deleted
    monkeypatch.undo()
    Run("other", root=tmp_path)  # any run opened in the root finishes the deletion
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "r"]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run = Run("ck", root=tmp_path, params={"n": 1})
    for step in (10, 20, 30):
        run.log_metrics(step - 1, loss=float(step))
        run.save_checkpoint({"w": torch.full((3,), float(step))}, step, keep=2)
    newest = run.path / "checkpoints" / "step_00000030.pt"
    _truncate(newest)
    with pytest.raises(ValueError, match=rf"{re.escape(str(newest))} is damaged.*delete it"):
        run.load_checkpoint(30)  # an explicit step: no fallback, the file stays
    assert run.checkpoint_steps == [20, 30]

    with pytest.warns(RuntimeWarning, match=r"step_00000030\.pt is damaged.*older checkpoint"):
        start, state = resume_or_start(run, lambda: pytest.fail("must resume from step 20"))
    assert start == 20 and torch.equal(state["w"], torch.full((3,), 20.0))
    assert run.checkpoint_steps == [20] and (newest.parent / "step_00000030.pt.corrupt").exists()
    assert [m["step"] for m in run.metrics] == [9, 19]


def test_when_no_checkpoint_is_intact_the_run_starts_over_with_a_warning(tmp_path):
    run = Run("ck", root=tmp_path)
    run.save_checkpoint({"w": torch.ones(2)}, 1)
    (run.path / "checkpoints" / "step_00000001.pt").write_bytes(b"")
    with pytest.warns(RuntimeWarning) as warned:
        start, state = resume_or_start(run, lambda: {"w": torch.zeros(2)})
    assert ["is damaged" in str(w.message) for w in warned] == [True, False]
    assert "has no intact checkpoint left: starting from the beginning" in str(warned[1].message)
    assert start == 0 and torch.equal(state["w"], torch.zeros(2)) and run.checkpoint_steps == []


def test_an_intact_checkpoint_that_torch_refuses_is_not_set_aside(tmp_path):
    run = Run("np", root=tmp_path)
    run.save_checkpoint({"rng": np.random.default_rng(0).bit_generator.state, "a": np.ones(2)}, 1)
    run.save_checkpoint({"w": torch.ones(1)}, 2)
    _truncate(run.path / "checkpoints" / "step_00000002.pt")
    with pytest.warns(RuntimeWarning, match="damaged"), pytest.raises(Exception, match="Weights only load failed"):
        run.latest_checkpoint()  # step 2 is damaged; step 1 is intact but needs weights_only=False
    assert run.checkpoint_steps == [1]
    assert run.latest_checkpoint(weights_only=False)[0] == 1


def test_a_zero_byte_nes_checkpoint_resumes_from_the_previous_one(tmp_path):
    from l2o_lib.meta import nes_train

    def fitness(members, generation):
        return -(members - 1.0).pow(2).sum(1)

    run = Run("nes", root=tmp_path, params={"g": 4})
    nes_train(torch.zeros(4), fitness, generations=4, pairs=2, checkpoint_every=2, run=run, desc=None)
    assert run.checkpoint_steps == [2, 4]
    (run.path / "checkpoints" / "step_00000004.pt").write_bytes(b"")
    with pytest.warns(RuntimeWarning, match=r"step_00000004\.pt is damaged: it is empty"):
        res = nes_train(torch.zeros(4), fitness, generations=4, pairs=2, checkpoint_every=2, run=run, desc=None)
    assert res.start == 2 and run.checkpoint_steps == [2, 4]


def _sl2o_problem():
    from l2o_lib.data import load_dataset
    from l2o_lib.functional import FlatModel
    from l2o_lib.models import build_model
    from l2o_lib.sl2o import Problem
    from l2o_lib.subspace import random_subspace

    data = load_dataset("logistic", n_train=64, n_test=32, dim=4, seed=0)
    model = FlatModel(build_model("mlp", data.input_shape, data.num_classes, hidden=(4,), seed=0))
    space = random_subspace(model.dim, 3, origin=model.flatten(), seed=0)
    return Problem(model, (data.train.x, data.train.y), 16, space)


def _mlrsnet_meta_train(run):
    from l2o_lib.data import ArrayData
    from l2o_lib.functional import FlatModel
    from l2o_lib.mlrsnet import meta_train

    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
    data = ArrayData(x, (x[:, 0] > 0).long())
    model = FlatModel(torch.nn.Sequential(torch.nn.Linear(5, 2)))
    return meta_train(model, data, data, steps=4, num_classes=2, t_val=2, batch_size=8, val_batch_size=8,
                      hidden=4, run=run, checkpoint_every=2, desc=None)


def test_a_checkpoint_of_another_trainer_is_refused_naming_both(tmp_path):
    from l2o_lib.meta import load_meta_state, meta_state, nes_train
    from l2o_lib.sl2o import LSTMRule
    from l2o_lib.sl2o import meta_train as sl2o_meta_train

    sl2o_run = Run("sl2o", root=tmp_path)
    sl2o_meta_train(LSTMRule(hidden=4), _sl2o_problem(), epochs=1, steps_per_task=4, unroll=2, run=sl2o_run, desc=None)
    with pytest.raises(ValueError, match=r"'sl2o' meta-training, not 'nes'.*another run name.*resume=False"):
        nes_train(torch.zeros(3), lambda m, g: -m.pow(2).sum(1), generations=2, pairs=2, run=sl2o_run, desc=None)
    with pytest.raises(ValueError, match=r"'sl2o' meta-training, not 'mlrsnet'"):
        _mlrsnet_meta_train(sl2o_run)

    mlrsnet_run = Run("mlrsnet", root=tmp_path)
    _mlrsnet_meta_train(mlrsnet_run)
    with pytest.raises(ValueError, match=r"'mlrsnet' meta-training, not 'sl2o'"):
        sl2o_meta_train(LSTMRule(hidden=4), _sl2o_problem(), epochs=5, steps_per_task=4, unroll=2, run=mlrsnet_run,
                        desc=None)

    # A checkpoint written before kinds were recorded still loads.
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(net.parameters())
    assert load_meta_state(meta_state(net, opt, epoch=1), net, opt, kind="sl2o") == {"epoch": 1}

