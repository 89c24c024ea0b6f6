"""Whether the browser phase (tests/browser) can run here and which labs it runs: shared by its fixtures and
by tests/conftest.py, which leaves a lab's nbval run to the browser phase when that phase runs the lab (in this
pytest session, or in the process ``make test`` starts beside it: ``ECHO_TUTOR_BROWSER_BESIDE=1``)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def chromium_path() -> str | None:
    """``$ECHO_TUTOR_CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on PATH (None when none runs)."""
    env = os.environ.get("ECHO_TUTOR_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_can_run() -> bool:
    """Chromium, Playwright, JupyterLab and jupytext are all here (else every browser test skips)."""
    return chromium_path() is not None and all(
        importlib.util.find_spec(m) is not None for m in ("playwright", "jupyterlab", "jupytext"))


def selected_labs() -> list[str]:
    """The labs the browser phase runs: ``ECHO_TUTOR_BROWSER_LABS=01,07`` (number prefixes or names), default all."""
    labs = sorted(p.stem for p in NOTEBOOKS.glob("0[0-9]_*.ipynb"))
    want = [w.strip() for w in os.environ.get("ECHO_TUTOR_BROWSER_LABS", "").split(",") if w.strip()]
    if not want:
        return labs
    return [lab for lab in labs if any(lab == w or lab.startswith(w.zfill(2) + "_") or lab.startswith(w) for w in want)]
