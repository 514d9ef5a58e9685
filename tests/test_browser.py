"""The interactive path in a real browser: JupyterLab from this venv on localhost, headless Chromium
driven by selenium, notebook 00 run with "Run All Cells" under the ci profile, its explorer moved
(the optimizer dropdown, then the learning-rate readout), and the plotly figure and the readout checked
to change. A screenshot lands in ``runs/browser/``.

Skipped, with the reason, when chromium, chromedriver or selenium is missing (``.ci/run`` installs
``chromium chromium-driver``; selenium comes with the ``dev`` extra).
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from l2o_lib.widgets import EXPLORER_CLASS, FIGURE_CLASS, READOUT_CLASS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "00_quickstart.ipynb"
SHOTS = ROOT / "runs" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

try:
    from selenium import webdriver
    from selenium.common.exceptions import JavascriptException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    webdriver = None

if webdriver is None or not CHROMIUM or not CHROMEDRIVER:
    missing = [name for name, ok in (("selenium (pip install -e '.[dev]')", webdriver), ("chromium", CHROMIUM),
                                     ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER)) if not ok]
    pytest.skip(f"browser test needs {', '.join(missing)}", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SERVER_START_S = 90    # JupyterLab up and answering /api/status
RUN_ALL_S = 180        # kernel start + every cell of notebook 00 under ci (about 30 s alone on 2 cores)
RERUN_S = 60           # one rerun of the explorer (a 300-step training, about a second)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ci_copy(root: Path) -> Path:
    """Notebook 00 in ``root`` with ``profile = "ci"`` (what papermill would inject), and the
    project's ``data/`` linked in so MNIST-1D is not generated again."""
    nb = json.loads(NOTEBOOK.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"])
    assert 'profile = "quick"' in source, "notebook 00's parameters cell no longer sets profile = \"quick\""
    cell["source"] = source.replace('profile = "quick"', 'profile = "ci"', 1)
    path = root / NOTEBOOK.name
    path.write_text(json.dumps(nb))
    (ROOT / "data").mkdir(exist_ok=True)
    (root / "data").symlink_to(ROOT / "data", target_is_directory=True)
    return path


def start_lab(root: Path, work: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab from this venv (``sys.executable``) on 127.0.0.1:``port``, its own session and
    process group (so its kernels end with it), user settings and workspaces in ``work``. The kernel
    inherits the environment: not headless (no L2O_HEADLESS / CI), this tree's ``l2o_lib`` first."""
    env = {k: v for k, v in os.environ.items() if k not in ("L2O_HEADLESS", "CI")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               JUPYTER_RUNTIME_DIR=str(work / "runtime"), JUPYTER_CONFIG_DIR=str(work / "config"),
               IPYTHONDIR=str(work / "ipython"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={work / 'settings'}", f"--LabApp.workspaces_dir={work / 'workspaces'}"]
    if os.geteuid() == 0:  # CI containers run as root; the server refuses that without this flag
        cmd.append("--allow-root")
    # No news / update prompt: it would ask to fetch from the network and cover part of the screenshot.
    settings = work / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    log = open(work / "lab.log", "wb")
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(proc: subprocess.Popen, port: int, token: str, log: Path) -> None:
    """Poll /api/status until it answers (or the server exits, or SERVER_START_S pass)."""
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)  # polling a server that is not up yet: no event to wait on
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server and kernels), SIGKILL it if still there after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    try:  # kernels left behind in the group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def chromium() -> "webdriver.Chrome":
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


FIGURE_JS = f"""
const g = document.querySelector('.{FIGURE_CLASS} .js-plotly-plot');
return g && g.data ? JSON.stringify(g.data.map(t => ({{name: t.name, y: t.y}}))) : null;
"""

ERRORS_JS = """
return Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
  .map(e => e.textContent).filter(t => t.includes('Traceback')).join('\\n----\\n');
"""


def trace_y(trace: dict) -> list[float]:
    """A drawn trace's y values: a list, or plotly's typed-array form ``{dtype, bdata}`` (base64)."""
    y = trace["y"]
    if isinstance(y, dict):
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    return list(y)


def readout(driver) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f".{READOUT_CLASS}")
    return found[0].get_attribute("textContent").strip() if found else ""


def wait_until(driver, seconds: float, what: str, predicate):
    """WebDriverWait on ``predicate(driver)``, failing early with the notebook's tracebacks when a
    cell raised, and with ``what`` and the readout on timeout."""
    def check(d):
        errors = d.execute_script(ERRORS_JS)
        if errors:
            pytest.fail(f"a cell failed while waiting for {what}:\n{errors[-3000:]}")
        return predicate(d)

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5, ignored_exceptions=(JavascriptException,)).until(check)
    except TimeoutException:
        pytest.fail(f"no {what} within {seconds} s; readout: {readout(driver)!r}")


def settled(driver) -> str | bool:
    """The readout once a render finished (not empty, not "running…"), else False."""
    text = readout(driver)
    return text if text and not text.startswith("running") else False


def kernel_connected(port: int, token: str, name: str) -> bool:
    """The server holds a session for notebook ``name`` whose kernel is idle with a client connected
    (the page's own connection: before it, Run All would ask which kernel to start)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/sessions?token={token}", timeout=5) as r:
        sessions = json.load(r)
    return any(s["path"] == name and s["kernel"]["execution_state"] == "idle" and s["kernel"]["connections"] > 0
               for s in sessions)


def run_all_cells(driver, port: int, token: str, name: str) -> None:
    """JupyterLab's menu: Run → Run All Cells, once the notebook's kernel is up and connected."""
    wait = WebDriverWait(driver, 90, ignored_exceptions=(OSError,))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell"))
    wait.until(lambda d: kernel_connected(port, token, name))
    wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget").text
               or any("| Idle" in e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-StatusBar-TextItem")))
    def labelled(css: str, text: str):
        return lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.text.strip() == text), None)

    wait.until(labelled(".lm-MenuBar-item", "Run")).click()
    wait.until(labelled(".lm-Menu-item .lm-Menu-itemLabel", "Run All Cells")).click()


def test_notebook_00_explorer_reruns_and_redraws_in_jupyterlab(tmp_path):
    root, work = tmp_path / "lab", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    path = ci_copy(root)
    port, token = free_port(), os.urandom(16).hex()
    SHOTS.mkdir(parents=True, exist_ok=True)
    proc = start_lab(root, work, port, token)
    driver = None
    try:
        wait_for_server(proc, port, token, work / "lab.log")
        driver = chromium()
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{path.name}?token={token}")
        run_all_cells(driver, port, token, path.name)

        first = wait_until(driver, RUN_ALL_S, "explorer readout after Run All Cells", settled)
        assert first.startswith("adam, lr 0.003:"), first
        before = wait_until(driver, 30, "plotly figure in the explorer", lambda d: d.execute_script(FIGURE_JS))
        box = driver.find_element(By.CSS_SELECTOR, f".{EXPLORER_CLASS}")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)

        # the optimizer dropdown: a <select> whose change event updates the widget model in the kernel
        Select(box.find_element(By.CSS_SELECTOR, ".widget-dropdown select")).select_by_visible_text("sgd")
        second = wait_until(driver, RERUN_S, "readout for sgd",
                            lambda d: (t := settled(d)) and t.startswith("sgd, lr 0.003:") and t)
        after = wait_until(driver, 30, "redrawn figure", lambda d: (f := d.execute_script(FIGURE_JS)) != before and f)
        (old,), (new,) = json.loads(before), json.loads(after)
        assert (old["name"], new["name"]) == ("adam, lr 0.003", "sgd, lr 0.003")
        y_old, y_new = trace_y(old), trace_y(new)
        assert len(y_new) == len(y_old) > 1 and y_new != y_old, "the loss curve did not change"

        # the learning-rate slider, through its editable readout: type a value, Enter
        edit = box.find_element(By.CSS_SELECTOR, ".widget-hslider .widget-readout")
        edit.click()
        edit.send_keys(Keys.CONTROL, "a")
        edit.send_keys("1.0e-1", Keys.ENTER)
        third = wait_until(driver, RERUN_S, "readout for lr 0.1",
                           lambda d: (t := settled(d)) and t.startswith("sgd, lr 0.1:") and t)
        final = wait_until(driver, 30, "figure for lr 0.1", lambda d: (f := d.execute_script(FIGURE_JS)) != after and f)
        assert json.loads(final)[0]["name"] == "sgd, lr 0.1"
        assert len({first, second, third}) == 3

        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
        assert driver.save_screenshot(str(SHOTS / "00_quickstart_explorer.png"))
    except BaseException:
        if driver is not None:
            driver.save_screenshot(str(SHOTS / "00_quickstart_failure.png"))
        sys.stderr.write(f"JupyterLab's log (tail):\n{(work / 'lab.log').read_text()[-3000:]}\n")
        raise
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)
