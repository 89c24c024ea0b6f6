"""The transfer tasks: each preset trained on each of six retrieval tasks, and NIAH length generalisation.

Recipes (``RECIPES``; the CLI's ``--fast`` / ``--scale`` pick one through ``PICK``):

* ``transfer/lab`` (``--fast``, the shipped results): the lab-scale presets (``LAB_PRESETS``: d=64, 2 blocks)
  for 1,500 steps each, SKA chunks of 16 (these prompts are 60-200 tokens, and in chunk mode a query reads
  only earlier chunks: with chunks of 64 a 64-token NIAH prompt would never reach SKA), MQAR with 0 filler
  (at vocabulary 128 random filler writes about 50 false bindings per prompt into statistics that never
  forget; Zoology uses a vocabulary of 8,192, where this is rare), NIAH tested to 4,096 tokens.
* ``transfer/lab-full``: the same for 4,000 steps, 512 NIAH examples a length.
* ``transfer/synth1m-fast`` (``--scale synth1m --fast``): the synth1m-size presets, 60 s of training each (at most
  2,000 steps: how many depends on the machine), NIAH to 1,024.
* ``transfer/synth1m`` (``--scale synth1m``): the synth1m-size presets, 6,000 steps each.
* ``transfer/lab-curves`` (``--recipe``): the MQAR headline cell of lab 05 done fairly: ``ssm+attn`` and
  ``echo`` at the lab scale, 4,000 steps (past ``ssm+attn``'s plateau), 5 seeds, evaluated every 250 steps,
  so the two learning curves are compared at equal steps.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import torch

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from ..models import build, count_parameters, presets_of
from ..tasks import Task, make_task
from ..train import TrainConfig, default_device, evaluate, train
from .common import (
    VOCAB,
    check_int_list,
    check_names,
    finish,
    frozen,
    pick,
    plain,
    resolve,
)
from .diagnostics import tool_trace_by_writes
from .paper import paper_acc
from .command import Command, Option

__all__ = ["COMMAND", "TransferRecipe", "TransferCell", "RECIPES", "PICK", "TRANSFER_TASKS", "TRANSFER_PRESETS",
           "NIAH_LENGTHS", "recipe_for", "transfer_task_args", "transfer_task", "cells", "transfer_cell", "summarize",
           "run"]

TRANSFER_TASKS = ("mqar", "system_prompt", "tool_trace", "niah", "multi_hop", "common_word")
TRANSFER_PRESETS = ("ssm", "ssm+attn", "echo")
# synth1m-echo-k1 (K=1) first: it learned at the lab scale where K=2 (synth1m-echo, the paper's row) did not
SYNTH1M_TRANSFER_PRESETS = ("synth1m-ssm", "synth1m-ssm+attn", "synth1m-echo-k1", "synth1m-echo")
NIAH_LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class TransferRecipe:
    """One transfer grid: which presets of which scale, which tasks, the training budget, the evaluation.

    ``steps`` is the step budget (and the length of the learning-rate schedule); ``time_budget_s``, if set, a
    wall-clock budget per cell that may stop training earlier. ``mqar_filler``: ``"random"`` (Zoology's) or
    ``"zero"``. ``model_overrides`` go to ``build`` (``mixer_kwargs`` merged per mixer, as ``build`` does)."""

    name: str
    description: str
    scale: str
    steps: int
    presets: tuple[str, ...] = TRANSFER_PRESETS
    tasks: tuple[str, ...] = TRANSFER_TASKS
    time_budget_s: float | None = None
    niah_lengths: tuple[int, ...] = NIAH_LENGTHS
    niah_examples: int = 128
    eval_examples: int = 256
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mqar_filler: str = "random"
    batch_size: int = 16
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0,)
    eval_every: int | None = None

    def __post_init__(self) -> None:
        table = presets_of(self.scale)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - a frozen dataclass checks its fields once, here
        set_("presets", check_names("presets", list(self.presets), list(table), f"the {self.scale}-scale presets"))
        set_("tasks", check_names("tasks", list(self.tasks), list(TRANSFER_TASKS), "the transfer tasks"))
        set_("niah_lengths", check_int_list("niah_lengths", list(self.niah_lengths), 1))
        for field in ("steps", "niah_examples", "eval_examples", "batch_size"):
            check_int(field, getattr(self, field), min_value=1)
        object.__setattr__(self, "seeds", check_int_list("seeds", list(self.seeds), 0))
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, min_value=1)
        if self.time_budget_s is not None:
            set_("time_budget_s", check_positive("time_budget_s", self.time_budget_s))
        check_positive("lr", self.lr)
        if self.mqar_filler not in ("random", "zero"):
            raise BadArgumentError(f"mqar_filler must be 'random' or 'zero', got {self.mqar_filler!r}")
        set_("model_overrides", frozen(self.model_overrides))


_LAB = dict(scale="lab", model_overrides={"mixer_kwargs": {"ska": {"chunk_size": 16}}}, mqar_filler="zero")
RECIPES: dict[str, TransferRecipe] = {r.name: r for r in (
    TransferRecipe("transfer/lab", "lab-scale presets, 1,500 steps, SKA chunks of 16, MQAR with 0 filler", steps=1500,
                   **_LAB),
    TransferRecipe("transfer/lab-full", "lab-scale presets, 4,000 steps, SKA chunks of 16, MQAR with 0 filler",
                   steps=4000, niah_examples=512, **_LAB),
    TransferRecipe("transfer/synth1m-fast", "synth1m-size presets, 60 s (at most 2,000 steps) each, NIAH to 1,024",
                   "synth1m", steps=2000, time_budget_s=60.0, niah_lengths=NIAH_LENGTHS[:5], presets=SYNTH1M_TRANSFER_PRESETS),
    TransferRecipe("transfer/synth1m", "synth1m-size presets, 6,000 steps each", "synth1m", steps=6000, niah_examples=512,
                   presets=SYNTH1M_TRANSFER_PRESETS),
    TransferRecipe("transfer/lab-curves", "lab 05's MQAR cell: ssm+attn and echo, 4,000 steps, 5 seeds, learning "
                   "curves", steps=4000, presets=("ssm+attn", "echo"), tasks=("mqar",), seeds=(0, 1, 2, 3, 4),
                   eval_every=250, **_LAB),
)}
PICK = {("lab", True): "transfer/lab", ("lab", False): "transfer/lab-full", ("synth1m", True): "transfer/synth1m-fast",
        ("synth1m", False): "transfer/synth1m"}  # transfer/lab-curves: by name only (--recipe)

COMMAND = Command("transfer", "transfer tasks and NIAH length generalisation", "runs/transfer", (
    Option("--presets", "presets to train (the recipe's: ssm ssm+attn echo)", nargs="+"),
    Option("--tasks", "transfer tasks (the recipe's: all six)", nargs="+"),
    Option("--steps", "training steps per (task, model)", "positive_int"),
    Option("--time-budget-s", "training seconds per (task, model)", "positive_float"),
))


def recipe_for(scale: str = "lab", fast: bool = True) -> TransferRecipe:
    """The recipe the CLI's ``--scale`` and ``--fast`` pick (``PICK``)."""
    return pick("transfer", RECIPES, PICK, scale, fast)


def transfer_task_args(name: str, vocab_size: int = VOCAB, mqar_filler: str = "random") -> dict[str, Any]:
    """``make_task`` arguments of the transfer task ``name`` at this project's scale (60-200 tokens)."""
    V = vocab_size
    specs = {
        "mqar": dict(vocab_size=V, seq_len=128, num_kv_pairs=8, **({"random_non_queries": False} if mqar_filler == "zero" else {})),
        "system_prompt": dict(vocab_size=V, num_vars=6, gap=[32, 64, 96], num_decoys=4),
        "tool_trace": dict(vocab_size=V, num_vars=6, num_ops=16, num_queries=6),
        "niah": dict(vocab_size=V, seq_len=64),
        "multi_hop": dict(vocab_size=V, num_chains=4, gap=[16, 32, 64]),
        "common_word": dict(vocab_size=V, seq_len=64, repeats=4),
    }
    if name not in specs:
        raise BadArgumentError(f"name must be one of the transfer tasks {list(specs)}, got {name!r}")
    return {"name": name, **specs[name]}


def transfer_task(name: str, recipe: str | TransferRecipe = "transfer/lab", vocab_size: int = VOCAB) -> Task:
    """The transfer task ``name`` as ``recipe`` trains it (its MQAR filler)."""
    return make_task(**transfer_task_args(name, vocab_size, resolve(RECIPES, TransferRecipe, recipe, {}).mqar_filler))


@dataclasses.dataclass(frozen=True)
class TransferCell(Cell):
    """One cell of the transfer grid (:func:`transfer_cell`): one preset trained on one transfer task, one seed.

    Fields (the recorded spec's keys):
        preset, scale: the model (a preset of that scale), built with ``vocab_size`` and ``model_overrides``
            (``build``'s keyword arguments; ``mixer_kwargs`` for a mixer the preset lacks are ignored).
        task: ``make_task`` arguments (:func:`transfer_task_args`: ``{"name": "niah", ...}``).
        steps, time_budget_s, batch_size, lr, seed: training (``time_budget_s``: a wall-clock budget that may
            stop training before ``steps``, or ``None``).
        eval_examples: examples of each evaluation (and of the tool-trace split).
        eval_every: evaluate every so many steps and return the history (``evals``); ``None`` (the shipped
            specs left it out): one evaluation at the end.
        niah_lengths, niah_examples: task ``"niah"`` only (``None`` for the others): the lengths of the NIAH
            length generalisation (trained at 64) and the examples at each.
    """

    experiment = "transfer"
    preset: str
    scale: str
    task: dict[str, Any]
    vocab_size: int
    model_overrides: dict[str, Any]
    steps: int
    time_budget_s: float | None
    batch_size: int
    lr: float
    seed: int
    eval_examples: int
    eval_every: int | None = None
    niah_lengths: list[int] | None = None
    niah_examples: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.task, dict) or self.task.get("name") not in TRANSFER_TASKS:
            raise BadArgumentError(f"task must be make_task arguments of a transfer task {list(TRANSFER_TASKS)}, "
                                   f"got {self.task!r}")
        niah = self.task["name"] == "niah"
        if {self.niah_lengths is None, self.niah_examples is None} != {not niah}:
            raise BadArgumentError(f"niah_lengths and niah_examples are set for task 'niah' and only for it, got "
                                   f"task {self.task['name']!r} with niah_lengths={self.niah_lengths!r}, "
                                   f"niah_examples={self.niah_examples!r}")
        if self.eval_every is not None:
            check_int("eval_every", self.eval_every, min_value=1)


def cells(recipe: TransferRecipe) -> list[TransferCell]:
    """The grid's cells, one per (task, preset, seed): see :class:`TransferCell`."""
    return [TransferCell(preset=preset, scale=recipe.scale, task=transfer_task_args(name, VOCAB, recipe.mqar_filler),
                         vocab_size=VOCAB, model_overrides=plain(recipe.model_overrides), steps=recipe.steps,
                         time_budget_s=recipe.time_budget_s, batch_size=recipe.batch_size, lr=recipe.lr, seed=seed,
                         eval_examples=recipe.eval_examples, eval_every=recipe.eval_every,
                         niah_lengths=list(recipe.niah_lengths) if name == "niah" else None,
                         niah_examples=recipe.niah_examples if name == "niah" else None)
            for name in recipe.tasks for preset in recipe.presets for seed in recipe.seeds]


def transfer_cell(cell: TransferCell) -> dict[str, Any]:
    """One cell of the transfer grid (:class:`TransferCell`, built by :func:`cells`): train one preset on one
    transfer task and evaluate it, on this process's device (CUDA if available, else the CPU).

    Returns ``acc`` (final evaluation), ``steps`` (done, <= ``steps`` under a time budget),
    ``train_seconds``, ``final_loss`` (the last training batch's), ``params``, ``device``; with ``eval_every``
    also ``evals`` (the evaluation history); for ``tool_trace`` also ``tool_trace_by_writes`` (accuracy by
    writes to the queried variable), for ``niah`` also ``niah_length`` (a list of ``{"length", "acc"}``).
    """
    torch.manual_seed(cell.seed)
    device = default_device()
    task = make_task(**cell.task)
    # mixer_kwargs for a mixer the preset does not use (the lab's SKA chunk size for `ssm`) are ignored by build
    model = build(cell.preset, vocab_size=cell.vocab_size, scale=cell.scale, **copy.deepcopy(cell.model_overrides))
    cfg = TrainConfig(steps=cell.steps, batch_size=cell.batch_size, lr=cell.lr, seed=cell.seed,
                      time_budget_s=cell.time_budget_s, eval_examples=cell.eval_examples,
                      eval_every=cell.steps if cell.eval_every is None else cell.eval_every)
    res = train(model, task, cfg, device=device, progress=False)
    out: dict[str, Any] = {"acc": res.final_eval, "steps": res.steps_done, "train_seconds": round(res.time_s, 1),
                           "final_loss": res.history[-1]["loss"], "params": count_parameters(model)}
    if cell.eval_every is not None:
        out["evals"] = res.evals
    if task.name == "tool_trace":
        out["tool_trace_by_writes"] = tool_trace_by_writes(model, task, cell.eval_examples)
    if task.name == "niah":
        out["niah_length"] = [
            {"length": L, "acc": evaluate(model, make_task("niah", vocab_size=cell.vocab_size, seq_len=L),
                                          cell.niah_examples, batch_size=16)}
            for L in cell.niah_lengths]
    out["device"] = str(device)
    return out


def summarize(recipe: TransferRecipe, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The tables of the successful cells: ``table`` (task, preset, acc, steps, train_seconds, params,
    paper_acc), ``niah_length`` (preset, length, acc, paper_acc), ``tool_trace_overwrites``, and the recipe."""
    rows, niah_rows, overwrite_rows = [], [], []
    for r in grid:
        if r["error"]:
            continue
        name, preset, res = r["spec"]["task"]["name"], r["spec"]["preset"], r["result"]
        row = {"task": name, "preset": preset, "acc": res["acc"], "steps": res["steps"],
               "train_seconds": res["train_seconds"], "params": res["params"],
               "paper_acc": paper_acc("transfer_mean_acc", name, preset)}
        if len(recipe.seeds) > 1 or "evals" in res:  # the shipped single-seed table keeps its columns
            row.update(seed=r["spec"]["seed"], evals=res.get("evals"))
        rows.append(row)
        if "tool_trace_by_writes" in res:
            overwrite_rows.append({"preset": preset, **{f"acc_writes_{k}": v for k, v in res["tool_trace_by_writes"].items()}})
        for pt in res.get("niah_length", []):
            niah_rows.append({"preset": preset, "length": pt["length"], "acc": pt["acc"],
                              "paper_acc": paper_acc("niah_length", pt["length"], preset)})
    return {"table": rows, "niah_length": niah_rows, "tool_trace_overwrites": overwrite_rows, "recipe": recipe.name,
            "scale": recipe.scale, "seconds_per_model": recipe.time_budget_s, "max_steps": recipe.steps,
            "model_overrides": plain(recipe.model_overrides)}


def _print_summary(out: dict[str, Any]) -> None:
    for row in out["table"]:
        print(f"{row['task']:<14} {row['preset']:<9} acc {row['acc']:.3f} ({row['steps']} steps, "
              f"{row['train_seconds']:.0f} s)   paper {row['paper_acc']}%", flush=True)
    for row in out["tool_trace_overwrites"]:
        print(f"  tool_trace by writes to the queried variable, {row['preset']}: "
              + ", ".join(f"{k[len('acc_writes_'):]}: {v:.3f}" for k, v in row.items() if k != "preset"), flush=True)
    for row in out["niah_length"]:
        print(f"  niah {row['preset']:<9} length {row['length']:>5}: acc {row['acc']:.3f}", flush=True)


def run(recipe: str | TransferRecipe = "transfer/lab", out_dir: str | pathlib.Path = "runs/transfer", *,
             grid: GridOptions | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run a transfer recipe; write ``records.jsonl`` and ``transfer.json`` (:func:`summarize`) to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or a :class:`TransferRecipe`; ``overrides`` replace its fields (e.g.
    ``presets=["echo"], tasks=["niah"], steps=2``). One grid cell per (task, preset) (:func:`transfer_cell`;
    the NIAH lengths and the tool-trace split are part of their cell's result), run through
    :func:`echo_tutor.grid.run_grid` with ``grid`` (:class:`~echo_tutor.grid.GridOptions`); rerunning into the
    same ``out_dir`` runs only the cells not recorded yet. Raises :class:`~echo_tutor.grid.GridError` (after
    writing the other cells' results) if some cells failed.
    """
    recipe = resolve(RECIPES, TransferRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    records = run_grid(cells(recipe), transfer_cell, out_dir, grid, progress=progress,
                       describe=lambda r: f"{r['spec']['task']['name']} {r['spec']['preset']} acc={r['result']['acc']:.2f}")
    out = summarize(recipe, records)
    _print_summary(out)
    (out_dir / "transfer.json").write_text(json.dumps(out, indent=1))
    finish(records, out_dir)
    return out
