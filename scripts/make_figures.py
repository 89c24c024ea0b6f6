"""Draw the README's figures as PNGs under docs/figures/ from the results that ship with the package.

    make figures                        # = .venv/bin/python scripts/make_figures.py
    python scripts/make_figures.py --only cliff --out-dir /tmp/figs

Nothing is trained or downloaded: every number comes from echo_tutor/pretrained/results_*.json (the same
records labs 03 and 06 plot). The PNGs are written by kaleido 1.x (the `lab` extra), which drives a
Chrome/Chromium: `BROWSER_PATH` if set, else the first of chromium / google-chrome found on PATH (Debian's
/usr/bin/chromium). MathJax is switched off and plotly.js comes from the installed plotly package, so the
export works offline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 200_000  # the figures are committed: keep each one small


def memory_cliff():
    """Lab 03, section 3: accuracy against the gap for the four shipped lab-scale models, each read the way it
    decodes (echo's SKA token by token)."""
    from echo_tutor.experiments import as_decoded, cliff_figure
    from echo_tutor.pretrained import results

    fig = cliff_figure(as_decoded(results("cliff"), results("cliff_decode")))
    fig.update_layout(title=dict(text="The memory cliff: MQAR-gap recall vs distractor gap, shipped lab-scale models "
                                      "read as they decode (64 examples per point; dashed: longest trained gap)",
                                 font_size=15),
                      legend=dict(orientation="h", y=-0.2, x=0.5, xanchor="center"), margin=dict(l=70, r=20, t=80, b=90))
    fig.update_xaxes(tickangle=-60, title_font_size=12)
    for tr in fig.data:  # echo's curve lies under ssm+attn's at 1.00: draw it wide so both show
        if tr.name == "echo":
            tr.line.width = 6
    return fig, 1400, 460


def recall_vs_state():
    """Lab 03, section 6: accuracy against the bytes of each model's inference state (8 KV pairs), on the same
    grid as the memory-cliff figure: each model read the way it decodes (echo's SKA token by token)."""
    from echo_tutor.experiments import as_decoded, state_figure
    from echo_tutor.pretrained import results

    fig = state_figure(as_decoded(results("cliff"), results("cliff_decode")), pairs=8)
    fig.update_layout(title=dict(text="Recall vs inference state, 8 KV pairs, models read as they decode: one point "
                                      "per gap (0 to 4096); a fixed state puts every gap at one x", font_size=15),
                      legend=dict(title_text="model"), margin=dict(l=70, r=20, t=70, b=60))
    for tr in fig.data:  # echo's ten gaps share one point at 1.00, beside ssm+swa's short gaps: draw it large
        if tr.name == "echo":
            tr.marker.size = 16
    return fig, 1000, 450


def echokv_perplexity():
    """Lab 06, section 6: held-out perplexity against the fraction of KV-cache bytes kept (the shipped run),
    and beside it the change in perplexity of every method at 50% of the bytes (lab 06's table)."""
    from plotly.subplots import make_subplots

    from echo_tutor.echokv.study import METHOD_FAMILIES, method_family
    from echo_tutor.pretrained import results

    full = results("echokv")
    ppl = full["perplexity"]

    groups: dict[tuple, list] = {}
    for name, r in ppl.items():
        groups.setdefault(method_family(name), []).append((r["fraction"], r["ppl"], name))
    vs = next(c for c in full["paired"] if "StreamingLLM" in c["b"])  # stage 2 vs StreamingLLM, window by window
    lo, hi = vs["ci95"]
    significant = not lo < 0 < hi
    paired = (f"stage 2 vs StreamingLLM, paired over windows: {'significant' if significant else 'NOT significant'}"
              f"<br>(NLL difference, 95% interval [{lo:+.3f}, {hi:+.3f}]; stage 2 better on "
              f"{vs['a_better_windows']} of {vs['windows']} windows)")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.56, 0.44], horizontal_spacing=0.25,
                        subplot_titles=["perplexity vs bytes kept (every ratio run)",
                                        f"change in perplexity at 50% of the bytes<br><sup>{paired}</sup><br> "])
    for (_, legend, colour), pts in sorted(groups.items(), key=lambda g: METHOD_FAMILIES.index(g[0])):
        pts.sort()
        fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="markers+lines", name=legend,
                        line=dict(color=colour), marker=dict(color=colour, size=8), row=1, col=1)
    fig.add_hline(y=ppl["full"]["ppl"], line=dict(color="#000000", dash="dot", width=1), row=1, col=1)
    half = sorted(((r["delta_ppl"], name) for name, r in ppl.items() if name.endswith("@0.5")), reverse=True)
    fig.add_bar(x=[d for d, _ in half], y=[n.replace("echokv-lite", "EchoKV-lite") for _, n in half], orientation="h",
                marker_color=[method_family(n)[2] for _, n in half], text=[f"+{d:.2f}" for d, _ in half],
                textposition="outside", showlegend=False, row=1, col=2)
    cfg = full["config"]
    fig.update_layout(title=dict(text=f"EchoKV-lite on SmolLM2-135M, shipped run: held-out perplexity "
                                      f"({cfg['eval_windows']} windows of {cfg['ctx_len']} + {cfg['eval_len']} tokens; "
                                      f"full cache {ppl['full']['ppl']:.2f}, dotted)", font_size=15, y=0.98, yanchor="top"),
                      legend=dict(orientation="h", y=-0.16, x=0, font_size=11), margin=dict(l=70, r=30, t=140, b=150))
    fig.update_xaxes(title_text="fraction of the full cache's bytes kept", range=[0.15, 1.03], row=1, col=1)
    fig.update_yaxes(title_text="held-out perplexity (log scale)", type="log", row=1, col=1)
    fig.update_xaxes(title_text="perplexity minus full cache's (log scale)", type="log", range=[-0.7, 2.0], row=1, col=2)
    fig.update_yaxes(tickfont_size=11, row=1, col=2)
    return fig, 1400, 660


FIGURES = {"memory_cliff": memory_cliff, "recall_vs_state": recall_vs_state, "echokv_perplexity": echokv_perplexity}


def find_browser() -> str:
    """The Chrome/Chromium kaleido should drive: BROWSER_PATH, else one on PATH."""
    if os.environ.get("BROWSER_PATH"):
        return os.environ["BROWSER_PATH"]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("make_figures: no Chrome/Chromium found; install one (Debian: apt-get install chromium) "
             "or set BROWSER_PATH to its executable")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--only", nargs="+", choices=list(FIGURES), help="draw only these figures")
    args = ap.parse_args(argv)

    os.environ["BROWSER_PATH"] = find_browser()  # choreographer (kaleido's browser driver) reads it
    import kaleido

    args.out_dir.mkdir(parents=True, exist_ok=True)
    too_big = []
    for name in args.only or FIGURES:
        fig, width, height = FIGURES[name]()
        fig.update_layout(template="plotly_white", width=width, height=height)
        path = args.out_dir / f"{name}.png"
        kaleido.write_fig_sync(fig, path=str(path), opts=dict(format="png", width=width, height=height, scale=1),
                               kopts=dict(mathjax=False))  # no CDN: offline
        size = path.stat().st_size
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {width} x {height} px, {size / 1e3:.0f} KB")
        if size > MAX_BYTES:
            too_big.append(name)
    if too_big:
        print(f"make_figures: larger than {MAX_BYTES / 1e3:.0f} KB: {too_big}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
