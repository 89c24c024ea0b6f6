"""What the browser test drives and reads in JupyterLab: the JavaScript it runs in the page, and the small
helpers around it (waiting, settling figures, screenshots, axis checks, fingerprint diffs, git).

The snippets talk to ``window.jupyterapp`` (the server runs with ``--LabApp.expose_app_in_browser``) and to
``window.__lab``, the notebook panel :data:`JS_OPEN` opened.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time

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


JS_APP_LOADED = "() => window.jupyterapp !== undefined"

JS_RUN_ALL = "() => window.jupyterapp.commands.execute('notebook:run-all-cells')"

JS_ACTIVATE = "() => { window.jupyterapp.shell.activateById(window.__lab.id); window.__lab.content.activate(); }"

JS_SAVED = "() => !window.__lab.context.model.dirty"

JS_SHUTDOWN_AND_CLOSE = "async () => { const w = window.__lab; await w.sessionContext.shutdown(); w.close(); }"

# What settle() watches: drawn figures, sliders and "Loading widget" placeholders.
JS_SETTLE_PROBE = """() => { const n = window.__lab.content.node;
      return [n.querySelectorAll('.js-plotly-plot .main-svg').length, n.querySelectorAll('.widget-slider').length,
              (n.innerText.match(/Loading widget/g) || []).length].join(','); }"""


def wait(page, fn, timeout, what, arg=None, every=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(fn, arg) if arg is not None else page.evaluate(fn)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(every)


def figure_settles(page, i, *, changed_from=None, equal_to=None, quiet=2.0, timeout=SLIDER_TIMEOUT):
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


def settle(page, seconds=2.0, timeout=90.0):
    """Wait until the kernel is idle and the drawn figures/widgets stop changing for `seconds`."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = page.evaluate(JS_SETTLE_PROBE) if page.evaluate(JS_KERNEL_IDLE) else None
        if now is None or now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= seconds:
            return
        time.sleep(0.25)


def shoot_notebook(page, path, max_height=15000):
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


def axis_problems(cell, plot_no, plot):
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


def first_difference(a, b, path="figure"):
    """Where two JSON fingerprints first differ: 'path: a != b' (values cut short), or '' if equal."""
    if type(a) is not type(b):
        return f"{path}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}: only in {'the first' if k in a else 'the second'} ({json.dumps(a.get(k, b.get(k)))[:120]})"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return ""
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)} items"
        for k, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{k}]")
            if d:
                return d
        return ""
    return "" if a == b else f"{path}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"


def slugify(text, fallback):
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text).replace("\u2212", "-")).strip("_")[:40] or fallback


def git(root, *args):
    """stdout of ``git *args`` run in ``root`` (raises if git fails)."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout
