"""Run directories survive a SIGKILL at the dangerous points (issue 20, item 2).

Each test starts a child process that opens a :class:`~l2o_lib.rundir.Run`, with a hook that
makes it report (one line on stdout) and sleep when it reaches a chosen point, kills it there by
its pid with SIGKILL, and checks what the next process finds.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from l2o_lib.rundir import Run

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

PACKAGE = Path(__file__).resolve().parents[1] / "l2o_lib"

# The child imports l2o_lib.rundir without the package's __init__ (which imports the whole
# library and takes seconds): rundir needs only the standard library and, to save, torch.
PRELUDE = f"""
import os, sys, time, types
package = types.ModuleType("l2o_lib")
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["l2o_lib"] = package
from l2o_lib.rundir import Run

root, point = sys.argv[1], sys.argv[2]

def reached():
    print("reached", flush=True)
    time.sleep(120)

def after(function, when):
    def hooked(*args, **kwargs):
        result = function(*args, **kwargs)
        if when(*args):
            reached()
        return result
    return hooked

def before(function, when):
    def hooked(*args, **kwargs):
        if when(*args):
            reached()
        return function(*args, **kwargs)
    return hooked
"""

# Kill points while Run(resume=False) clears the old run: right after the directory is renamed
# aside, after params.json is deleted, after the first subdirectory is.
CLEAR = PRELUDE + """
if point == "renamed":
    os.rename = after(os.rename, lambda src, dst, *a: ".deleting-" in str(dst))
elif point == "params.json":
    os.unlink = after(os.unlink, lambda name, *a: os.path.basename(name) == "params.json")
elif point == "first-dir":
    os.rmdir = after(os.rmdir, lambda *a: True)
Run("exp", root=root, params={"lr": 0.2}, resume=False)
print("finished", flush=True)
"""

# Kill points while save_checkpoint writes step 3 (keep=2: step 1 is deleted afterwards):
# halfway through writing the temp file, before its rename, before the oldest one is deleted.
# The child stands in for torch (importing it takes seconds) with a module whose save writes the
# bytes the parent serialised with the real torch.save: what is tested is how they reach the disk.
SAVE = PRELUDE + """
payload = open(sys.argv[3], "rb").read()
torch = types.ModuleType("torch")
torch.save = lambda obj, f: f.write(payload)
sys.modules["torch"] = torch
if point == "mid-write":
    def partial(obj, f):
        f.write(payload[: len(payload) // 2])
        f.flush()
        reached()
    torch.save = partial
elif point == "before-rename":
    os.replace = before(os.replace, lambda src, dst, *a: str(src).endswith(".tmp"))
elif point == "before-prune":
    os.unlink = before(os.unlink, lambda name, *a: "step_00000001.pt" in str(name))
Run("ck", root=root).save_checkpoint({}, 3, keep=2)
print("finished", flush=True)
"""


def _start(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when_reached(child: subprocess.Popen, timeout: float = 60) -> None:
    """Wait for the child's report, then SIGKILL it by its pid."""
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    line = child.stdout.readline().strip() if ready else "(no report)"
    if line != "reached":
        child.kill()
        child.wait()
        pytest.fail(f"the child did not stop at its kill point: {line!r} {child.stderr.read()[-2000:]}")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


def _old_run(root: Path) -> None:
    run = Run("exp", root=root, params={"lr": 0.1})
    for step in range(4):
        run.log_metrics(step, loss=1.0 / (step + 1))
    run.save_checkpoint({"x": torch.tensor(2.0)}, 2)
    run.save_checkpoint({"x": torch.tensor(4.0)}, 4)
    run.save_result("summary", {"loss": 0.25})


@pytest.mark.parametrize("point", ["renamed", "params.json", "first-dir"])
def test_a_kill_while_clearing_leaves_a_directory_the_next_run_handles(tmp_path, point):
    killed = tmp_path / "killed"
    _old_run(killed)
    _kill_when_reached(_start(CLEAR, killed, point))
    copy = tmp_path / "copy"
    shutil.copytree(killed, copy)

    fresh = Run("exp", root=killed, params={"lr": 0.3}, resume=False)
    assert fresh.params == {"lr": 0.3} and fresh.checkpoint_steps == [] and fresh.metrics == []
    auto = Run("exp", root=copy, params={"lr": 0.3}, resume="auto")  # must not adopt stale checkpoints
    assert not auto.resumed and auto.params == {"lr": 0.3}
    assert auto.checkpoint_steps == [] and auto.metrics == [] and not auto.has_result("summary")
    for root in (killed, copy):  # the half-deleted copy renamed aside is gone too
        assert sorted(p.name for p in root.iterdir()) == ["exp"]


@pytest.mark.parametrize("point, survivor", [("mid-write", 2), ("before-rename", 2), ("before-prune", 3)])
def test_a_kill_while_saving_a_checkpoint_leaves_a_usable_one(tmp_path, point, survivor):
    run = Run("ck", root=tmp_path)
    for step in (1, 2):
        run.save_checkpoint({"w": torch.full((1000,), float(step))}, step, keep=2)
    payload = tmp_path / "step3.bin"
    torch.save({"w": torch.full((1000,), 3.0)}, payload)
    _kill_when_reached(_start(SAVE, tmp_path, point, payload))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no damaged checkpoint to set aside
        run = Run("ck", root=tmp_path)
        step, state = run.latest_checkpoint()
    assert step == survivor and torch.equal(state["w"], torch.full((1000,), float(step)))
    assert not [p.name for p in (run.path / "checkpoints").iterdir() if p.name.endswith(".tmp")]
