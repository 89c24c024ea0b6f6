"""The paper's experiments at this project's scale: the memory cliff, the transfer tasks, the ablation.

``cliff(fast=True)`` evaluates the shipped lab-scale checkpoints (``echo_tutor.models.LAB_PRESETS``, one model
per preset, all trained with ``LAB_RECIPE`` on MQAR-gap with 4-16 pairs and gaps 0..1024, values hidden
after the queries) over the grid KV pairs {4, 8, 16, 32} x gaps {0, 16, ..., 4096}, and records beside the
accuracy the share of answers that were *a bound value, but the wrong key's* and the inference-state bytes.
``cliff(fast=False)`` trains one paper-size model per (preset, pairs, gap) cell, as the paper does (a GPU
job). ``transfer`` trains each preset on each transfer task and measures NIAH length generalisation.
``ablation`` compares power orders K (and more) at equal budget over seeds. All write tidy JSON records and,
where there is a figure, an HTML file.

Each experiment is a grid of *cells* (plain-dict specs) run by one module-level function per experiment
(:func:`cliff_cell`, :func:`transfer_cell`, :func:`ablation_cell`) through :func:`echo_tutor.grid.run_grid`:
one after the other in this process (``executor="local"``) or as Ray tasks (``executor="ray"``, on this
machine or a cluster), with the same records either way. Every cell seeds itself and picks its device
(CUDA if available, else the CPU); its record is appended to ``<out_dir>/records.jsonl`` as it finishes,
so a rerun into the same ``out_dir`` only runs the cells not recorded yet. The summary files are built
from the records once the grid is done. A grid with failed cells still writes the summary of the others,
then raises :class:`echo_tutor.grid.GridError` listing the failed cells.
"""

from __future__ import annotations

import hashlib
import copy
import json
import pathlib
import statistics
from typing import Any

import torch

from ._checks import check_int, check_positive
from .grid import GridError, failed, run_grid
from .models import LAB_PRESETS, LAB_RECIPE, PRESETS, SCALES, build, count_parameters, state_nbytes
from .tasks import IGNORE, Task, make_task
from .train import default_device, evaluate, save_records, train

__all__ = ["ablation", "ablation_cell", "ABLATION_CONFIGS", "LAB_ABLATION_CONFIGS", "CLIFF_PRESETS", "CLIFF_PAIRS",
           "CLIFF_GAPS", "PAPER", "PRESET_COLORS", "lab_task", "cliff", "cliff_cell", "cliff_figure", "state_figure",
           "recall_breakdown", "transfer", "transfer_cell", "transfer_task", "verdict", "paired"]

# The memory-cliff grid at the lab scale: what each preset is for
#   echo      Mamba-2 + SKA (K=1, r=32)      fixed state
#   ssm+attn  Mamba-2 + full attention       state grows with the context (positive control)
#   ssm+swa   Mamba-2 + window-256 attention fixed state that forgets past its window
#   ssm       Mamba-2 + Mamba-2              fixed state with a learned decay (the paper's baseline)
CLIFF_PRESETS = ["echo", "ssm+attn", "ssm+swa", "ssm"]
CLIFF_PAIRS = [4, 8, 16, 32]
CLIFF_GAPS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TRAINED_GAP_MAX = max(LAB_RECIPE["task"]["gap"])
VOCAB = 128

# One colour per preset, in every figure of the package and the labs.
PRESET_COLORS: dict[str, str] = {
    "echo": "#2ca02c", "echo-r64": "#17becf", "echo-ft": "#8c564b", "echo-k2": "#bcbd22", "ssm+ridge": "#9467bd",
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


def _device_of(model) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def _model_state_bytes(model, context: int) -> int:
    """Inference-state bytes after ``context`` tokens, measured on a real prefill (B=1)."""
    with torch.inference_mode():
        _, st = model(torch.zeros(1, context, dtype=torch.long, device=_device_of(model)))
    return state_nbytes(st)


@torch.no_grad()
def recall_breakdown(model, task: Task, num_examples: int = 64, seed: int = 10_000, batch_size: int = 16) -> dict[str, float]:
    """Accuracy at answer positions, and what the wrong answers were, on MQAR-style examples.

    Returns ``acc``; ``bound_wrong``: the share of answers that were a value bound in the same example but
    to another key (the model knows *which values* were bound, not *which key* each belongs to);
    ``other_wrong``: any other wrong token; ``first_query_acc``: accuracy at the first query only.
    The model runs on its own device; the bookkeeping is done on the CPU."""
    if not isinstance(task, Task):
        raise ValueError(f"task must be an echo_tutor.tasks.Task (make_task(...)), got {type(task).__name__}")
    check_int("num_examples", num_examples, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    model.eval()
    device = _device_of(model)
    hit = bound = other = first_hit = n_first = total = 0
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x.to(device))[0].argmax(-1).cpu()  # [B, T]
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


def _lab_task_args(n: int, gap: int) -> dict[str, Any]:
    """``make_task`` arguments of the lab recipe's MQAR-gap at one point: ``n`` KV pairs, ``gap`` tokens."""
    kw = {k: v for k, v in LAB_RECIPE["task"].items() if k not in ("num_kv_pairs", "gap")}
    return {**kw, "num_kv_pairs": n, "gap": gap}


def lab_task(pairs: int, gap: int) -> Task:
    """The lab recipe's MQAR-gap (vocab 128, value-half distractors, values hidden) at one grid point."""
    return make_task(**_lab_task_args(pairs, gap))


def _check_int_list(name: str, xs: Any, min_value: int) -> list[int]:
    if not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError(f"{name} must be a non-empty list of ints, got {xs!r}")
    for x in xs:
        if isinstance(x, bool) or not isinstance(x, int) or x < min_value:
            raise ValueError(f"{name} must hold ints >= {min_value}, got {x!r}")
    return list(xs)


def _check_names(name: str, xs: Any, allowed: list[str], what: str) -> list[str]:
    if not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError(f"{name} must be a non-empty list of names, got {xs!r}")
    unknown = [x for x in xs if x not in allowed]
    if unknown:
        raise ValueError(f"{name} must be drawn from {what} {allowed}, got unknown {unknown}")
    return list(xs)


def _cell_result(record: dict[str, Any], *drop: str) -> dict[str, Any]:
    """A successful record's result without the keys ``drop`` (bookkeeping such as ``device``)."""
    return {k: v for k, v in record["result"].items() if k not in drop}


def _finish(records: list[dict[str, Any]], out_dir: pathlib.Path) -> None:
    """Raise :class:`~echo_tutor.grid.GridError` listing the failed cells, if any (after the outputs are
    written from the others)."""
    bad = failed(records)
    if bad:
        raise GridError(bad, len(records), out_dir)


def _checkpoint_id(preset: str) -> dict[str, str]:
    """The shipped checkpoint of ``preset``: file name and the first 16 hex digits of its sha1 (so that a
    retrained checkpoint is a new cell, and a worker with another version of it fails instead of lying)."""
    from .pretrained import path_of

    p = path_of(preset)
    return {"file": p.name, "sha1": hashlib.sha1(p.read_bytes()).hexdigest()[:16]}


def cliff_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One cell of the memory-cliff grid: one model at one (KV pairs, gap) point, on this process's device
    (CUDA if available, else the CPU).

    The spec (built by :func:`cliff`)::

        {"experiment": "cliff", "mode": "checkpoint" | "train", "preset": "echo",
         "task": {make_task arguments: the lab recipe's mqar_gap at num_kv_pairs=n, gap=g},
         "examples": 64, "seed": 0,
         # mode "checkpoint": the shipped checkpoint's {"file", "sha1"}
         "checkpoint": {...},
         # mode "train": the paper-size preset trained from scratch on this one point
         "scale": "paper", "vocab_size": 128, "steps": 2000, "batch_size": 16, "lr": 0.003}

    Returns ``acc``, ``bound_wrong``, ``other_wrong``, ``first_query_acc`` (:func:`recall_breakdown` on
    ``examples`` fresh examples), ``state_bytes`` (after the ``4n + g`` prompt tokens, B=1), ``device``, and
    for mode "train" ``steps``, ``train_seconds`` and ``final_loss`` (the last training batch's).
    """
    torch.manual_seed(spec["seed"])
    device = default_device()
    task = make_task(**spec["task"])
    out: dict[str, Any] = {}
    if spec["mode"] == "checkpoint":
        from .pretrained import load_pretrained

        here = _checkpoint_id(spec["preset"])
        if here != spec["checkpoint"]:
            raise RuntimeError(f"checkpoint {spec['preset']!r} here is {here}, the grid was built for "
                               f"{spec['checkpoint']} (a different echo_tutor install on this worker?)")
        model = load_pretrained(spec["preset"]).to(device)
    elif spec["mode"] == "train":
        model = build(spec["preset"], vocab_size=spec["vocab_size"], scale=spec["scale"])
        res = train(model, task, steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"],
                    eval_every=spec["steps"], device=device, progress=False)
        out = {"steps": res.steps_done, "train_seconds": round(res.time_s, 1), "final_loss": res.history[-1]["loss"]}
    else:
        raise ValueError(f"spec['mode'] must be 'checkpoint' or 'train', got {spec['mode']!r}")
    n, gap = spec["task"]["num_kv_pairs"], spec["task"]["gap"]
    bs = 16 if 4 * n + gap <= 1200 else 4  # attention over 4k tokens: keep the score tensors small
    return {**recall_breakdown(model, task, spec["examples"], batch_size=bs),
            "state_bytes": _model_state_bytes(model, 4 * n + gap), **out, "device": str(device)}


def cliff(fast: bool = True, out_dir: str | pathlib.Path = "runs/cliff", examples: int | None = None,
          presets: list[str] | None = None, pairs: list[int] | None = None, gaps: list[int] | None = None,
          steps: int = 2000, progress: bool = True, *, executor: str = "local", address: str | None = None,
          cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0, max_retries: int = 2) -> list[dict[str, Any]]:
    """Accuracy per (preset, KV pairs, gap); writes ``records.jsonl``, ``cliff.json`` and ``cliff.html`` to
    ``out_dir``.

    fast: evaluate the shipped lab-scale checkpoints (``echo_tutor.pretrained``; ``presets`` defaults to
    ``CLIFF_PRESETS``); else train a fresh paper-size model per cell for ``steps`` steps (the paper's
    protocol; hours on a CPU, meant for a GPU; ``presets`` defaults to those of ``CLIFF_PRESETS`` that are
    paper-size presets: echo, ssm+attn, ssm).

    One grid cell per (preset, pairs, gap) (:func:`cliff_cell`; with ``fast`` each cell loads its
    checkpoint, about 1 MB, and the spec holds the checkpoint's sha1, so a retrained checkpoint makes new
    cells). The cells run through :func:`echo_tutor.grid.run_grid` (``executor``, ``address``,
    ``cpus_per_cell``, ``gpus_per_cell``, ``max_retries`` are passed on): rerunning into the same
    ``out_dir`` runs only the cells not recorded yet, and the summary files are rebuilt from the records.
    Every returned record: preset, pairs, gap, acc, bound_wrong, other_wrong, first_query_acc, examples,
    mode, state_bytes (after the prompt, B=1, float32), seconds (the cell's wall time).

    Raises :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if some cells
    failed.
    """
    presets = presets or (CLIFF_PRESETS if fast else [p for p in CLIFF_PRESETS if p in PRESETS])
    pairs = _check_int_list("pairs", pairs or CLIFF_PAIRS, 1)
    gaps = _check_int_list("gaps", gaps or CLIFF_GAPS, 0)
    examples = examples or (64 if fast else 512)
    check_int("examples", examples, min_value=1)
    if fast:
        from .pretrained import available

        presets = _check_names("presets", presets, available(), "the shipped checkpoints")
        base = {"mode": "checkpoint"}
        checkpoints = {p: _checkpoint_id(p) for p in presets}
    else:
        presets = _check_names("presets", presets, list(PRESETS), "the paper-size presets")
        check_int("steps", steps, min_value=1)
        base = {"mode": "train", "scale": "paper", "vocab_size": VOCAB, "steps": steps, "batch_size": 16, "lr": 3e-3}
    specs = []
    for preset in presets:
        for n in pairs:
            for gap in gaps:
                spec = {"experiment": "cliff", "preset": preset, "task": _lab_task_args(n, gap), "examples": examples,
                        "seed": 0, **base}
                if fast:
                    spec["checkpoint"] = checkpoints[preset]
                specs.append(spec)
    out_dir = pathlib.Path(out_dir)
    grid = run_grid(specs, cliff_cell, out_dir, executor, address=address, cpus_per_cell=cpus_per_cell,
                    gpus_per_cell=gpus_per_cell, max_retries=max_retries, progress=progress,
                    describe=lambda r: (f"{r['spec']['preset']} pairs={r['spec']['task']['num_kv_pairs']} "
                                        f"gap={r['spec']['task']['gap']} acc={r['result']['acc']:.2f}"))
    mode = "shipped lab-scale checkpoint" if fast else f"trained per cell, {steps} steps"
    records = []
    for r in grid:
        if r["error"]:
            continue
        res = r["result"]
        records.append({"preset": r["spec"]["preset"], "pairs": r["spec"]["task"]["num_kv_pairs"],
                        "gap": r["spec"]["task"]["gap"],
                        **{k: res[k] for k in ("acc", "bound_wrong", "other_wrong", "first_query_acc")},
                        "examples": examples, "mode": mode, "state_bytes": res["state_bytes"],
                        "seconds": round(r["seconds"], 2)})
    if not progress:
        for rec in records:
            print(f"{rec['preset']:<10} pairs {rec['pairs']:>3} gap {rec['gap']:>5}: acc {rec['acc']:.3f}", flush=True)
    save_records(records, out_dir / "cliff.json")
    if records:
        try:
            cliff_figure(records).write_html(out_dir / "cliff.html", include_plotlyjs=True)
        except ImportError:  # plotly is in the lab extra
            pass
    _print_cliff_table(records)
    _finish(grid, out_dir)
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
def _transfer_task_args(name: str, vocab_size: int = VOCAB, scale: str = "paper") -> dict[str, Any]:
    """``make_task`` arguments of the transfer task ``name`` at this project's scale.

    At ``scale="lab"`` MQAR's filler is 0 rather than uniform random tokens: at vocabulary 128 half the
    random filler tokens are keys, each followed by a random token, so the context writes about 50 false
    bindings next to the 8 true ones into statistics that never forget (Zoology uses a vocabulary of 8,192,
    where this is rare)."""
    V = vocab_size
    specs = {
        "mqar": dict(vocab_size=V, seq_len=128, num_kv_pairs=8, **({"random_non_queries": False} if scale == "lab" else {})),
        "system_prompt": dict(vocab_size=V, num_vars=6, gap=[32, 64, 96], num_decoys=4),
        "tool_trace": dict(vocab_size=V, num_vars=6, num_ops=16, num_queries=6),
        "niah": dict(vocab_size=V, seq_len=64),
        "multi_hop": dict(vocab_size=V, num_chains=4, gap=[16, 32, 64]),
        "common_word": dict(vocab_size=V, seq_len=64, repeats=4),
    }
    if name not in specs:
        raise ValueError(f"name must be one of the transfer tasks {list(specs)}, got {name!r}")
    return {"name": name, **specs[name]}


def transfer_task(name: str, vocab_size: int = VOCAB, fast: bool = True, scale: str = "paper") -> Task:
    """The transfer tasks at this project's scale (lengths ~60-200 tokens); ``scale="lab"``: MQAR with 0 filler."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    return make_task(**_transfer_task_args(name, vocab_size, scale))


@torch.no_grad()
def tool_trace_by_writes(model, task: Task, num_examples: int = 256, seed: int = 20_000, batch_size: int = 32) -> dict[str, float]:
    """Tool-trace accuracy split by how many times the queried variable was written (1, 2, 3+).

    Statistics that never forget (SKA's G, C) hold every value ever bound to a variable, so a readout
    should drift towards a blend of the old and new values as the number of writes grows."""
    V = task.vocab_size
    SET = V - 1
    hits: dict[str, list[int]] = {"1": [0, 0], "2": [0, 0], "3+": [0, 0]}
    model.eval()
    device = _device_of(model)
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x.to(device))[0].argmax(-1).cpu()
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
# The lab scale's transfer recipe: LAB_PRESETS models (d=64, 2 blocks), a fixed number of steps (so the
# table does not depend on the machine's load), and SKA chunks of 16 rather than 64: these prompts are
# 60-200 tokens long, and in chunk mode a query reads only the statistics of earlier chunks, so with
# chunks of 64 a 64-token NIAH prompt would never reach SKA at all.
LAB_TRANSFER = dict(steps_fast=1500, steps_full=4000, model_overrides={"mixer_kwargs": {"ska": {"chunk_size": 16}}})
NIAH_LENGTHS = [64, 128, 256, 512, 1024, 2048, 4096]


def transfer_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One cell of the transfer grid: train one paper-size preset on one transfer task and evaluate it, on
    this process's device (CUDA if available, else the CPU).

    The spec (built by :func:`transfer`)::

        {"experiment": "transfer", "preset": "echo", "task": {make_task arguments, "name": "niah", ...},
         "vocab_size": 128, "model_overrides": {}, "steps": 2000, "time_budget_s": 60.0 or None,
         "batch_size": 16, "lr": 0.003, "seed": 0, "eval_examples": 256,
         # task "niah" only: NIAH length generalisation (trained at 64)
         "niah_lengths": [64, 128, ...], "niah_examples": 128}

    Returns ``acc`` (final evaluation), ``steps`` (done, <= ``steps`` under a time budget),
    ``train_seconds``, ``final_loss`` (the last training batch's), ``params``, ``device``; for
    ``tool_trace`` also ``tool_trace_by_writes`` (accuracy by writes to the queried variable,
    :func:`tool_trace_by_writes`), for ``niah`` also ``niah_length`` (a list of ``{"length", "acc"}``).
    """
    torch.manual_seed(spec["seed"])
    device = default_device()
    task = make_task(**spec["task"])
    # mixer_kwargs for a mixer the preset does not use (the lab's SKA chunk size for `ssm`) are ignored
    model = build(spec["preset"], vocab_size=spec["vocab_size"], scale=spec.get("scale", "paper"),
                  **copy.deepcopy(spec["model_overrides"]))
    res = train(model, task, steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"],
                time_budget_s=spec["time_budget_s"], eval_every=spec["steps"], eval_examples=spec["eval_examples"],
                device=device, progress=False)
    out: dict[str, Any] = {"acc": res.final_eval, "steps": res.steps_done, "train_seconds": round(res.time_s, 1),
                           "final_loss": res.history[-1]["loss"], "params": count_parameters(model)}
    if task.name == "tool_trace":
        out["tool_trace_by_writes"] = tool_trace_by_writes(model, task, spec["eval_examples"])
    if task.name == "niah":
        out["niah_length"] = [
            {"length": L, "acc": evaluate(model, make_task("niah", vocab_size=spec["vocab_size"], seq_len=L),
                                          spec["niah_examples"], batch_size=16)}
            for L in spec["niah_lengths"]]
    out["device"] = str(device)
    return out


def transfer(fast: bool = True, out_dir: str | pathlib.Path = "runs/transfer", presets: list[str] | None = None,
             tasks: list[str] | None = None, seconds: float | None = None, steps: int | None = None,
             niah_lengths: list[int] | None = None, progress: bool = True,
             model_overrides: dict[str, Any] | None = None, eval_examples: int = 256, *, executor: str = "local",
             address: str | None = None, cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0,
             max_retries: int = 2, scale: str = "paper") -> dict[str, list[dict[str, Any]]]:
    """Train each preset on each transfer task (same budget), evaluate, and measure NIAH length
    generalisation (trained at 64). Writes ``records.jsonl`` and ``transfer.json`` (both tables).

    ``scale="paper"``: the paper-size presets under a time budget (60 s a cell with ``fast``).
    ``scale="lab"``: the lab-scale presets (``LAB_PRESETS``) for a fixed number of steps (1,500 with
    ``fast``, 4,000 without; ``seconds`` defaults to no time budget), SKA chunks of 16 and MQAR with 0
    filler (``LAB_TRANSFER``, :func:`_transfer_task_args`).

    One grid cell per (task, preset) (:func:`transfer_cell`; the NIAH lengths and the tool-trace split are
    part of their cell's result), run through :func:`echo_tutor.grid.run_grid` (``executor``, ``address``,
    ``cpus_per_cell``, ``gpus_per_cell``, ``max_retries`` are passed on); rerunning into the same
    ``out_dir`` runs only the cells not recorded yet. ``seconds``: a training time budget per cell (60 s
    with ``fast``), so how many steps a cell gets depends on the machine. Raises
    :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if some cells failed.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    lab = scale == "lab"
    table = LAB_PRESETS if lab else PRESETS
    presets = _check_names("presets", presets or TRANSFER_PRESETS, list(table), f"the {scale}-scale presets")
    tasks = _check_names("tasks", tasks or TRANSFER_TASKS, TRANSFER_TASKS, "the transfer tasks")
    seconds = seconds if seconds is not None else (60.0 if fast and not lab else None)
    if seconds is not None:
        check_positive("seconds", seconds)
    if lab:
        steps = steps or (LAB_TRANSFER["steps_fast"] if fast else LAB_TRANSFER["steps_full"])
    else:
        steps = steps or (2000 if fast else 6000)
    check_int("steps", steps, min_value=1)
    check_int("eval_examples", eval_examples, min_value=1)
    niah_lengths = _check_int_list("niah_lengths", niah_lengths or (NIAH_LENGTHS[:5] if fast and not lab else NIAH_LENGTHS), 1)
    # the caller's overrides on top of the lab scale's, merged per mixer as build() merges them
    overrides = copy.deepcopy(LAB_TRANSFER["model_overrides"]) if lab else {}
    for key, value in (model_overrides or {}).items():
        if key == "mixer_kwargs":
            for mixer, kw in value.items():
                overrides.setdefault("mixer_kwargs", {}).setdefault(mixer, {}).update(kw)
        else:
            overrides[key] = value
    specs = []
    for name in tasks:
        for preset in presets:
            spec = {"experiment": "transfer", "preset": preset, "task": _transfer_task_args(name, VOCAB, scale),
                    "vocab_size": VOCAB, "model_overrides": overrides, "steps": steps, "time_budget_s": seconds,
                    "batch_size": 16, "lr": 3e-3, "seed": 0, "eval_examples": eval_examples}
            if lab:
                spec["scale"] = "lab"
            if name == "niah":
                niah_examples = min(eval_examples, 128) if fast else 2 * eval_examples
                spec.update(niah_lengths=niah_lengths, niah_examples=niah_examples)
            specs.append(spec)
    out_dir = pathlib.Path(out_dir)
    grid = run_grid(specs, transfer_cell, out_dir, executor, address=address, cpus_per_cell=cpus_per_cell,
                    gpus_per_cell=gpus_per_cell, max_retries=max_retries, progress=progress,
                    describe=lambda r: (f"{r['spec']['task']['name']} {r['spec']['preset']} "
                                        f"acc={r['result']['acc']:.2f}"))
    rows, niah_rows, overwrite_rows = [], [], []
    for r in grid:
        if r["error"]:
            continue
        name, preset, res = r["spec"]["task"]["name"], r["spec"]["preset"], r["result"]
        p_idx = TRANSFER_PRESETS.index(preset) if preset in TRANSFER_PRESETS else None
        paper = PAPER["transfer_mean_acc"][name][p_idx] if p_idx is not None else None
        row = {"task": name, "preset": preset, "acc": res["acc"], "steps": res["steps"],
               "train_seconds": res["train_seconds"], "params": res["params"], "paper_acc": paper}
        rows.append(row)
        print(f"{name:<14} {preset:<9} acc {row['acc']:.3f} ({row['steps']} steps, {row['train_seconds']:.0f} s)"
              f"   paper {paper}%", flush=True)
        if "tool_trace_by_writes" in res:
            by = res["tool_trace_by_writes"]
            overwrite_rows.append({"preset": preset, **{f"acc_writes_{k}": v for k, v in by.items()}})
            print(f"  tool_trace by writes to the queried variable: {by}", flush=True)
        for pt in res.get("niah_length", []):
            L = pt["length"]
            paper_niah = PAPER["niah_length"].get(L)
            niah_rows.append({"preset": preset, "length": L, "acc": pt["acc"],
                              "paper_acc": paper_niah[p_idx] if p_idx is not None and paper_niah else None})
            print(f"  niah length {L:>5}: acc {pt['acc']:.3f}", flush=True)
    out = {"table": rows, "niah_length": niah_rows, "tool_trace_overwrites": overwrite_rows, "fast": fast,
           "scale": scale, "seconds_per_model": seconds, "max_steps": steps,
           "model_overrides": overrides}
    (out_dir / "transfer.json").write_text(json.dumps(out, indent=1))
    _finish(grid, out_dir)
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


def _ablation_task_args(fast: bool = True, scale: str = "small") -> dict[str, dict[str, Any]]:
    """``make_task`` arguments of the ablation's tasks, by task name."""
    if scale == "lab":
        return {"mqar_gap": dict(LAB_RECIPE["task"])}
    V = 64 if fast else 128
    return {
        "mqar_gap": dict(name="mqar_gap", vocab_size=V, num_kv_pairs=4 if fast else 8,
                         gap=[32, 64, 128] if fast else [64, 256, 1024]),
        "tool_trace": dict(name="tool_trace", vocab_size=V, num_vars=4 if fast else 6, num_ops=10 if fast else 16,
                           num_queries=4 if fast else 6),
    }


def ablation_tasks(fast: bool = True, scale: str = "small") -> dict[str, Task]:
    return {name: make_task(**kw) for name, kw in _ablation_task_args(fast, scale).items()}


def ablation_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """One cell of the ablation grid: train the echo layout with one SKA config and one seed on one task, on
    this process's device (CUDA if available, else the CPU); save the model if the spec says where.

    The spec (built by :func:`ablation`)::

        {"experiment": "ablation", "scale": "small" | "lab", "task": {make_task arguments},
         "config": "K=2 (paper)", "power_steps": 2, "spectral_norm": True, "prefix_mask": False, "seed": 0,
         "model": {"preset": "echo", "scale": "paper" | "lab", "vocab_size": 64, "overrides": {"d_model": 64, ...}},
         "steps": 500, "batch_size": 16, "lr": 0.003, "eval_every": 500, "eval_examples": 256,
         "save_as": "/abs/out_dir/K2_seed0.pt" or None}

    Returns ``acc`` (the final accuracy: ``train``'s last evaluation at scale "small", a fresh 256-example
    evaluation at scale "lab"), ``steps``, ``train_seconds``, ``final_loss`` (the last training batch's),
    ``device``; at scale "lab" also
    ``acc_16pairs_gap1024``, the :func:`recall_breakdown` at 8 pairs and gap 256 (``*_8pairs_gap256``) and
    ``evals`` (the evaluation history).
    """
    torch.manual_seed(spec["seed"])
    device = default_device()
    task = make_task(**spec["task"])
    m = spec["model"]
    model = build(m["preset"], vocab_size=m["vocab_size"], scale=m["scale"],
                  mixer_kwargs={"ska": {"power_steps": spec["power_steps"], "spectral_norm": spec["spectral_norm"]}},
                  **m["overrides"])
    res = train(model, task, steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"], seed=spec["seed"],
                eval_every=spec["eval_every"], eval_examples=spec["eval_examples"], prefix_mask=spec["prefix_mask"],
                device=device, progress=False)
    lab = spec["scale"] == "lab"
    final = evaluate(model, task, 256, batch_size=16) if lab else res.final_eval
    out: dict[str, Any] = {"acc": final, "steps": res.steps_done, "train_seconds": round(res.time_s, 1)}
    # bookkeeping kept in records.jsonl only (not in ablation.json): the last training loss depends on every
    # weight, so equal losses mean the same training, whichever executor ran the cell
    out["final_loss"] = res.history[-1]["loss"]
    if lab:
        out["acc_16pairs_gap1024"] = evaluate(model, lab_task(16, 1024), 64, batch_size=16)
        out.update({f"{k}_8pairs_gap256": v for k, v in recall_breakdown(model, lab_task(8, 256), 64).items()})
        out["evals"] = res.evals
    if spec["save_as"]:
        pathlib.Path(spec["save_as"]).parent.mkdir(parents=True, exist_ok=True)
        model.save(spec["save_as"])
    out["device"] = str(device)
    return out


def _check_configs(configs: Any) -> list[tuple[str, int, bool, bool]]:
    if not isinstance(configs, (list, tuple)) or not configs:
        raise ValueError("configs must be a non-empty list of (name, power_steps, spectral_norm, prefix_mask), "
                         f"got {configs!r}")
    out = []
    for c in configs:
        if (not isinstance(c, (list, tuple)) or len(c) != 4 or not isinstance(c[0], str)
                or isinstance(c[1], bool) or not isinstance(c[1], int) or c[1] < 0
                or not isinstance(c[2], bool) or not isinstance(c[3], bool)):
            raise ValueError(f"configs must hold (name: str, power_steps: int >= 0, spectral_norm: bool, "
                             f"prefix_mask: bool) tuples, got {c!r}")
        out.append(tuple(c))
    names = [c[0] for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"configs must have distinct names, got {names}")
    return out


def ablation(fast: bool = True, out_dir: str | pathlib.Path = "runs/ablation", seeds: int | None = None,
             steps: int | None = None, configs: list[tuple[str, int, bool, bool]] | None = None,
             tasks: list[str] | None = None, progress: bool = True,
             model_overrides: dict[str, Any] | None = None, scale: str = "small",
             save_models: bool = False, *, executor: str = "local", address: str | None = None,
             cpus_per_cell: float = 1.0, gpus_per_cell: float = 0.0, max_retries: int = 2) -> list[dict[str, Any]]:
    """The power-filter ablation: every config trains the same model (echo layout) on every task with the
    same number of steps and the same seeds; reports mean and spread of the final accuracy.

    scale="small" (the first ablation): fast: d=64 4-block models on short tasks (vocab 64; MQAR-gap with 4
    pairs and gaps 32-128; tool traces of 10 writes), ``steps=500``, 3 seeds; full: the paper-size echo
    preset on 8-pair MQAR-gap up to gap 1024, 2000 steps (a GPU job).
    scale="lab": the lab-scale echo model (``LAB_PRESETS``) on the lab recipe's MQAR-gap mixture, K = 0, 1,
    2 (``LAB_ABLATION_CONFIGS``), batch 16, ``steps=1500``; each record adds the accuracy at 16 pairs and
    gap 1024 and the recall breakdown at 8 pairs, gap 256.

    One grid cell per (task, config, seed) (:func:`ablation_cell`), run through
    :func:`echo_tutor.grid.run_grid` (``executor``, ``address``, ``cpus_per_cell``, ``gpus_per_cell``,
    ``max_retries`` are passed on); rerunning into the same ``out_dir`` runs only the cells not recorded
    yet. Writes ``records.jsonl``, ``ablation.json`` and ``ablation.md`` (a markdown table) to ``out_dir``;
    with ``save_models`` each cell saves its model as ``<out_dir>/K<k>[_nosn][_mask]_seed<s>.pt`` (prefixed
    with ``<task>_`` when there are several tasks; on a Ray cluster ``out_dir`` must be a shared
    filesystem). Raises :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if
    some cells failed.
    """
    if scale not in ("small", "lab"):
        raise ValueError(f"scale must be 'small' or 'lab', got {scale!r}")
    configs = _check_configs(configs or (LAB_ABLATION_CONFIGS if scale == "lab" else ABLATION_CONFIGS))
    seeds = check_int("seeds", seeds or 3, min_value=1)
    steps = check_int("steps", steps or (1500 if scale == "lab" else 500 if fast else 2000), min_value=1)
    all_tasks = _ablation_task_args(fast, scale)
    tasks = _check_names("tasks", tasks or list(all_tasks), list(all_tasks), "this scale's tasks")
    if scale == "lab":
        size = dict(model_overrides or {})
    else:
        size = {**(dict(d_model=64, n_heads=4, ska_rank=16, d_state=16) if fast else {}), **(model_overrides or {})}
    out_dir = pathlib.Path(out_dir)
    specs = []
    for tname in tasks:
        targs = all_tasks[tname]
        for cname, K, sn, mask in configs:
            for seed in range(seeds):
                save_as = None
                if save_models:
                    stem = f"{tname}_" if len(tasks) > 1 else ""
                    name = f"{stem}K{K}{'' if sn else '_nosn'}{'_mask' if mask else ''}_seed{seed}.pt"
                    save_as = str((out_dir / name).resolve())
                specs.append({
                    "experiment": "ablation", "scale": scale, "task": targs, "config": cname, "power_steps": K,
                    "spectral_norm": sn, "prefix_mask": mask, "seed": seed,
                    "model": {"preset": "echo", "scale": "paper" if scale == "small" else "lab",
                              "vocab_size": targs["vocab_size"], "overrides": size},
                    "steps": steps, "batch_size": 16, "lr": 3e-3, "eval_every": 100 if scale == "lab" else steps,
                    "eval_examples": 256 if scale == "small" else 128, "save_as": save_as})
    grid = run_grid(specs, ablation_cell, out_dir, executor, address=address, cpus_per_cell=cpus_per_cell,
                    gpus_per_cell=gpus_per_cell, max_retries=max_retries, progress=progress,
                    describe=lambda r: (f"{r['spec']['task']['name']} {r['spec']['config']} seed={r['spec']['seed']} "
                                        f"acc={r['result']['acc']:.2f}"))
    records = []
    for r in grid:
        if r["error"]:
            continue
        s = r["spec"]
        records.append({"task": s["task"]["name"], "config": s["config"], "power_steps": s["power_steps"],
                        "spectral_norm": s["spectral_norm"], "prefix_mask": s["prefix_mask"], "seed": s["seed"],
                        **_cell_result(r, "device", "final_loss")})
    if not progress:
        for rec in records:
            print(f"{rec['task']:<11} {rec['config']:<24} seed {rec['seed']}: acc {rec['acc']:.3f} "
                  f"({rec['train_seconds']:.0f} s)", flush=True)
    save_records(records, out_dir / "ablation.json")
    lines = ["| config | " + " | ".join(f"{t} acc (mean ± sd, {seeds} seeds)" for t in tasks) + " |",
             "|---|" + "---:|" * len(tasks)]
    for cname, *_ in configs:
        cells = []
        for t in tasks:
            accs = [r["acc"] for r in records if r["task"] == t and r["config"] == cname]
            if not accs:
                cells.append("failed")
                continue
            sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
            partial = f" ({len(accs)}/{seeds} seeds)" if len(accs) < seeds else ""  # the others failed
            cells.append(f"{statistics.mean(accs):.3f} ± {sd:.3f}{partial}")
        lines.append(f"| {cname} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out_dir / "ablation.md").write_text(table + "\n")
    print(table)
    _finish(grid, out_dir)
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
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be an integer tensor of shape [B, T], got {getattr(ids, 'shape', type(ids).__name__)}")
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
