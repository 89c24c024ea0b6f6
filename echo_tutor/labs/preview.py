"""Render the labs, executed, to static HTML with their figures: a preview a course can publish.

    python -m echo_tutor.labs.preview [--labs 00,03] [--out preview] [--timeout 900]     (``make preview``)

Each lab runs top to bottom in a fresh kernel in FAST mode with the solutions filled in (instructor mode), as
``make test`` runs it under nbval; then its outputs are made static: a plotly figure (``fig.show()``) becomes an
HTML ``div`` drawn by plotly.js, a widget (a ``FigureWidget``, a slider, a prediction's buttons) becomes what it
showed when the run ended (the figure as drawn, a control as its label and value). ``out/`` then holds one
``NN_name.html`` per lab, ``index.html``, ``plotly.min.js`` (a local copy: the pages work offline), and the
repository's Markdown pages the labs link (the claims ledger, the course guide and what they link in turn),
rendered at their repository paths with the links rewritten to them (:mod:`echo_tutor.labs.publish`): the
folder can be published as it is, e.g. on a course's web space or GitHub Pages (docs/course.md, "Previews").

The figures of a ``FigureWidget`` are read from the kernel at the end of the run (the widget state a notebook
stores holds only the figure a widget started with), by a cell the preview appends and then removes.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import html
import json
import os
import pathlib
import platform
import re
import shutil
import sys
import time
from typing import Any

from ..errors import BadArgumentError
from .publish import publish_links

__all__ = ["render_lab", "render_labs", "static_outputs", "main"]

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
_MARK = "ECHO_TUTOR_PREVIEW_FIGURES:"
_DUMP_CELL = f'''
import gc as _gc, json as _json
import plotly.graph_objects as _go
from plotly.utils import PlotlyJSONEncoder as _Enc
_figs = {{}}
for _o in _gc.get_objects():
    try:  # a dead weak proxy among the objects raises on any attribute
        if isinstance(_o, _go.FigureWidget) and getattr(_o, "_model_id", None):
            _figs[_o._model_id] = _o.to_plotly_json()
    except ReferenceError:
        pass
print({_MARK!r} + _json.dumps(_figs, cls=_Enc))
'''
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_PLOTLY = "application/vnd.plotly.v1+json"


def _figure_html(fig: dict[str, Any]) -> str:
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"responsive": True})


def _widget_html(model_id: str, state: dict[str, Any], figures: dict[str, Any], depth: int = 0) -> str:
    """What a widget showed at the end of the run, as static HTML."""
    entry = state.get(model_id)
    if entry is None or depth > 20:
        return ""
    name, st = entry["model_name"], entry["state"]
    desc = html.escape(str(st.get("description", "") or ""))
    if name == "AnyModel" and ("_widget_data" in st or model_id in figures):
        fig = figures.get(model_id) or {"data": st.get("_widget_data", []), "layout": st.get("_widget_layout", {})}
        return _figure_html(fig)
    if name in ("VBoxModel", "HBoxModel", "BoxModel", "GridBoxModel", "AccordionModel", "TabModel"):
        direction = "row" if name == "HBoxModel" else "column"
        kids = "".join(_widget_html(c.removeprefix("IPY_MODEL_"), state, figures, depth + 1) for c in st.get("children", []))
        return f'<div style="display:flex;flex-direction:{direction};flex-wrap:wrap;gap:8px">{kids}</div>'
    if name in ("HTMLModel", "HTMLMathModel"):
        return f"<div>{st.get('value', '')}</div>"
    if name in ("LabelModel",):
        return f"<div>{html.escape(str(st.get('value', '')))}</div>"
    if name == "OutputModel":
        return "".join(_output_html(o) for o in st.get("outputs", []))
    if "value" in st or "index" in st:
        value = st.get("value")
        if value is None and "_options_labels" in st and st.get("index") is not None:
            idx = st["index"]
            labels = st["_options_labels"]
            value = ", ".join(labels[i] for i in idx) if isinstance(idx, list) else labels[idx]
        options = st.get("_options_labels")
        opts = f" <span style='color:#888'>(options: {html.escape(', '.join(map(str, options)))})</span>" if options else ""
        return (f'<div class="echo-static-control" style="font-family:monospace;color:#333">'
                f'{desc + ": " if desc else ""}<b>{html.escape(str(value))}</b>{opts} '
                "<span style='color:#888'>(a control: interactive in JupyterLab)</span></div>")
    return ""


def _output_html(out: dict[str, Any]) -> str:
    if out.get("output_type") == "stream":
        return f"<pre>{html.escape(out.get('text', ''))}</pre>"
    data = out.get("data", {})
    if "text/html" in data:
        return "".join(data["text/html"]) if isinstance(data["text/html"], list) else data["text/html"]
    if "text/plain" in data:
        text = data["text/plain"]
        return f"<pre>{html.escape(''.join(text) if isinstance(text, list) else text)}</pre>"
    return ""


def static_outputs(nb: Any, figures: dict[str, Any]) -> int:
    """Replace every plotly and widget output of ``nb`` (executed, widget state stored) by static HTML; returns
    the number of figures drawn."""
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    drawn = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if _PLOTLY in data:
                data["text/html"] = _figure_html(data.pop(_PLOTLY))
                data.pop("text/plain", None)
                drawn += 1
            elif _WIDGET_VIEW in data:
                view = data.pop(_WIDGET_VIEW)
                rendered = _widget_html(view["model_id"], state, figures)
                drawn += rendered.count("Plotly.newPlot")
                data["text/html"] = rendered
                data.pop("text/plain", None)
    nb.metadata.pop("widgets", None)
    return drawn


def render_lab(src: pathlib.Path, out_dir: pathlib.Path, timeout: int = 900, markdown: bool = False) -> dict[str, Any]:
    """Execute one lab (``notebooks/NN_name.ipynb``, FAST, solutions on) and write ``out_dir/NN_name.html``
    (and, with ``markdown``, ``out_dir/NN_name.md``: the text of the executed lab, figures left out)."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    src = pathlib.Path(src)
    if src.suffix != ".ipynb" or not src.exists():
        raise BadArgumentError(f"src must be a lab's .ipynb file, got {str(src)!r}")
    nb = nbformat.read(src, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_DUMP_CELL))
    saved = {k: os.environ.get(k) for k in ("ECHO_TUTOR_SOLUTIONS", "ECHO_TUTOR_FAST")}
    os.environ.update(ECHO_TUTOR_SOLUTIONS="1", ECHO_TUTOR_FAST="1")
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(src.parent)}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    seconds = time.perf_counter() - t0
    dump = nb.cells.pop()
    text = "".join(o.get("text", "") for o in dump.get("outputs", []) if o.get("output_type") == "stream")
    figures = json.loads(text.split(_MARK, 1)[1]) if _MARK in text else {}
    if markdown:
        from nbconvert import MarkdownExporter

        out_dir.mkdir(parents=True, exist_ok=True)
        text_nb = copy.deepcopy(nb)
        for cell in text_nb.cells:  # keep what a reader sees as text: printed lines and text outputs
            for out in cell.get("outputs", []):
                if "data" in out and (_WIDGET_VIEW in out["data"] or _PLOTLY in out["data"]):
                    out["data"] = {"text/plain": "[figure or control: see the HTML page]"}
                elif "data" in out:
                    keep = {k: v for k, v in out["data"].items() if k in ("text/markdown", "text/plain")}
                    out["data"] = ({"text/markdown": keep["text/markdown"]} if "text/markdown" in keep else keep) or {"text/plain": "[figure]"}
        (out_dir / f"{src.stem}.md").write_text(MarkdownExporter().from_notebook_node(text_nb)[0])
    drawn = static_outputs(nb, figures)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    stamp = (f"Executed {datetime.date.today().isoformat()} in FAST mode with the solutions filled in "
             f"({seconds:.0f} s on {platform.machine()}, {os.cpu_count()} cores). Controls are shown as they were "
             "left; run the lab in JupyterLab to move them.")
    body = body.replace("<head>", '<head>\n<meta charset="utf-8">\n<script src="plotly.min.js"></script>', 1)
    body = re.sub(r"(<body[^>]*>)", rf'\1\n<p style="margin:1em 4em;color:#555">{html.escape(stamp)} '
                  r'<a href="index.html">All labs</a></p>', body, count=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{src.stem}.html").write_text(body)
    return {"lab": src.stem, "seconds": round(seconds, 1), "figures": drawn}


def _title(src: pathlib.Path) -> str:
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, re.M)
            if m:
                return m.group(1).strip()
    return src.stem


def render_labs(labs: list[str] | None = None, out_dir: pathlib.Path | str = ROOT / "preview",
                timeout: int = 900, markdown: bool = False) -> list[dict[str, Any]]:
    """Render the labs named by number (``["00", "03"]``; all when None) into ``out_dir`` with an index."""
    out_dir = pathlib.Path(out_dir)
    sources = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if labs:
        want = {f"{int(x):02d}" if str(x).isdigit() else str(x) for x in labs}
        unknown = want - {p.name[:2] for p in sources}
        if unknown:
            raise BadArgumentError(f"labs: no lab numbered {sorted(unknown)}; the labs are {[p.name[:2] for p in sources]}")
        sources = [p for p in sources if p.name[:2] in want]
    import plotly

    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js", out_dir / "plotly.min.js")
    rows = []
    for src in sources:
        print(f"[preview] {src.stem} ...", flush=True)
        row = render_lab(src, out_dir, timeout, markdown)
        row["title"] = _title(src)
        rows.append(row)
        print(f"[preview] {src.stem}: {row['figures']} figure(s), {row['seconds']} s", flush=True)
    rendered = publish_links(out_dir, [(out_dir / f"{r['lab']}.html", NOTEBOOKS) for r in rows], ROOT)
    print(f"[preview] {len(rendered)} linked page(s) of the repository rendered beside the labs", flush=True)
    items = "\n".join(f'<li><a href="{r["lab"]}.html">{html.escape(r["title"])}</a> '
                      f'<span style="color:#888">({r["figures"]} figures, executed in {r["seconds"]:.0f} s)</span></li>'
                      for r in rows)
    linked = ", ".join(f'<a href="{pathlib.Path(r).with_suffix(".html").as_posix()}">{html.escape(r)}</a>'
                       for r in rendered)
    (out_dir / "index.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>echo_tutor labs: previews</title></head>"
        "<body style='font-family:sans-serif;margin:2em 4em'><h1>echo_tutor labs, executed</h1>"
        f"<p>Each lab run top to bottom in FAST mode with the solutions filled in, on "
        f"{datetime.date.today().isoformat()}. To run them yourself: <code>make lab</code>.</p><ol>{items}</ol>"
        + (f"<p>Beside them, the pages they link: {linked}.</p>" if rendered else "") + "</body></html>\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m echo_tutor.labs.preview", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labs", default="", help="comma-separated lab numbers (default: all), e.g. 00,03")
    ap.add_argument("--out", default=str(ROOT / "preview"), help="output folder (default: preview/)")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell (default 900)")
    ap.add_argument("--markdown", action="store_true", help="also write each executed lab as text (NN_name.md)")
    args = ap.parse_args(argv)
    try:
        rows = render_labs([x for x in args.labs.split(",") if x] or None, args.out, args.timeout, args.markdown)
    except BadArgumentError as e:
        print(f"preview: error: {e}", file=sys.stderr)
        return 2
    print(f"[preview] {len(rows)} lab(s) written to {args.out}/ (open index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
