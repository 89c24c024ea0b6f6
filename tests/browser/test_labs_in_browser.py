"""Every lab, opened in JupyterLab in headless Chromium, runs clean, draws its figures, follows its controls,
and saves back to exactly what git has.

For each lab (``notebooks/0*.ipynb``, on a temporary git copy of ``notebooks/``), ``test_lab_in_browser``:

1. opens the lab and runs ``notebook:run-all-cells`` (Run > Run All Cells), waits until the kernel is idle
   and every code cell has an execution count;
2. fails on an error output or a traceback on stderr (also inside output widgets), and on
   "Error displaying widget";
3. checks every plotly figure is drawn (plotly outputs and the cells that display a ``FigureWidget``), with
   finite, sane axis ranges (no NaN/inf, nothing like 1e56 on a log axis);
4. for the first slider (or toggle-buttons group, dropdown) displayed with each of the first two figure cells
   that have one (``ECHO_TUTOR_BROWSER_CONTROLS=all``: every control; ``ECHO_TUTOR_BROWSER_CELLS=all``: every
   cell): moving it one step (arrow
   key on its handle; the next option of the others) changes the figure, and moving it back
   restores the figure exactly as Run All drew it (so after Run All the figure showed the control's value);
5. one execution is the learner's and the instructor's run (the server runs with ``ECHO_TUTOR_SOLUTIONS=both``):
   every exercise cell says "not attempted yet" for a learner who has done none, the last cell lists "0 of N
   passing" for that learner and "N of N passing" for the solutions; this run is the lab's nbval run too
   (fails on any error output, as nbval does), so nbval leaves the labs this phase runs to it;
6. saves (Ctrl+S), closes, and asserts ``git status --porcelain`` of the copy is empty: the saved ``.ipynb``
   and ``.py`` are byte for byte as committed (the pre-save hook and jupytext filter in ``.jupyter/``), and
   running the lab left no new files.

Each step is a phase function below (``_open_lab``, ``_run_all``, ``_check_outputs``, ``_drive_controls`` and
``_check_after_controls``, ``_check_no_exercise_done``, ``_save_and_check_clean``); the JavaScript they run in the page and the small helpers
are in ``pages.py``.

Screenshots (the whole notebook after Run All, each figure cell after each slider move, and any failure) go
to ``$ECHO_TUTOR_SCREENSHOTS`` or a pytest temporary folder, printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import time
from dataclasses import dataclass, field

import pytest

from browser_env import selected_labs  # tests/ is on sys.path

from .conftest import record
from .pages import (
    JS_ACTIVATE,
    JS_APP_LOADED,
    JS_DOM,
    JS_DROPDOWN,
    JS_FINGERPRINT,
    JS_FINGERPRINT_HASH,
    JS_KERNEL_IDLE,
    JS_OPEN,
    JS_RUN_ALL,
    JS_SAVED,
    JS_SHUTDOWN_AND_CLOSE,
    JS_SLIDER,
    JS_STATUS,
    JS_TOGGLE,
    SLIDER_TIMEOUT,
    axis_problems,
    figure_settles,
    first_difference,
    git,
    settle,
    shoot_notebook,
    slugify,
    wait,
)

pytestmark = pytest.mark.browser

RUN_TIMEOUT = float(os.environ.get("ECHO_TUTOR_BROWSER_TIMEOUT", "420"))
# How many controls of each figure cell are moved (ECHO_TUTOR_BROWSER_CONTROLS=all: every one). One shows the
# cell's widgets answer in the browser; what each control computes is the lab's Python, which the unit tests test.
_PER_CELL = os.environ.get("ECHO_TUTOR_BROWSER_CONTROLS", "1")
CONTROLS_PER_CELL = 10**6 if _PER_CELL == "all" else int(_PER_CELL)
# How many figure cells of a lab have their controls moved (ECHO_TUTOR_BROWSER_CELLS=all: every one; default 2,
# the first two that have a control): enough to show a lab's widgets answer; the rest is the same machinery.
_CELLS = os.environ.get("ECHO_TUTOR_BROWSER_CELLS", "2")
CELLS_PER_LAB = 10**6 if _CELLS == "all" else int(_CELLS)


@dataclass
class LabRun:
    """One lab in the browser: the page, and what the phases found (problems fail the test, notes are shown)."""

    lab: str
    repo: pathlib.Path
    page: object
    shots: pathlib.Path
    t_start: float
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    console_errors: list[str] = field(default_factory=list)
    status: dict | None = None  # JS_STATUS right after Run All
    dom: dict | None = None     # JS_DOM right after Run All
    shot_files: list = field(default_factory=list)
    n_plots: int | str = "?"    # "?" until the phase that counts them has started
    n_controls: int | str = "?"
    moved: int | str = "?"


def _check_control(page, cell, kind, j, info, *, shots, problems) -> int:
    """Move one slider a step (arrow key on its handle) or pick the next option of toggle buttons or a
    dropdown; the figures of the cell must change; undo it; they must come back to exactly what Run All drew. Returns 1 if checked."""
    i = cell["cell"]
    if info["disabled"]:
        return 0
    where = f"cell {i} ({cell['head'][:50]!r}) {kind} {info['label']!r}"
    slug = slugify(info["label"], f"{kind}{j}")
    if kind == "slider":
        handle = page.locator(f'[data-bt-cell="{i}"] [data-bt-slider="{j}"] .noUi-handle')
        at_max = info["now"] is not None and info["max"] is not None and float(info["now"]) >= float(info["max"])
        keys = ("ArrowLeft", "ArrowRight") if at_max else ("ArrowRight", "ArrowLeft")
        go_there, go_back = (lambda: handle.press(keys[0])), (lambda: handle.press(keys[1]))
        read = lambda: page.evaluate(JS_SLIDER, [i, j])  # noqa: E731
        start = info["readout"]
    elif kind == "dropdown":
        if len(info["options"]) < 2 or info["active"] < 0:
            return 0
        select = page.locator(f'[data-bt-cell="{i}"] [data-bt-dropdown="{j}"] select')
        other = (info["active"] + 1) % len(info["options"])
        go_there = lambda: select.select_option(index=other)  # noqa: E731
        go_back = lambda: select.select_option(index=info["active"])  # noqa: E731
        read = lambda: page.evaluate(JS_DROPDOWN, [i, j])  # noqa: E731
        start = info["options"][info["active"]]
    else:
        if len(info["options"]) < 2 or info["active"] < 0:
            return 0
        buttons = page.locator(f'[data-bt-cell="{i}"] [data-bt-toggle="{j}"] button')
        other = (info["active"] + 1) % len(info["options"])
        go_there, go_back = (lambda: buttons.nth(other).click()), (lambda: buttons.nth(info["active"]).click())
        read = lambda: page.evaluate(JS_TOGGLE, [i, j])  # noqa: E731
        start = info["options"][info["active"]]
    before = page.evaluate(JS_FINGERPRINT, i)
    before_hash = page.evaluate(JS_FINGERPRINT_HASH, i)
    go_there()
    there = read()
    if (there["now"] == info["now"]) if kind == "slider" else (there["readout"] == start):
        problems.append(f"{where}: could not move it (value {start})")
        return 0
    try:
        figure_settles(page, i, changed_from=before_hash)
    except TimeoutError:
        problems.append(f"{where}: moved {start} -> {there['readout']}, the figure did not change (and settle) in {SLIDER_TIMEOUT:.0f} s")
        page.locator(f'[data-bt-cell="{i}"]').screenshot(path=str(shots / f"cell{i:02d}-{slug}-no-change.png"))
        go_back()
        with contextlib.suppress(TimeoutError):
            figure_settles(page, i, equal_to=before_hash)
        return 0
    page.locator(f'[data-bt-cell="{i}"] .jp-Cell-outputWrapper').screenshot(
        path=str(shots / f"cell{i:02d}-{slug}-moved-{slugify(there['readout'], 'x')}.png"))
    go_back()
    try:
        figure_settles(page, i, equal_to=before_hash, quiet=1.0)
    except TimeoutError:
        now = read()
        diff = first_difference(json.loads(before), json.loads(page.evaluate(JS_FINGERPRINT, i)))
        problems.append(
            f"{where}: moved {start} -> {there['readout']} -> {now['readout']}: the figure did not return to what "
            f"Run All drew, so after Run All it did not show this value (or the redraw is not deterministic); "
            f"first difference, after Run All vs now: {diff}")
        page.locator(f'[data-bt-cell="{i}"] .jp-Cell-outputWrapper').screenshot(
            path=str(shots / f"cell{i:02d}-{slug}-not-restored.png"))
    return 1


def _open_lab(run: LabRun, lab_server) -> None:
    """Load JupyterLab, open the lab and wait for its kernel."""
    page = run.page
    page.goto(f"{lab_server.url}/lab?reset&token={lab_server.token}", wait_until="domcontentloaded")
    page.wait_for_function(JS_APP_LOADED, timeout=60_000)
    opened = page.evaluate(JS_OPEN, f"{run.lab}.ipynb")
    wait(page, JS_KERNEL_IDLE, 90, f"{run.lab}: the kernel did not become idle after opening")
    run.timings["open_s"] = round(time.monotonic() - run.t_start, 1)
    if opened["dirty"]:
        run.notes.append("marked modified right after opening (JupyterLab adds metadata.language_info); the save below must still leave git clean")


def _run_all(run: LabRun) -> None:
    """1. Run All, until the kernel is idle and every code cell ran (or one failed); then its errors."""
    page, problems = run.page, run.problems
    t0 = time.monotonic()
    page.evaluate(JS_RUN_ALL)
    deadline = t0 + RUN_TIMEOUT
    status = None
    slowest = 0.0
    while True:
        time.sleep(1.0)
        t_eval = time.monotonic()
        status = page.evaluate(JS_STATUS)
        slowest = max(slowest, time.monotonic() - t_eval)
        idle = status["kernel"] == "idle"
        if idle and (status["pending"] == 0 or status["errors"]):
            time.sleep(1.0)  # idle between two queued cells? look again
            status = page.evaluate(JS_STATUS)
            if status["kernel"] == "idle" and (status["pending"] == 0 or status["errors"]):
                break
        if status["kernel"] in ("dead", "unknown", "none") and time.monotonic() - t0 > 10:
            problems.append(f"kernel is {status['kernel']} during Run All")
            break
        if time.monotonic() > deadline:
            problems.append(f"Run All did not finish in {RUN_TIMEOUT:.0f} s: {status['pending']} of {status['code']} code cells not run")
            break
    run.timings["run_all_s"] = round(time.monotonic() - t0, 1)
    run.status = status
    if slowest > 10:
        run.notes.append(f"the page took {slowest:.0f} s to answer one status check during Run All (busy renderer)")
    for e in status["errors"]:
        problems.append(f"cell {e['cell']} ({e['head'][:70]!r}) raised {e['what']}\n{e['traceback']}")
    if status["pending"] and not status["errors"]:
        problems.append(f"{status['pending']} code cells have no execution count after Run All")
    for wrn in status["warnings"]:
        run.notes.append(f"stderr in cell {wrn['cell']} ({wrn['head'][:50]!r}): {wrn['text'][:160]!r}")


def _check_cell_outputs(run: LabRun, cell: dict, where: str) -> None:
    """2. No widget errors, no widget still loading, no traceback in an output."""
    if cell["widgetError"]:
        run.problems.append(f"{where}: 'Error displaying widget'")
    if cell["loading"]:
        run.problems.append(f"{where}: a widget is still 'Loading widget...' after Run All")
    for tb in cell["stderr"]:
        if "Traceback" in tb:
            run.problems.append(f"{where}: traceback in an output (widget):\n{tb}")


def _check_figures(run: LabRun, cell: dict, where: str) -> None:
    """3. Every plotly output and FigureWidget drawn, with sane axis ranges."""
    if cell["plotlyOutputsDrawn"] < cell["plotlyMime"]:
        run.problems.append(f"{where}: {cell['plotlyMime']} plotly outputs, {cell['plotlyOutputsDrawn']} drawn")
    if cell["figureWidget"] and cell["widgetViews"] and not cell["plots"]:
        run.problems.append(f"{where}: displays a FigureWidget but no figure is drawn")
    for k, plot in enumerate(cell["plots"]):
        run.n_plots += 1
        if not plot["drawn"] or plot["width"] <= 0 or plot["height"] <= 0:
            run.problems.append(f"{where}: figure {k} not drawn ({plot['width']}x{plot['height']})")
        run.problems.extend(axis_problems(cell, k, plot))


def _check_outputs(run: LabRun) -> None:
    """2./3. outputs, widgets and figures of every cell (and a screenshot of the notebook and of each figure cell)."""
    page = run.page
    settle(page)
    run.dom = page.evaluate(JS_DOM)
    run.shot_files = shoot_notebook(page, run.shots / f"{run.lab}-after-run-all.png")
    run.n_plots = run.n_controls = 0
    for cell in run.dom["cells"]:
        where = f"cell {cell['cell']} ({cell['head'][:60]!r})"
        _check_cell_outputs(run, cell, where)
        _check_figures(run, cell, where)
        run.n_controls += len(cell["sliders"]) + len(cell["toggles"]) + len(cell["dropdowns"])
        if cell["plots"]:
            page.locator(f'[data-bt-cell="{cell["cell"]}"] .jp-Cell-outputWrapper').screenshot(
                path=str(run.shots / f"cell{cell['cell']:02d}-figures.png"))


def _drive_controls(run: LabRun) -> None:
    """4. sliders (and toggle buttons, dropdowns) next to a figure: each one moved and moved back, up to
    ``CONTROLS_PER_CELL`` per figure cell (the first ones that can move), in the first ``CELLS_PER_LAB`` figure
    cells that have one."""
    t0 = time.monotonic()
    run.moved, cells_done = 0, 0
    for cell in run.dom["cells"]:
        if not cell["plots"] or cells_done >= CELLS_PER_LAB:
            continue
        moved_here = 0
        for control in [("slider", j, s) for j, s in enumerate(cell["sliders"])] + \
                       [("toggle", j, t) for j, t in enumerate(cell["toggles"])] + \
                       [("dropdown", j, d) for j, d in enumerate(cell["dropdowns"])]:
            if moved_here >= CONTROLS_PER_CELL:
                break
            moved_here += _check_control(run.page, cell, *control, shots=run.shots, problems=run.problems)
        run.moved += moved_here
        cells_done += bool(moved_here)
    run.timings["controls_s"] = round(time.monotonic() - t0, 1)


def _check_after_controls(run: LabRun) -> None:
    """4. (continued) the control moves raised no new error, widget error or traceback."""
    page, problems, dom = run.page, run.problems, run.dom
    after = page.evaluate(JS_STATUS)
    for e in after["errors"]:
        if e not in run.status["errors"]:
            problems.append(f"after the slider moves, cell {e['cell']} ({e['head'][:70]!r}) shows {e['what']}\n{e['traceback']}")
    dom_after = page.evaluate(JS_DOM)
    for cell in dom_after["cells"]:
        if cell["widgetError"] and not any(c["cell"] == cell["cell"] and c["widgetError"] for c in dom["cells"]):
            problems.append(f"cell {cell['cell']}: 'Error displaying widget' after the slider moves")
        for tb in cell["stderr"]:
            if "Traceback" in tb and tb not in next(c for c in dom["cells"] if c["cell"] == cell["cell"])["stderr"]:
                problems.append(f"cell {cell['cell']} ({cell['head'][:60]!r}): traceback after the slider moves:\n{tb}")


JS_OUTPUT_TEXT = r"""() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
  .map(e => e.innerText).join('\n')"""


def _check_no_exercise_done(run: LabRun, lab_server) -> None:
    """5. with no exercise done, each exercise cell says so and the report lists them all as not passing; then
    (the same run, ``ECHO_TUTOR_SOLUTIONS=both``) every solution passes."""
    src = (lab_server.root / f"{run.lab}.py").read_text()
    n = len(re.findall(r"labs\.exercise\((\w+),", src))
    text = run.page.evaluate(JS_OUTPUT_TEXT)
    said = text.count("not attempted yet")
    if said != n:
        run.problems.append(f"with no exercise done, {said} outputs say 'not attempted yet', expected one per "
                            f"exercise ({n})")
    if f"As a learner with no exercise done: 0 of {n} passing" not in text:
        run.problems.append(f"the last cell does not list the exercises as '0 of {n} passing' for a learner")
    if f"{n} of {n} passing" not in text:
        run.problems.append(f"the last cell does not list the {n} solutions as passing")


def _save_and_check_clean(run: LabRun, lab_server) -> None:
    """5. save (Ctrl+S), close, and the copy must be exactly as committed."""
    page, problems, repo = run.page, run.problems, run.repo
    t0 = time.monotonic()
    ipynb = lab_server.root / f"{run.lab}.ipynb"
    mtime = ipynb.stat().st_mtime_ns
    page.evaluate(JS_ACTIVATE)
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    try:
        wait(page, JS_SAVED, 30, "still modified after Ctrl+S")
        deadline = time.monotonic() + 30
        while ipynb.stat().st_mtime_ns == mtime and time.monotonic() < deadline:
            time.sleep(0.25)
        if ipynb.stat().st_mtime_ns == mtime:
            problems.append("Ctrl+S did not write the notebook")
    except TimeoutError as err:
        problems.append(f"save: {err}")
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        problems.append(f"a dialog is open after saving: {dialog.first.inner_text()[:300]!r}")
        page.screenshot(path=str(run.shots / f"{run.lab}-dialog.png"))
    page.evaluate(JS_SHUTDOWN_AND_CLOSE)
    run.timings["save_s"] = round(time.monotonic() - t0, 1)
    changed = git(repo, "status", "--porcelain")
    if changed:
        diff = git(repo, "diff", "--stat") + "\n".join(git(repo, "diff").splitlines()[:40])
        problems.append(f"after open / Run All / save / close, `git status --porcelain` is not empty:\n{changed}{diff}")


def _reset(run: LabRun, lab_server) -> None:
    """Whatever happened: no kernel left running and the copy clean for the next lab."""
    # one lab at a time, so every session is this lab's
    try:
        for sess in lab_server.api("/api/sessions") or []:
            lab_server.api(f"/api/sessions/{sess['id']}", method="DELETE")
    except Exception as err:  # noqa: BLE001
        print(f"[browser] {run.lab}: could not shut the kernel down: {err}")
    git(run.repo, "checkout", "--", ".")
    git(run.repo, "clean", "-fdq")


@pytest.mark.parametrize("lab", selected_labs())
def test_lab_in_browser(lab, browser, lab_server, screenshot_dir):  # browser first: skip before starting a server
    repo = lab_server.root.parent
    assert git(repo, "status", "--porcelain") == "", "the temporary copy is not clean before the test"
    shots = screenshot_dir / lab
    shots.mkdir(exist_ok=True)
    t_start = time.monotonic()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    run = LabRun(lab, repo, page, shots, t_start)
    page.on("console", lambda m: run.console_errors.append(m.text[:300]) if m.type == "error" else None)
    page.on("pageerror", lambda e: run.console_errors.append(f"page error: {str(e)[:300]}"))
    try:
        _open_lab(run, lab_server)
        _run_all(run)
        _check_outputs(run)
        _drive_controls(run)
        _check_after_controls(run)
        _check_no_exercise_done(run, lab_server)
        _save_and_check_clean(run, lab_server)
        if run.console_errors:
            run.notes.append(f"{len(run.console_errors)} browser console errors, first: {run.console_errors[0][:200]!r}")
    except Exception:
        page.screenshot(path=str(shots / f"{lab}-failure.png"))
        raise
    finally:
        run.timings["total_s"] = round(time.monotonic() - t_start, 1)
        record(lab, **run.timings, figures=run.n_plots, controls=run.n_controls, controls_checked=run.moved,
               problems=len(run.problems), warnings=run.notes)
        context.close()
        _reset(run, lab_server)
    print(f"\n[browser] {lab}: {run.timings}; screenshots {[str(f) for f in run.shot_files]} and {shots}")
    for n in run.notes:
        print(f"[browser] {lab}: note: {n}")
    assert not run.problems, f"{lab} in JupyterLab ({shots}):\n- " + "\n- ".join(run.problems)
