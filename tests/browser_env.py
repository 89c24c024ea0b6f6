"""Whether the browser phase (tests/browser) can run here: shared by its fixtures and by the notebook tests,
which leave a lab's no-exercise run to the browser when the browser runs that lab in the same session."""

from __future__ import annotations

import importlib.util
import os
import shutil


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
