"""The experiments' figures (plotly, from the lab extra): the memory cliff and recall against state bytes."""

from __future__ import annotations

from typing import Any

from .common import TRAINED_GAP_MAX, VOCAB

__all__ = ["PRESET_COLORS", "cliff_figure", "state_figure"]

# One colour per preset, in every figure of the package and the labs.
PRESET_COLORS: dict[str, str] = {
    "echo": "#2ca02c", "echo-r64": "#17becf", "echo-ft": "#8c564b", "echo-k2": "#bcbd22", "ssm+ridge": "#9467bd",
    "ssm+attn": "#1f77b4", "ssm+swa": "#ff7f0e", "ssm": "#d62728", "attn": "#7f7f7f",
}
PRESET_COLORS.update({f"synth1m-{k}": v for k, v in list(PRESET_COLORS.items())})  # a synth1m-size twin, its lab colour



def cliff_figure(records: list[dict[str, Any]], trained_gap_max: int | None = TRAINED_GAP_MAX, vocab_size: int = VOCAB):
    """Accuracy vs gap per preset, one panel per KV-pairs value. The gap axis is categorical (0, 16, ...,
    4096: evenly spaced, i.e. logarithmic from 16 on); chance among the values (2/V) is dotted."""
    from plotly.subplots import make_subplots

    pairs = sorted({r["pairs"] for r in records})
    presets = list(dict.fromkeys(r["preset"] for r in records))
    gaps = sorted({r["gap"] for r in records})
    fig = make_subplots(rows=1, cols=len(pairs), subplot_titles=[f"{n} KV pairs" for n in pairs], shared_yaxes=True,
                        horizontal_spacing=0.03)
    for j, n in enumerate(pairs):
        for p in presets:
            rs = sorted((r for r in records if r["preset"] == p and r["pairs"] == n), key=lambda r: r["gap"])
            fig.add_scatter(x=[str(r["gap"]) for r in rs], y=[r["acc"] for r in rs], mode="lines+markers", name=p,
                            legendgroup=p, showlegend=j == 0, line=dict(color=PRESET_COLORS.get(p)), row=1, col=j + 1)
        fig.add_scatter(x=[str(g) for g in gaps], y=[2 / vocab_size] * len(gaps), mode="lines", name="chance (2/V)",
                        legendgroup="chance", showlegend=j == 0, line=dict(color="gray", dash="dot", width=1), row=1, col=j + 1)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(g) for g in gaps], title_text="gap (tokens)")
    fig.update_yaxes(range=[-0.02, 1.05], title_text="MQAR-gap accuracy", col=1)
    if trained_gap_max is not None and trained_gap_max in gaps:
        for j in range(len(pairs)):
            fig.add_vline(x=gaps.index(trained_gap_max), line_dash="dash", line_color="gray", line_width=1, row=1, col=j + 1)
    fig.update_layout(height=400, title="The memory cliff: recall accuracy vs distractor gap (dashed: longest trained gap)",
                      legend=dict(orientation="h", y=-0.25))
    return fig



def state_figure(records: list[dict[str, Any]], pairs: int = 8):
    """Accuracy against inference-state bytes (Based's recall-vs-state view): one point per (preset, gap)
    at ``pairs`` KV pairs, log-scaled bytes, a line per preset in order of gap."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for p in dict.fromkeys(r["preset"] for r in records):
        rs = sorted((r for r in records if r["preset"] == p and r["pairs"] == pairs), key=lambda r: r["gap"])
        fig.add_scatter(x=[r["state_bytes"] for r in rs], y=[r["acc"] for r in rs], mode="lines+markers", name=p,
                        line=dict(color=PRESET_COLORS.get(p)), marker=dict(size=7),
                        customdata=[r["gap"] for r in rs],
                        hovertemplate=p + ": gap %{customdata}<br>state %{x:,.0f} B<br>acc %{y:.2f}<extra></extra>")
    fig.update_xaxes(type="log", title_text="inference state after the prompt (bytes, float32, log scale)")
    fig.update_yaxes(range=[-0.02, 1.05], title_text="accuracy")
    fig.update_layout(height=400, title=f"Recall vs state size ({pairs} KV pairs; points run from gap 0 to 4096)")
    return fig

