"""The paper's experiments at this project's scale: the memory cliff, the transfer tasks, the ablation.

``cliff(fast=True)`` evaluates the shipped lab-scale checkpoints (``echo_tutor.models.LAB_PRESETS``, one model
per preset, all trained with ``LAB_RECIPE`` on MQAR-gap with 4-16 pairs and gaps 0..1024, values hidden
after the queries) over the grid KV pairs {4, 8, 16, 32} x gaps {0, 16, ..., 4096}, and records beside the
accuracy the share of answers that were *a bound value, but the wrong key's* and the inference-state bytes.
``cliff(fast=False)`` trains one paper-size model per (preset, pairs, gap) cell, as the paper does (a GPU
job). ``transfer`` trains each preset on each transfer task and measures NIAH length generalisation.
``ablation`` compares power orders K (and more) at equal budget over seeds. All write tidy JSON records and,
where there is a figure, an HTML file.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time
from typing import Any

import torch

from .models import LAB_RECIPE, build, count_parameters, state_nbytes
from .tasks import IGNORE, Task, make_task
from .train import _progress, evaluate, save_records, train

__all__ = ["ablation", "ABLATION_CONFIGS", "LAB_ABLATION_CONFIGS", "CLIFF_PRESETS", "CLIFF_PAIRS", "CLIFF_GAPS",
           "PAPER", "PRESET_COLORS", "cliff", "cliff_figure", "state_figure", "recall_breakdown", "transfer",
           "transfer_task", "verdict", "paired"]

# The memory-cliff grid at the lab scale: what each preset is for
#   echo      Mamba-2 + SKA (K=1, r=32)      fixed state
#   echo-r64  Mamba-2 + SKA (K=1, r=64)      fixed state, 4x the statistics
#   ssm+attn  Mamba-2 + full attention       state grows with the context (positive control)
#   ssm+swa   Mamba-2 + window-256 attention fixed state that forgets past its window
#   ssm       Mamba-2 + Mamba-2              fixed state with a learned decay (the paper's baseline)
CLIFF_PRESETS = ["echo", "echo-r64", "ssm+attn", "ssm+swa", "ssm"]
CLIFF_PAIRS = [4, 8, 16, 32]
CLIFF_GAPS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TRAINED_GAP_MAX = max(LAB_RECIPE["task"]["gap"])
VOCAB = 128

# One colour per preset, in every figure of the package and the labs.
PRESET_COLORS: dict[str, str] = {
    "echo": "#2ca02c", "echo-r64": "#17becf", "echo-k2": "#bcbd22", "ssm+ridge": "#9467bd",
    "ssm+attn": "#1f77b4", "ssm+swa": "#ff7f0e", "ssm": "#d62728", "attn": "#7f7f7f",
}

# The paper's numbers (Sridhar & Johansen 2026, arXiv 2605.06997).
PAPER: dict[str, Any] = {
    "mqar_50M": {"ssm": "~3% everywhere", "ssm+attn": "100% except the largest gap at 4 pairs", "echo": "100% everywhere"},
    "transfer_mean_acc": {  # sub-million models, SSM / SSM+Attn / SSM+SKA
        "mqar": (55.1, 76.0, 82.2), "system_prompt": (64.2, 81.3, 85.3), "tool_trace": (56.5, 76.2, 80.5),
        "niah": (52.0, 81.1, 84.2), "multi_hop": (39.3, 71.1, 76.7), "common_word": (52.9, 68.2, 74.1),
    },
    "niah_length": {  # trained at 64; SSM / SSM+Attn / SSM+SKA
        64: (88.6, 88.5, 94.5), 128: (82.1, 97.4, 89.4), 256: (75.8, 92.9, 93.3), 512: (66.9, 78.1, 95.6),
        1024: (37.3, 64.8, 86.4), 2048: (2.0, 42.5, 81.2), 4096: (2.0, 5.0, 65.1),
    },
}


def verdict(mean: float, sd: float) -> str:
    """The labs' rule for a paired difference over seeds: within ``max(sd, 0.02)`` of zero is no difference."""
    if abs(mean) <= max(sd, 0.02):
        return "no difference beyond the seed spread"
    return "better" if mean > 0 else "worse"


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard deviation of the seed-by-seed differences ``a - b`` (same seeds, same order)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"a and b must be non-empty and paired seed by seed, got lengths {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    return statistics.mean(d), (statistics.stdev(d) if len(d) > 1 else 0.0)


def _model_state_bytes(model, context: int) -> int:
    """Inference-state bytes after ``context`` tokens, measured on a real prefill (B=1)."""
    with torch.inference_mode():
        _, st = model(torch.zeros(1, context, dtype=torch.long))
    return state_nbytes(st)


@torch.no_grad()
def recall_breakdown(model, task: Task, num_examples: int = 64, seed: int = 10_000, batch_size: int = 16) -> dict[str, float]:
    """Accuracy at answer positions, and what the wrong answers were, on MQAR-style examples.

    Returns ``acc``; ``bound_wrong``: the share of answers that were a value bound in the same example but
    to another key (the model knows *which values* were bound, not *which key* each belongs to);
    ``other_wrong``: any other wrong token; ``first_query_acc``: accuracy at the first query only."""
    model.eval()
    hit = bound = other = first_hit = n_first = total = 0
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x)[0].argmax(-1)
        mask = y != IGNORE
        n = int(mask[0].sum())  # queries per example (== KV pairs)
        bound_vals = x[:, 1:2 * n:2]  # [B, n]: the values of the context block
        ok = (pred == y) & mask
        in_bound = (pred[..., None] == bound_vals[:, None, :]).any(-1) & mask & ~ok
        hit, bound, total = hit + int(ok.sum()), bound + int(in_bound.sum()), total + int(mask.sum())
        other += int((mask & ~ok & ~in_bound).sum())
        first = mask.float().argmax(1)
        rows = torch.arange(x.shape[0])
        first_hit, n_first = first_hit + int(ok[rows, first].sum()), n_first + x.shape[0]
    return {"acc": hit / total, "bound_wrong": bound / total, "other_wrong": other / total,
            "first_query_acc": first_hit / n_first}


def _lab_task(n: int, gap: int, fast: bool = True) -> Task:
    kw = {k: v for k, v in LAB_RECIPE["task"].items() if k not in ("name", "num_kv_pairs", "gap")}
    return make_task("mqar_gap", **kw, num_kv_pairs=n, gap=gap)


def cliff(fast: bool = True, out_dir: str | pathlib.Path = "runs/cliff", examples: int | None = None,
          presets: list[str] | None = None, pairs: list[int] | None = None, gaps: list[int] | None = None,
          steps: int = 2000, progress: bool = True) -> list[dict[str, Any]]:
    """Accuracy per (preset, KV pairs, gap); writes ``cliff.json`` and ``cliff.html`` to ``out_dir``.

    fast: evaluate the shipped lab-scale checkpoints (``echo_tutor.pretrained``); else train a fresh
    paper-size model per cell for ``steps`` steps (the paper's protocol; hours on a CPU, meant for a GPU).
    Every record: preset, pairs, gap, acc, bound_wrong, other_wrong, first_query_acc, state_bytes (after
    the prompt, B=1, float32), examples, seconds.
    """
    from .pretrained import load_pretrained

    presets = presets or CLIFF_PRESETS
    pairs, gaps = pairs or CLIFF_PAIRS, gaps or CLIFF_GAPS
    examples = examples or (64 if fast else 512)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = _progress(len(presets) * len(pairs) * len(gaps), "cliff", progress)
    for preset in presets:
        model = load_pretrained(preset) if fast else None
        for n in pairs:
            for gap in gaps:
                task = _lab_task(n, gap)
                t0 = time.perf_counter()
                if not fast:
                    torch.manual_seed(0)
                    model = build(preset, vocab_size=VOCAB)
                    train(model, task, steps=steps, batch_size=16, lr=3e-3, progress=False, eval_every=steps)
                bs = 16 if 4 * n + gap <= 1200 else 4  # attention over 4k tokens: keep the score tensors small
                rec = {"preset": preset, "pairs": n, "gap": gap,
                       **recall_breakdown(model, task, examples, batch_size=bs), "examples": examples,
                       "mode": "shipped lab-scale checkpoint" if fast else f"trained per cell, {steps} steps",
                       "state_bytes": _model_state_bytes(model, 4 * n + gap), "seconds": round(time.perf_counter() - t0, 2)}
                records.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(preset=preset, pairs=n, gap=gap, acc=f"{rec['acc']:.2f}")
                else:
                    print(f"{preset:<10} pairs {n:>3} gap {gap:>5}: acc {rec['acc']:.3f}", flush=True)
    if bar is not None:
        bar.close()
    save_records(records, out_dir / "cliff.json")
    try:
        cliff_figure(records).write_html(out_dir / "cliff.html", include_plotlyjs=True)
    except ImportError:  # plotly is in the lab extra
        pass
    _print_cliff_table(records)
    return records


def _print_cliff_table(records: list[dict[str, Any]]) -> None:
    presets = list(dict.fromkeys(r["preset"] for r in records))
    gaps = sorted({r["gap"] for r in records})
    for n in sorted({r["pairs"] for r in records}):
        print(f"\nKV pairs = {n}: accuracy by gap")
        print(f"{'preset':<10}" + "".join(f"{g:>7}" for g in gaps))
        for p in presets:
            row = {r["gap"]: r["acc"] for r in records if r["preset"] == p and r["pairs"] == n}
            print(f"{p:<10}" + "".join(f"{row.get(g, float('nan')):>7.2f}" for g in gaps))


def cliff_figure(records: list[dict[str, Any]], trained_gap_max: int | None = TRAINED_GAP_MAX):
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
        fig.add_scatter(x=[str(g) for g in gaps], y=[2 / VOCAB] * len(gaps), mode="lines", name="chance (2/V)",
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


# ------------------------------------------------------------------------------------------------ transfer
def transfer_task(name: str, vocab_size: int = VOCAB, fast: bool = True) -> Task:
    """The transfer tasks at this project's scale (lengths ~60-200 tokens)."""
    V = vocab_size
    specs = {
        "mqar": dict(vocab_size=V, seq_len=128, num_kv_pairs=8),
        "system_prompt": dict(vocab_size=V, num_vars=6, gap=[32, 64, 96], num_decoys=4),
        "tool_trace": dict(vocab_size=V, num_vars=6, num_ops=16, num_queries=6),
        "niah": dict(vocab_size=V, seq_len=64),
        "multi_hop": dict(vocab_size=V, num_chains=4, gap=[16, 32, 64]),
        "common_word": dict(vocab_size=V, seq_len=64, repeats=4),
    }
    if name not in specs:
        raise ValueError(f"name must be one of the transfer tasks {list(specs)}, got {name!r}")
    return make_task(name, **specs[name])


@torch.no_grad()
def tool_trace_by_writes(model, task: Task, num_examples: int = 256, seed: int = 20_000, batch_size: int = 32) -> dict[str, float]:
    """Tool-trace accuracy split by how many times the queried variable was written (1, 2, 3+).

    Statistics that never forget (SKA's G, C) hold every value ever bound to a variable, so a readout
    should drift towards a blend of the old and new values as the number of writes grows."""
    V = task.vocab_size
    SET = V - 1
    hits: dict[str, list[int]] = {"1": [0, 0], "2": [0, 0], "3+": [0, 0]}
    model.eval()
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x)[0].argmax(-1)
        for b in range(x.shape[0]):
            writes: dict[int, int] = {}
            row = x[b].tolist()
            for j in range(0, len(row), 3):
                if row[j] == SET:
                    writes[row[j + 1]] = writes.get(row[j + 1], 0) + 1
                elif y[b, j + 1] != -100:
                    key = str(min(writes[row[j + 1]], 3)) if writes[row[j + 1]] < 3 else "3+"
                    hits[key][0] += int(pred[b, j + 1] == y[b, j + 1])
                    hits[key][1] += 1
    return {k: (c / n if n else float("nan")) for k, (c, n) in hits.items()}


TRANSFER_TASKS = ["mqar", "system_prompt", "tool_trace", "niah", "multi_hop", "common_word"]
TRANSFER_PRESETS = ["ssm", "ssm+attn", "echo"]
NIAH_LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]


def transfer(fast: bool = True, out_dir: str | pathlib.Path = "runs/transfer", presets: list[str] | None = None,
             tasks: list[str] | None = None, seconds: float | None = None, steps: int | None = None,
             niah_lengths: list[int] | None = None, progress: bool = True,
             model_overrides: dict[str, Any] | None = None, eval_examples: int = 256) -> dict[str, list[dict[str, Any]]]:
    """Train each preset on each transfer task (same budget), evaluate, and measure NIAH length
    generalisation (trained at 64). Writes ``transfer.json`` (both tables) and ``transfer.html``."""
    presets, tasks = presets or TRANSFER_PRESETS, tasks or TRANSFER_TASKS
    seconds = seconds if seconds is not None else (60.0 if fast else None)
    steps = steps or (2000 if fast else 6000)
    niah_lengths = niah_lengths or (NIAH_LENGTHS[:5] if fast else NIAH_LENGTHS)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table, niah_rows, overwrite_rows = [], [], []
    for name in tasks:
        task = transfer_task(name, fast=fast)
        for preset in presets:
            torch.manual_seed(0)
            model = build(preset, vocab_size=VOCAB, **(model_overrides or {}))
            res = train(model, task, steps=steps, batch_size=16, lr=3e-3, time_budget_s=seconds,
                        eval_every=steps, progress=progress, eval_examples=eval_examples)
            row = {"task": name, "preset": preset, "acc": res.final_eval, "steps": res.steps_done,
                   "train_seconds": round(res.time_s, 1), "params": count_parameters(model)}
            paper = PAPER["transfer_mean_acc"][name][TRANSFER_PRESETS.index(preset)] if preset in TRANSFER_PRESETS else None
            row["paper_acc"] = paper
            table.append(row)
            print(f"{name:<14} {preset:<9} acc {row['acc']:.3f} ({res.steps_done} steps, {res.time_s:.0f} s)"
                  f"   paper {paper}%", flush=True)
            if name == "tool_trace":
                by = tool_trace_by_writes(model, task, eval_examples)
                overwrite_rows.append({"preset": preset, **{f"acc_writes_{k}": v for k, v in by.items()}})
                print(f"  tool_trace by writes to the queried variable: {by}", flush=True)
            if name == "niah":
                for L in niah_lengths:
                    n_eval = min(eval_examples, 128) if fast else 2 * eval_examples
                    acc = evaluate(model, make_task("niah", vocab_size=VOCAB, seq_len=L), n_eval, batch_size=16)
                    p_idx = TRANSFER_PRESETS.index(preset) if preset in TRANSFER_PRESETS else None
                    niah_rows.append({"preset": preset, "length": L, "acc": acc,
                                      "paper_acc": PAPER["niah_length"][L][p_idx] if p_idx is not None else None})
                    print(f"  niah length {L:>5}: acc {acc:.3f}", flush=True)
    out = {"table": table, "niah_length": niah_rows, "tool_trace_overwrites": overwrite_rows, "fast": fast,
           "seconds_per_model": seconds, "max_steps": steps}
    (out_dir / "transfer.json").write_text(json.dumps(out, indent=1))
    return out


# ------------------------------------------------------------------------------------------------ ablation
# (name, power_steps K, spectral_norm, prefix mask)
ABLATION_CONFIGS = [
    ("K=0 (ridge / mesa)", 0, True, False),
    ("K=1", 1, True, False),
    ("K=2 (paper)", 2, True, False),
    ("K=4", 4, True, False),
    ("K=2, no spectral norm", 2, False, False),
    ("K=2, prefix mask", 2, True, True),
    ("K=0, prefix mask", 0, True, True),
]


# The lab-scale ablation: the power order K at the lab scale and recipe (seed 0 of K=0 / K=2 ships as the
# ``ssm+ridge`` / ``echo-k2`` checkpoints' twins).
LAB_ABLATION_CONFIGS = [
    ("K=0 (ridge / mesa)", 0, True, False),
    ("K=1", 1, True, False),
    ("K=2 (paper)", 2, True, False),
]


def ablation_tasks(fast: bool = True, scale: str = "small") -> dict[str, Task]:
    if scale == "lab":
        return {"mqar_gap": make_task(**LAB_RECIPE["task"])}
    V = 64 if fast else 128
    return {
        "mqar_gap": make_task("mqar_gap", vocab_size=V, num_kv_pairs=4 if fast else 8, gap=[32, 64, 128] if fast else [64, 256, 1024]),
        "tool_trace": make_task("tool_trace", vocab_size=V, num_vars=4 if fast else 6, num_ops=10 if fast else 16,
                                num_queries=4 if fast else 6),
    }


def ablation(fast: bool = True, out_dir: str | pathlib.Path = "runs/ablation", seeds: int | None = None,
             steps: int | None = None, configs: list[tuple[str, int, bool, bool]] | None = None,
             tasks: list[str] | None = None, progress: bool = True,
             model_overrides: dict[str, Any] | None = None, scale: str = "small",
             save_models: bool = False) -> list[dict[str, Any]]:
    """The power-filter ablation: every config trains the same model (echo layout) on every task with the
    same number of steps and the same seeds; reports mean and spread of the final accuracy.

    scale="small" (the first ablation): fast: d=64 4-block models on short tasks (vocab 64; MQAR-gap with 4
    pairs and gaps 32-128; tool traces of 10 writes), ``steps=500``, 3 seeds; full: the paper-size echo
    preset on 8-pair MQAR-gap up to gap 1024, 2000 steps (a GPU job).
    scale="lab": the lab-scale echo model (``LAB_PRESETS``) on the lab recipe's MQAR-gap mixture, K = 0, 1,
    2 (``LAB_ABLATION_CONFIGS``), batch 16, ``steps=1500``; each record adds the accuracy at 16 pairs and
    gap 1024 and the recall breakdown at 8 pairs, gap 256.
    Writes ``ablation.json`` and ``ablation.md`` (a markdown table) to ``out_dir`` (and each model as
    ``<config>_seed<k>.pt`` with ``save_models``)."""
    if scale not in ("small", "lab"):
        raise ValueError(f"scale must be 'small' or 'lab', got {scale!r}")
    configs = configs or (LAB_ABLATION_CONFIGS if scale == "lab" else ABLATION_CONFIGS)
    seeds = seeds or 3
    steps = steps or (1500 if scale == "lab" else 500 if fast else 2000)
    all_tasks = ablation_tasks(fast, scale)
    tasks = tasks or list(all_tasks)
    unknown = [t for t in tasks if t not in all_tasks]
    if unknown:
        raise ValueError(f"tasks must be drawn from {list(all_tasks)}, got unknown {unknown}")
    if scale == "lab":
        size, batch = dict(model_overrides or {}), 16
    else:
        size, batch = {**(dict(d_model=64, n_heads=4, ska_rank=16, d_state=16) if fast else {}), **(model_overrides or {})}, 16
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    bar = _progress(len(configs) * len(tasks) * seeds, "ablation", progress)
    for tname in tasks:
        task = all_tasks[tname]
        for cname, K, sn, mask in configs:
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = build("echo", vocab_size=task.vocab_size, scale="paper" if scale == "small" else "lab",
                              mixer_kwargs={"ska": {"power_steps": K, "spectral_norm": sn}}, **size)
                res = train(model, task, steps=steps, batch_size=batch, lr=3e-3, seed=seed,
                            eval_every=100 if scale == "lab" else steps, eval_examples=256 if scale == "small" else 128,
                            prefix_mask=mask, progress=False)
                if scale == "lab":
                    final = evaluate(model, task, 256, batch_size=16)
                else:
                    final = res.final_eval
                rec = {"task": tname, "config": cname, "power_steps": K, "spectral_norm": sn,
                       "prefix_mask": mask, "seed": seed, "acc": final, "steps": res.steps_done,
                       "train_seconds": round(res.time_s, 1)}
                if scale == "lab":
                    rec["acc_16pairs_gap1024"] = evaluate(model, _lab_task(16, 1024), 64, batch_size=16)
                    rec.update({f"{k}_8pairs_gap256": v for k, v in recall_breakdown(model, _lab_task(8, 256), 64).items()})
                    rec["evals"] = res.evals
                if save_models:
                    model.save(out_dir / f"K{K}{'' if sn else '_nosn'}{'_mask' if mask else ''}_seed{seed}.pt")
                records.append(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(task=tname, config=cname, seed=seed, acc=f"{final:.2f}")
                else:
                    print(f"{tname:<11} {cname:<24} seed {seed}: acc {final:.3f} ({res.time_s:.0f} s)", flush=True)
    if bar is not None:
        bar.close()
    save_records(records, out_dir / "ablation.json")
    lines = ["| config | " + " | ".join(f"{t} acc (mean ± sd, {seeds} seeds)" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for cname, *_ in configs:
        cells = []
        for t in tasks:
            accs = [r["acc"] for r in records if r["task"] == t and r["config"] == cname]
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f}")
        lines.append(f"| {cname} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out_dir / "ablation.md").write_text(table + "\n")
    print(table)
    return records


# ------------------------------------------------------------------------------------------- diagnostics
class ablate_mixer:
    """Context manager: block ``index``'s sequence mixer adds nothing to the residual stream (its MLP stays).

    ``with ablate_mixer(model, 1): model(x)`` shows what the other blocks carry on their own."""

    def __init__(self, model, index: int) -> None:
        if not hasattr(model, "blocks") or not (0 <= index < len(model.blocks)):
            raise ValueError(f"index must name a block of the model (0..{len(getattr(model, 'blocks', [])) - 1}), got {index}")
        self.mixer, self.handle = model.blocks[index].mixer, None

    def __enter__(self):
        def zero(_m, _inp, out):
            y, st = out
            return torch.zeros_like(y), st

        self.handle = self.mixer.register_forward_hook(zero)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@torch.no_grad()
def ssm_decay(model, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per-token retention ``exp(A dt_t)`` of every Mamba-2 block: ``{block index: [B, T, H]}``.

    A Mamba-2 head multiplies its state by ``exp(A dt_t)`` at token ``t`` (``A < 0``; ``dt_t`` is chosen by
    the token, the selective part), so what was written ``g`` tokens ago is scaled by the product of the
    next ``g`` factors. ids ``[B, T]``."""
    from .ssm import Mamba2

    out: dict[int, torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(model.blocks):
        if isinstance(blk.mixer, Mamba2):
            def grab(_lin, _inp, zxbcdt, i=i, m=blk.mixer):
                dt = torch.nn.functional.softplus(zxbcdt[..., -m.n_heads:] + m.dt_bias)  # [B, T, H]
                out[i] = torch.exp(-torch.exp(m.A_log.float()) * dt)
            hooks.append(blk.mixer.in_proj.register_forward_hook(grab))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return out
