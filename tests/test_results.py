"""Crash-safe writes and run directories (l2o_lib.results)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from l2o_lib.results import (
    Run,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    resume_or_start,
)


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
