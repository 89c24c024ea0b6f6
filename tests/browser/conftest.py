"""Fixtures for the browser test: a JupyterLab server on a temporary copy of the labs, and headless Chromium.

Environment:

* ``ECHO_TUTOR_BROWSER_LABS=01,07``: only these labs (number prefixes or names); default all.
* ``ECHO_TUTOR_SCREENSHOTS=DIR``: where the screenshots go (default: a pytest temporary folder).
* ``ECHO_TUTOR_CHROMIUM=PATH``: the browser (default ``/usr/bin/chromium``, else ``chromium`` on PATH).
* ``ECHO_TUTOR_BROWSER_TIMEOUT=SECONDS``: how long Run All may take per lab (default 420).
* ``ECHO_TUTOR_BROWSER_CONTROLS=N|all``: how many controls of each figure cell are moved (default 1).
* ``ECHO_TUTOR_BROWSER_CELLS=N|all``: in how many figure cells of a lab (default 2).

The server is started the way ``make lab`` starts it (the repository's ``.jupyter`` folder on
``JUPYTER_CONFIG_PATH``), with ``ECHO_TUTOR_SOLUTIONS=both`` and ``ECHO_TUTOR_FAST=1`` (one execution of
each lab is the learner's no-exercise run and the instructor's solved run, so nbval leaves the labs this phase
runs to it: the root ``conftest.py``), but on a copy of
``notebooks/`` in a temporary folder and with its own Jupyter config, runtime, settings and workspace
folders, so the real tree and ~/.jupyter are never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from browser_env import chromium_path  # tests/ is on sys.path (rootdir conftest)

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def pytest_collection_modifyitems(config, items):
    """Browser tests run last (after the unit tests)."""
    browser = [it for it in items if it.get_closest_marker("browser")]
    if browser:
        items[:] = [it for it in items if not it.get_closest_marker("browser")] + browser


# -- results shown at the end of the run --------------------------------------------------------------------

_REPORT: dict = {"screenshots": None, "labs": {}}


def record(lab: str, **info) -> None:
    _REPORT["labs"].setdefault(lab, {}).update(info)


def pytest_terminal_summary(terminalreporter):
    if not _REPORT["labs"] and not _REPORT["screenshots"]:
        return
    tr = terminalreporter
    tr.section("browser: labs in JupyterLab (headless Chromium)")
    if _REPORT["screenshots"]:
        tr.write_line(f"screenshots: {_REPORT['screenshots']}")
    for lab, info in _REPORT["labs"].items():
        parts = [f"{k}={v}" for k, v in info.items() if k != "warnings"]
        tr.write_line(f"{lab}: " + "  ".join(parts))
        for w in info.get("warnings", []):
            tr.write_line(f"    note: {w}")


# -- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> pathlib.Path:
    env = os.environ.get("ECHO_TUTOR_SCREENSHOTS")
    path = pathlib.Path(env) if env else tmp_path_factory.mktemp("browser-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    _REPORT["screenshots"] = str(path)
    print(f"\n[browser] screenshots go to {path}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env(base: pathlib.Path) -> dict:
    env = dict(os.environ)
    for key in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        env.pop(key, None)
    env.update(
        JUPYTER_CONFIG_DIR=str(base / "jupyter-config"),  # not ~/.jupyter: no user config, settings or workspaces
        JUPYTER_CONFIG_PATH=os.pathsep.join([str(REPO / ".jupyter")] + ([os.environ["JUPYTER_CONFIG_PATH"]] if os.environ.get("JUPYTER_CONFIG_PATH") else [])),
        JUPYTER_RUNTIME_DIR=str(base / "runtime"),
        # one execution per lab: the learner's no-exercise run (each stub must say "not attempted yet") and
        # the instructor's run with every solution checked and used (echo_tutor.labs.switches.solutions_mode)
        ECHO_TUTOR_SOLUTIONS="both",
        ECHO_TUTOR_FAST="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.pop("ECHO_TUTOR_KEEP_OUTPUTS", None)
    # Chromium and the server need a core: a kernel whose OpenMP threads spin on every core beside them crawls
    # (lab 06 took 483 s to Run All with 2 threads on 2 cores, 130 s with 1)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("TRITON_INTERPRET", "1")
    except ImportError:
        pass
    return env


class LabServer:
    def __init__(self, url: str, token: str, root: pathlib.Path, log: pathlib.Path, proc: subprocess.Popen):
        self.url, self.token, self.root, self.log, self.proc = url, token, root, log, proc

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory) -> LabServer:
    if importlib.util.find_spec("jupyterlab") is None or importlib.util.find_spec("jupytext") is None:
        pytest.skip("JupyterLab or jupytext is not installed in this environment (pip install -e '.[lab,test]')")
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "repo" / "notebooks"
    root.parent.mkdir()
    # the labs as the repository has them now (working tree), with their timestamps (jupytext compares them)
    shutil.copytree(NOTEBOOKS, root, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    settings = base / "lab-settings"
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    # every cell attached to the page, so every figure is drawn and can be checked without scrolling
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    for d in ("jupyter-config", "runtime", "workspaces"):
        (base / d).mkdir()
    # a git repository of the copy: after each lab, `git status --porcelain` must be empty
    shutil.copy2(REPO / ".gitignore", root.parent / ".gitignore")
    git = ["git", "-c", "user.name=browser-test", "-c", "user.email=browser-test@localhost", "-c", "commit.gpgsign=false"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "labs as in the working tree"]):
        subprocess.run(git + args, cwd=root.parent, check=True, capture_output=True)

    port, token = _free_port(), "echo-tutor-browser-test"
    log = base / "jupyterlab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={base / 'workspaces'}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands, read the notebook model
        "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=root, env=_server_env(base), stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = LabServer(f"http://127.0.0.1:{port}", token, root, log, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{server.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                server.api("/api/status")
                break
            if time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not answer on port {port} within 90 s:\n{server.log_tail()}")
            time.sleep(0.5)
        print(f"\n[browser] JupyterLab {server.url} on {root} (log {log})")
        yield server
    finally:
        with contextlib.suppress(Exception):  # kernels run in their own sessions: shut them down through the server
            for k in server.api("/api/kernels") or []:
                server.api(f"/api/kernels/{k['id']}", method="DELETE")
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started (its own process group; SIGTERM makes it shut its kernels down)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of ours left in the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def browser():
    exe = chromium_path()
    if exe is None and os.environ.get("ECHO_TUTOR_CHROMIUM"):
        pytest.skip(f"ECHO_TUTOR_CHROMIUM={os.environ['ECHO_TUTOR_CHROMIUM']} is not an executable browser")
    if exe is None:
        pytest.skip("no Chromium at /usr/bin/chromium or on PATH (scripts/setup.sh installs Debian's `chromium` "
                    "as root; or set ECHO_TUTOR_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=exe,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                  "--disable-extensions", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            b.close()
