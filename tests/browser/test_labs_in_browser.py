"""Every lab, opened in JupyterLab in headless Chromium, runs clean, draws its figures, follows its controls,
and saves back to exactly what git has.

For each lab (``notebooks/0*.ipynb``, on a temporary git copy of ``notebooks/``), ``test_lab_in_browser``:

1. opens the lab and runs ``notebook:run-all-cells`` (Run > Run All Cells), waits until the kernel is idle
   and every code cell has an execution count;
2. fails on an error output or a traceback on stderr (also inside output widgets), and on
   "Error displaying widget";
3. checks every plotly figure is drawn (plotly outputs and the cells that display a ``FigureWidget``), with
   finite, sane axis ranges (no NaN/inf, nothing like 1e56 on a log axis);
4. for every slider (and toggle-buttons group, dropdown) displayed with a figure: moving it one step (arrow
   key on its handle; the next option of the others) changes the figure, and moving it back
   restores the figure exactly as Run All drew it (so after Run All the figure showed the control's value);
5. saves (Ctrl+S), closes, and asserts ``git status --porcelain`` of the copy is empty: the saved ``.ipynb``
   and ``.py`` are byte for byte as committed (the pre-save hook and jupytext filter in ``.jupyter/``), and
   running the lab left no new files.

Screenshots (the whole notebook after Run All, each figure cell after each slider move, and any failure) go
to ``$ECHO_TUTOR_SCREENSHOTS`` or a pytest temporary folder, printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import time

import pytest

from .conftest import record, selected_labs

pytestmark = pytest.mark.browser

RUN_TIMEOUT = float(os.environ.get("ECHO_TUTOR_BROWSER_TIMEOUT", "420"))
SLIDER_TIMEOUT = 90.0
LOG_AXIS_LIMIT = 30.0  # |log10| of a log axis end: 1e30 is already absurd for these labs
LINEAR_AXIS_LIMIT = 1e15

JS_OPEN = """async (path) => {
  const app = window.jupyterapp;
  await app.started; await app.restored;
  app.shell.collapseLeft(); app.shell.collapseRight();
  const w = await app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
  await w.context.ready;
  await w.sessionContext.ready;
  app.shell.activateById(w.id);
  window.__lab = w;
  return {dirty: w.context.model.dirty, cells: w.content.widgets.length};
}"""

JS_KERNEL_IDLE = """() => {
  const w = window.__lab; const k = w && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle' && k.connectionStatus === 'connected';
}"""

JS_STATUS = r"""() => {
  const w = window.__lab;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  const strip = (s) => String(s).replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
  let pending = 0, code = 0; const errors = [], warnings = [];
  w.content.widgets.forEach((c, i) => {
    if (c.model.type !== 'code') return;
    code++;
    if (c.model.executionCount === null) pending++;
    const head = c.model.sharedModel.getSource().split('\n').find(l => l.trim()) || '';
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') {
        errors.push({cell: i, head, what: `${o.ename}: ${strip(o.evalue)}`,
                     traceback: strip((o.traceback || []).join('\n')).slice(-3000)});
      } else if (o.output_type === 'stream' && o.name === 'stderr') {
        const text = strip(Array.isArray(o.text) ? o.text.join('') : o.text);
        if (/Traceback \(most recent call last\)/.test(text)) errors.push({cell: i, head, what: 'traceback on stderr', traceback: text.slice(-3000)});
        else if (text.trim()) warnings.push({cell: i, head, text: text.trim().slice(0, 300)});
      }
    }
  });
  return {kernel: k ? k.status : 'none', pending, code, errors, warnings};
}"""

# Tag cells and sliders so Playwright locators can reach them; describe outputs, plots and sliders.
JS_DOM = r"""() => {
  const w = window.__lab;
  const out = {cells: []};
  w.content.widgets.forEach((c, i) => {
    c.node.setAttribute('data-bt-cell', String(i));
    if (c.model.type !== 'code') return;
    const node = c.node;
    const src = c.model.sharedModel.getSource();
    const head = src.split('\n').find(l => l.trim()) || '';
    const outs = c.model.outputs.toJSON();
    const mimes = outs.flatMap(o => Object.keys(o.data || {}));
    const text = (node.querySelector('.jp-Cell-outputWrapper') || node).innerText || '';
    const stderr = [...node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(e => e.innerText).filter(t => /Traceback \(most recent call last\)|Error:/.test(t)).map(t => t.slice(-2000));
    const plots = [...node.querySelectorAll('.js-plotly-plot')].map(el => {
      const fl = el._fullLayout;
      const axes = [];
      if (fl) for (const key of Object.keys(fl)) {
        if (!/^[xy]axis\d*$/.test(key) || !fl[key]) continue;
        const ax = fl[key];
        if (ax.visible === false) continue;
        axes.push({name: key, type: ax.type, range: (ax.range || []).map(v => (typeof v === 'number' ? (Number.isFinite(v) ? v : String(v)) : v))});
      }
      return {drawn: !!(fl && el.querySelector('.main-svg')), width: fl ? fl.width : 0, height: fl ? fl.height : 0,
              traces: (el.data || []).length, title: fl && fl.title ? (fl.title.text || '') : '', axes};
    });
    // JupyterLab's plotly renderer: the output element itself is the plot div
    const plotlyOutputsDrawn = [...node.querySelectorAll('.jp-RenderedPlotly')].filter(e => e._fullLayout && e.querySelector('.main-svg')).length;
    const sliders = [...node.querySelectorAll('.widget-slider')].map((s, j) => {
      s.setAttribute('data-bt-slider', String(j));
      const h = s.querySelector('.noUi-handle');
      const label = s.querySelector('.widget-label');
      const readout = s.querySelector('.widget-readout');
      return {label: label ? label.innerText.trim() : `slider ${j}`, readout: readout ? readout.innerText.trim() : '',
              now: h ? h.getAttribute('aria-valuenow') : null, min: h ? h.getAttribute('aria-valuemin') : null,
              max: h ? h.getAttribute('aria-valuemax') : null, disabled: s.classList.contains('mod-disabled') || !h};
    });
    const toggles = [...node.querySelectorAll('.widget-toggle-buttons')].map((t, j) => {
      t.setAttribute('data-bt-toggle', String(j));
      const label = t.querySelector('.widget-label');
      const buttons = [...t.querySelectorAll('button')];
      return {label: label && label.innerText.trim() ? label.innerText.trim() : `toggle ${j}`,
              options: buttons.map(b => b.innerText.trim()), active: buttons.findIndex(b => b.classList.contains('mod-active')),
              disabled: buttons.some(b => b.disabled)};
    });
    const dropdowns = [...node.querySelectorAll('.widget-dropdown')].filter(d => d.querySelector('select')).map((d, j) => {
      d.setAttribute('data-bt-dropdown', String(j));
      const label = d.querySelector('.widget-label'); const sel = d.querySelector('select');
      return {label: label && label.innerText.trim() ? label.innerText.trim() : `dropdown ${j}`,
              options: [...sel.options].map(o => o.text.trim()), active: sel.selectedIndex, disabled: sel.disabled};
    });
    out.cells.push({cell: i, head, figureWidget: /FigureWidget\(/.test(src), toggles, dropdowns,
      plotlyMime: mimes.filter(m => m === 'application/vnd.plotly.v1+json').length,
      widgetViews: mimes.filter(m => m === 'application/vnd.jupyter.widget-view+json').length,
      widgetError: text.includes('Error displaying widget'), loading: text.includes('Loading widget'),
      stderr, plots, plotlyOutputsDrawn, sliders});
  });
  return out;
}"""

# What a figure shows: its traces (minus uid and private keys) and the layout parts a redraw may change, rounded to 6 digits.
JS_FINGERPRINT = r"""(i) => {
  const node = document.querySelector(`[data-bt-cell="${i}"]`);
  const round = (k, v) => (typeof v === 'number' ? (Number.isFinite(v) ? +v.toPrecision(6) : String(v)) : v);
  return JSON.stringify([...node.querySelectorAll('.js-plotly-plot')].map(el => {
    const lay = el.layout || {};
    const axes = {};
    for (const key of Object.keys(lay)) if (/axis\d*$/.test(key) && lay[key]) axes[key] = {range: lay[key].range, type: lay[key].type};
    // FigureWidget marks traces with private keys such as _doNotReportToPy: leave those out
    const trace = (t) => Object.fromEntries(Object.entries(t).filter(([k]) => k !== 'uid' && !k.startsWith('_')));
    return {data: (el.data || []).map(trace),
            title: lay.title, annotations: lay.annotations, shapes: lay.shapes, axes};
  }), round);
}"""

# The same, hashed (FNV-1a) with its length: cheap to poll.
JS_FINGERPRINT_HASH = f"""(i) => {{
  const s = ({JS_FINGERPRINT})(i);
  let h = 2166136261;
  for (let k = 0; k < s.length; k++) {{ h ^= s.charCodeAt(k); h = Math.imul(h, 16777619); }}
  return (h >>> 0).toString(16) + ':' + s.length;
}}"""

JS_TOGGLE = """([i, j]) => {
  const b = document.querySelector(`[data-bt-cell="${i}"] [data-bt-toggle="${j}"] button.mod-active`);
  return {readout: b ? b.innerText.trim() : ''};
}"""

JS_DROPDOWN = """([i, j]) => {
  const sel = document.querySelector(`[data-bt-cell="${i}"] [data-bt-dropdown="${j}"] select`);
  return {readout: sel && sel.selectedIndex >= 0 ? sel.options[sel.selectedIndex].text.trim() : ''};
}"""

JS_SLIDER = """([i, j]) => {
  const s = document.querySelector(`[data-bt-cell="${i}"] [data-bt-slider="${j}"]`);
  const h = s.querySelector('.noUi-handle'); const r = s.querySelector('.widget-readout');
  return {now: h.getAttribute('aria-valuenow'), readout: r ? r.innerText.trim() : ''};
}"""


def _wait(page, fn, timeout, what, arg=None, every=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(fn, arg) if arg is not None else page.evaluate(fn)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def _figure_settles(page, i, *, changed_from=None, equal_to=None, quiet=2.0, timeout=SLIDER_TIMEOUT):
    """Poll the figures of cell i until they differ from `changed_from` (or equal `equal_to`) and then stay
    the same for `quiet` seconds with the kernel idle. (The kernel's status alone is no signal: it reads
    idle between the messages of a streaming redraw.) Returns the final hash; TimeoutError if never."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        h = page.evaluate(JS_FINGERPRINT_HASH, i)
        if h != last:
            last, since = h, time.monotonic()
        target = (h != changed_from) if changed_from is not None else (h == equal_to)
        if target and time.monotonic() - since >= quiet and page.evaluate(JS_KERNEL_IDLE):
            return h
        time.sleep(0.5)
    raise TimeoutError(f"figure of cell {i} did not settle")


def _settle(page, seconds=2.0, timeout=90.0):
    """Wait until the kernel is idle and the drawn figures/widgets stop changing for `seconds`."""
    probe = """() => { const n = window.__lab.content.node;
      return [n.querySelectorAll('.js-plotly-plot .main-svg').length, n.querySelectorAll('.widget-slider').length,
              (n.innerText.match(/Loading widget/g) || []).length].join(','); }"""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(probe) if page.evaluate(JS_KERNEL_IDLE) else None
        if now is None or now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.25)


def _shoot_notebook(page, path, max_height=15000):
    """The whole notebook: the viewport grown to the notebook's height (in parts past max_height)."""
    scroller = "window.__lab.content.node.querySelector('.jp-WindowedPanel-outer')"
    # down to the end of the last cell (the notebook adds blank space below it)
    total = page.evaluate(f"""() => {{ const s = {scroller}; const cells = s.querySelectorAll('.jp-Cell');
      const last = cells[cells.length - 1];
      return last ? Math.min(s.scrollHeight, last.getBoundingClientRect().bottom - s.getBoundingClientRect().top + s.scrollTop + 40)
                  : s.scrollHeight; }}""")
    view = page.viewport_size
    files = []
    try:
        page.set_viewport_size({"width": view["width"], "height": int(min(total + 250, max_height))})
        time.sleep(0.5)
        visible = page.evaluate(f"() => {scroller}.clientHeight")
        step = max(visible - 40, 100)
        parts = 1 + max(0, math.ceil((total - visible) / step))
        for k in range(parts):
            page.evaluate(f"(y) => {{ {scroller}.scrollTop = y; }}", k * step)
            time.sleep(0.3)
            name = path if parts == 1 else path.with_name(f"{path.stem}-part{k + 1}{path.suffix}")
            page.screenshot(path=str(name))
            files.append(name)
    finally:
        page.set_viewport_size(view)
        page.evaluate(f"() => {{ {scroller}.scrollTop = 0; }}")
    return files


def _axis_problems(cell, plot_no, plot):
    bad = []
    for ax in plot["axes"]:
        rng = ax["range"]
        where = f"cell {cell['cell']} ({cell['head'][:60]!r}) figure {plot_no} {plot['title'][:50]!r} {ax['name']}"
        if ax["type"] in ("date",):
            continue
        if len(rng) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in rng):
            bad.append(f"{where}: range {rng} ({ax['type']})")
        elif ax["type"] == "log" and max(abs(v) for v in rng) > LOG_AXIS_LIMIT:
            bad.append(f"{where}: log axis spans 1e{rng[0]:.0f}..1e{rng[1]:.0f}")
        elif ax["type"] != "log" and max(abs(v) for v in rng) > LINEAR_AXIS_LIMIT:
            bad.append(f"{where}: {ax['type']} axis range {rng}")
    return bad


def _first_difference(a, b, path="figure"):
    """Where two JSON fingerprints first differ: 'path: a != b' (values cut short), or '' if equal."""
    if type(a) is not type(b):
        return f"{path}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'the first' if k in a else 'the second'} ({json.dumps(a.get(k, b.get(k)))[:120]})"
            d = _first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items"
        for k, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}[{k}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"


def _slug(text, fallback):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text).replace("\u2212", "-")).strip("_")[:40] or fallback


def _check_control(page, cell, kind, j, info, *, shots, problems) -> int:
    """Move one slider a step (arrow key on its handle) or pick the next option of toggle buttons or a
    dropdown; the figures of the cell must change; undo it; they must come back to exactly what Run All drew. Returns 1 if checked."""
    i = cell["cell"]
    if info["disabled"]:
        return 0
    where = f"cell {i} ({cell['head'][:50]!r}) {kind} {info['label']!r}"
    slug = _slug(info["label"], f"{kind}{j}")
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
        _figure_settles(page, i, changed_from=before_hash)
    except TimeoutError:
        problems.append(f"{where}: moved {start} -> {there['readout']}, the figure did not change (and settle) in {SLIDER_TIMEOUT:.0f} s")
        page.locator(f'[data-bt-cell="{i}"]').screenshot(path=str(shots / f"cell{i:02d}-{slug}-no-change.png"))
        go_back()
        with contextlib.suppress(TimeoutError):
            _figure_settles(page, i, equal_to=before_hash)
        return 0
    page.locator(f'[data-bt-cell="{i}"] .jp-Cell-outputWrapper').screenshot(
        path=str(shots / f"cell{i:02d}-{slug}-moved-{_slug(there['readout'], 'x')}.png"))
    go_back()
    try:
        _figure_settles(page, i, equal_to=before_hash, quiet=1.0)
    except TimeoutError:
        now = read()
        diff = _first_difference(json.loads(before), json.loads(page.evaluate(JS_FINGERPRINT, i)))
        problems.append(
            f"{where}: moved {start} -> {there['readout']} -> {now['readout']}: the figure did not return to what "
            f"Run All drew, so after Run All it did not show this value (or the redraw is not deterministic); "
            f"first difference, after Run All vs now: {diff}")
        page.locator(f'[data-bt-cell="{i}"] .jp-Cell-outputWrapper').screenshot(
            path=str(shots / f"cell{i:02d}-{slug}-not-restored.png"))
    return 1


def _git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("lab", selected_labs())
def test_lab_in_browser(lab, browser, lab_server, screenshot_dir):  # browser first: skip before starting a server
    repo = lab_server.root.parent
    assert _git(repo, "status", "--porcelain") == "", "the temporary copy is not clean before the test"
    shots = screenshot_dir / lab
    shots.mkdir(exist_ok=True)
    problems: list[str] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    t_start = time.monotonic()

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text[:300]) if m.type == "error" else None)
    page.on("pageerror", lambda e: console_errors.append(f"page error: {str(e)[:300]}"))
    try:
        page.goto(f"{lab_server.url}/lab?reset&token={lab_server.token}", wait_until="domcontentloaded")
        page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
        opened = page.evaluate(JS_OPEN, f"{lab}.ipynb")
        _wait(page, JS_KERNEL_IDLE, 90, f"{lab}: the kernel did not become idle after opening")
        timings["open_s"] = round(time.monotonic() - t_start, 1)
        if opened["dirty"]:
            notes.append("marked modified right after opening (JupyterLab adds metadata.language_info); the save below must still leave git clean")

        # 1. Run All
        t0 = time.monotonic()
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
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
        timings["run_all_s"] = round(time.monotonic() - t0, 1)
        if slowest > 10:
            notes.append(f"the page took {slowest:.0f} s to answer one status check during Run All (busy renderer)")
        for e in status["errors"]:
            problems.append(f"cell {e['cell']} ({e['head'][:70]!r}) raised {e['what']}\n{e['traceback']}")
        if status["pending"] and not status["errors"]:
            problems.append(f"{status['pending']} code cells have no execution count after Run All")
        for wrn in status["warnings"]:
            notes.append(f"stderr in cell {wrn['cell']} ({wrn['head'][:50]!r}): {wrn['text'][:160]!r}")

        # 2./3. outputs, widgets and figures
        _settle(page)
        dom = page.evaluate(JS_DOM)
        shot_files = _shoot_notebook(page, shots / f"{lab}-after-run-all.png")
        n_plots = n_controls = 0
        for cell in dom["cells"]:
            where = f"cell {cell['cell']} ({cell['head'][:60]!r})"
            if cell["widgetError"]:
                problems.append(f"{where}: 'Error displaying widget'")
            if cell["loading"]:
                problems.append(f"{where}: a widget is still 'Loading widget...' after Run All")
            for tb in cell["stderr"]:
                if "Traceback" in tb:
                    problems.append(f"{where}: traceback in an output (widget):\n{tb}")
            if cell["plotlyOutputsDrawn"] < cell["plotlyMime"]:
                problems.append(f"{where}: {cell['plotlyMime']} plotly outputs, {cell['plotlyOutputsDrawn']} drawn")
            if cell["figureWidget"] and cell["widgetViews"] and not cell["plots"]:
                problems.append(f"{where}: displays a FigureWidget but no figure is drawn")
            for k, plot in enumerate(cell["plots"]):
                n_plots += 1
                if not plot["drawn"] or plot["width"] <= 0 or plot["height"] <= 0:
                    problems.append(f"{where}: figure {k} not drawn ({plot['width']}x{plot['height']})")
                problems.extend(_axis_problems(cell, k, plot))
            n_controls += len(cell["sliders"]) + len(cell["toggles"]) + len(cell["dropdowns"])
            if cell["plots"]:
                page.locator(f'[data-bt-cell="{cell["cell"]}"] .jp-Cell-outputWrapper').screenshot(
                    path=str(shots / f"cell{cell['cell']:02d}-figures.png"))

        # 4. sliders (and toggle buttons, dropdowns) next to a figure
        t0 = time.monotonic()
        moved = 0
        for cell in dom["cells"]:
            if not cell["plots"]:
                continue
            for control in [("slider", j, s) for j, s in enumerate(cell["sliders"])] + \
                           [("toggle", j, t) for j, t in enumerate(cell["toggles"])] + \
                           [("dropdown", j, d) for j, d in enumerate(cell["dropdowns"])]:
                moved += _check_control(page, cell, *control, shots=shots, problems=problems)
        timings["controls_s"] = round(time.monotonic() - t0, 1)

        after = page.evaluate(JS_STATUS)
        for e in after["errors"]:
            if e not in status["errors"]:
                problems.append(f"after the slider moves, cell {e['cell']} ({e['head'][:70]!r}) shows {e['what']}\n{e['traceback']}")
        dom_after = page.evaluate(JS_DOM)
        for cell in dom_after["cells"]:
            if cell["widgetError"] and not any(c["cell"] == cell["cell"] and c["widgetError"] for c in dom["cells"]):
                problems.append(f"cell {cell['cell']}: 'Error displaying widget' after the slider moves")
            for tb in cell["stderr"]:
                if "Traceback" in tb and tb not in next(c for c in dom["cells"] if c["cell"] == cell["cell"])["stderr"]:
                    problems.append(f"cell {cell['cell']} ({cell['head'][:60]!r}): traceback after the slider moves:\n{tb}")

        # 5. save (Ctrl+S), close, and the copy must be exactly as committed
        t0 = time.monotonic()
        ipynb = lab_server.root / f"{lab}.ipynb"
        mtime = ipynb.stat().st_mtime_ns
        page.evaluate("() => { window.jupyterapp.shell.activateById(window.__lab.id); window.__lab.content.activate(); }")
        page.keyboard.press("Escape")
        page.keyboard.press("Control+s")
        try:
            _wait(page, "() => !window.__lab.context.model.dirty", 30, "still modified after Ctrl+S")
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
            page.screenshot(path=str(shots / f"{lab}-dialog.png"))
        page.evaluate("async () => { const w = window.__lab; await w.sessionContext.shutdown(); w.close(); }")
        timings["save_s"] = round(time.monotonic() - t0, 1)
        changed = _git(repo, "status", "--porcelain")
        if changed:
            diff = _git(repo, "diff", "--stat") + "\n".join(_git(repo, "diff").splitlines()[:40])
            problems.append(f"after open / Run All / save / close, `git status --porcelain` is not empty:\n{changed}{diff}")
        if console_errors:
            notes.append(f"{len(console_errors)} browser console errors, first: {console_errors[0][:200]!r}")
    except Exception:
        page.screenshot(path=str(shots / f"{lab}-failure.png"))
        raise
    finally:
        timings["total_s"] = round(time.monotonic() - t_start, 1)
        record(lab, **timings, figures=locals().get("n_plots", "?"), controls=locals().get("n_controls", "?"),
               controls_checked=locals().get("moved", "?"), problems=len(problems), warnings=notes)
        context.close()
        # whatever happened: no kernel left running (one lab at a time, so every session is this lab's)
        try:
            for sess in lab_server.api("/api/sessions") or []:
                lab_server.api(f"/api/sessions/{sess['id']}", method="DELETE")
        except Exception as err:  # noqa: BLE001
            print(f"[browser] {lab}: could not shut the kernel down: {err}")
        # leave the copy clean for the next lab, whatever happened
        _git(repo, "checkout", "--", ".")
        _git(repo, "clean", "-fdq")
    print(f"\n[browser] {lab}: {timings}; screenshots {[str(f) for f in shot_files]} and {shots}")
    for n in notes:
        print(f"[browser] {lab}: note: {n}")
    assert not problems, f"{lab} in JupyterLab ({shots}):\n- " + "\n- ".join(problems)
