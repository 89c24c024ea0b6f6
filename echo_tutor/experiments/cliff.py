"""The memory cliff: recall accuracy per (model, KV pairs, gap), and what the wrong answers were.

Recipes (``RECIPES``; the CLI's ``--fast`` / ``--scale`` pick one through ``PICK``):

* ``cliff/lab`` (``--fast``): evaluate the shipped lab-scale checkpoints (``echo_tutor.pretrained``; all
  trained with ``LAB_RECIPE`` on MQAR-gap with 4-16 pairs and gaps 0..1024, values hidden after the queries)
  over KV pairs {4, 8, 16, 32} x gaps {0, 16, ..., 4096}, 64 examples a point. Minutes on a CPU.
* ``cliff/lab-full``: the same with 512 examples a point.
* ``cliff/lab-decode``: the shipped ``echo`` only, its SKA block read token by token (``ska_mode="token"``, as
  ``model.step`` decodes) instead of in chunks, at 2-32 pairs: the shipped ``results_cliff_decode.json``.
* ``cliff/synth1m`` (``--scale synth1m``): the paper's protocol, one synth1m-size model trained from scratch per
  (preset, pairs, gap) cell, 2,000 steps each (a GPU job).

One grid cell per (preset, pairs, gap) (a :class:`CliffCell`, run by :func:`cliff_cell`), run through
:func:`echo_tutor.grid.run_grid`; each record has the accuracy, the share of answers that were *a bound value,
but the wrong key's*, and the inference-state bytes after the prompt.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import torch

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from ..models import LAB_PRESETS, PRESETS, build, rebuilt
from ..pretrained import available, load_pretrained
from ..tasks import make_task
from ..train import TrainConfig, default_device, save_records, train
from .command import Command, Option
from .common import VOCAB, check_int_list, check_names, checkpoint_id, finish, lab_task_args, pick, resolve
from .diagnostics import model_state_bytes, recall_breakdown

__all__ = ["COMMAND", "CliffRecipe", "CliffCell", "RECIPES", "PICK", "CLIFF_PRESETS", "CLIFF_PAIRS", "CLIFF_GAPS",
           "recipe_for", "cells", "as_decoded", "cliff_cell", "summarize", "run"]

# What each preset of the lab-scale grid is for:
#   echo      Mamba-2 + SKA (K=1, r=32)      fixed state
#   ssm+attn  Mamba-2 + full attention       state grows with the context (positive control)
#   ssm+swa   Mamba-2 + window-256 attention fixed state that forgets past its window
#   ssm       Mamba-2 + Mamba-2              fixed state with a learned decay (the paper's baseline)
CLIFF_PRESETS = ("echo", "ssm+attn", "ssm+swa", "ssm")
CLIFF_PAIRS = (4, 8, 16, 32)
CLIFF_GAPS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclasses.dataclass(frozen=True)
class CliffRecipe:
    """One memory-cliff grid: which models, which (pairs, gap) points, how many examples a point.

    ``mode="checkpoint"`` evaluates the shipped lab-scale checkpoints of ``presets``; ``mode="train"``
    trains a fresh model of ``scale`` per cell for ``steps`` steps (``batch_size``, ``lr``). ``ska_mode``: how
    SKA blocks read during evaluation, ``"chunk"`` (the training form: a query reads only earlier chunks) or
    ``"token"`` (token-causal, as the model decodes with ``step``)."""

    name: str
    description: str
    scale: str
    mode: str
    presets: tuple[str, ...] = CLIFF_PRESETS
    pairs: tuple[int, ...] = CLIFF_PAIRS
    gaps: tuple[int, ...] = CLIFF_GAPS
    eval_examples: int = 64
    steps: int = 2000
    batch_size: int = 16
    lr: float = 3e-3
    ska_mode: str = "chunk"

    def __post_init__(self) -> None:
        if self.ska_mode not in ("chunk", "token"):
            raise BadArgumentError(f"ska_mode must be 'chunk' or 'token', got {self.ska_mode!r}")
        if self.mode not in ("checkpoint", "train"):
            raise BadArgumentError(f"mode must be 'checkpoint' or 'train', got {self.mode!r}")
        if self.mode == "checkpoint":
            if self.scale != "lab":
                raise BadArgumentError(f"mode='checkpoint' evaluates the shipped lab-scale models: scale must be 'lab', "
                                       f"got {self.scale!r}")

            allowed, what = available(), "the shipped checkpoints"
        else:
            allowed, what = list(PRESETS) if self.scale == "synth1m" else _lab_presets(), f"the {self.scale}-scale presets"
        object.__setattr__(self, "presets", check_names("presets", list(self.presets), allowed, what))
        object.__setattr__(self, "pairs", check_int_list("pairs", list(self.pairs), 1))
        object.__setattr__(self, "gaps", check_int_list("gaps", list(self.gaps), 0))
        for field in ("eval_examples", "steps", "batch_size"):
            check_int(field, getattr(self, field), min_value=1)
        check_positive("lr", self.lr)


def _lab_presets() -> list[str]:
    return list(LAB_PRESETS)


RECIPES: dict[str, CliffRecipe] = {r.name: r for r in (
    CliffRecipe("cliff/lab", "the shipped lab-scale checkpoints, 64 examples a point (minutes on a CPU)", "lab",
                "checkpoint"),
    CliffRecipe("cliff/lab-full", "the shipped lab-scale checkpoints, 512 examples a point", "lab", "checkpoint",
                eval_examples=512),
    CliffRecipe("cliff/lab-decode", "the shipped lab-scale echo read token by token, as it decodes (64 examples a "
                "point; the other presets read the same either way; 2 pairs added for lab 03's trained SSM cliff)",
                "lab", "checkpoint", presets=("echo",), pairs=(2, *CLIFF_PAIRS), ska_mode="token"),
    CliffRecipe("cliff/synth1m", "the paper's protocol: a synth1m-size model trained per cell, 2,000 steps (a GPU job)",
                "synth1m", "train", presets=("synth1m-echo-k1", "synth1m-echo", "synth1m-ssm+attn", "synth1m-ssm"),
                eval_examples=512),
)}
PICK = {("lab", True): "cliff/lab", ("lab", False): "cliff/lab-full", ("synth1m", False): "cliff/synth1m"}

COMMAND = Command("cliff", "the memory-cliff grid: accuracy vs KV pairs x gap per preset", "runs/cliff", (
    Option("--eval-examples", "examples per point (the recipe's)", "positive_int"),
    Option("--presets", "presets (the recipe's)", nargs="+"),
    Option("--pairs", "KV pairs (the recipe's)", "positive_int", nargs="+"),
    Option("--gaps", "gaps (the recipe's)", "nonneg_int", nargs="+"),
))


def recipe_for(scale: str = "lab", fast: bool = True) -> CliffRecipe:
    """The recipe the CLI's ``--scale`` and ``--fast`` pick (``PICK``)."""
    return pick("cliff", RECIPES, PICK, scale, fast)


_TRAIN_FIELDS = ("scale", "vocab_size", "steps", "batch_size", "lr")


@dataclasses.dataclass(frozen=True)
class CliffCell(Cell):
    """One cell of the memory-cliff grid (:func:`cliff_cell`): one model at one (KV pairs, gap) point.

    Fields (the recorded spec's keys):
        mode: ``"checkpoint"`` (evaluate the shipped checkpoint of ``preset``) or ``"train"`` (train a model of
            ``scale`` from scratch on this one point).
        preset: the model (a shipped checkpoint's name in mode ``"checkpoint"``, a preset of ``scale`` else).
        task: ``make_task`` arguments: the lab recipe's ``mqar_gap`` at ``num_kv_pairs=n``, ``gap=g``.
        examples: evaluation examples (the recipe's ``eval_examples``; the shipped records' key).
        seed: torch's seed (training and the evaluation's examples).
        checkpoint: mode ``"checkpoint"`` only: the shipped checkpoint's ``{"file", "sha1"}``
            (:func:`~echo_tutor.experiments.common.checkpoint_id`); ``None`` in mode ``"train"``.
        scale, vocab_size, steps, batch_size, lr: mode ``"train"`` only (``None`` in mode ``"checkpoint"``): the
            model's scale and vocabulary, and the training budget.
        ska_mode: how SKA blocks read during evaluation: ``"chunk"`` (the training form; the shipped specs
            left it out) or ``"token"`` (token-causal, as the model decodes with ``step``).
    """

    experiment = "cliff"
    mode: str
    preset: str
    task: dict[str, Any]
    examples: int
    seed: int
    checkpoint: dict[str, str] | None = None
    scale: str | None = None
    vocab_size: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    ska_mode: str = "chunk"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("checkpoint", "train"):
            raise BadArgumentError(f"mode must be 'checkpoint' or 'train', got {self.mode!r}")
        if self.ska_mode not in ("chunk", "token"):
            raise BadArgumentError(f"ska_mode must be 'chunk' or 'token', got {self.ska_mode!r}")
        budget = [getattr(self, f) for f in _TRAIN_FIELDS]
        if self.mode == "train" and (self.checkpoint is not None or None in budget):
            raise BadArgumentError(f"a mode='train' cell sets {', '.join(_TRAIN_FIELDS)} and no checkpoint, "
                                   f"got {self.spec()!r}")
        if self.mode == "checkpoint" and (self.checkpoint is None or budget.count(None) < len(budget)):
            raise BadArgumentError(f"a mode='checkpoint' cell sets checkpoint and none of {', '.join(_TRAIN_FIELDS)}, "
                                   f"got {self.spec()!r}")
        check_int("examples", self.examples, min_value=1)


def cells(recipe: CliffRecipe) -> list[CliffCell]:
    """The grid's cells, one per (preset, pairs, gap): see :class:`CliffCell`."""
    train = recipe.mode == "train"
    ids = {} if train else {p: checkpoint_id(p) for p in recipe.presets}
    budget = (dict(scale=recipe.scale, vocab_size=VOCAB, steps=recipe.steps, batch_size=recipe.batch_size, lr=recipe.lr)
              if train else dict.fromkeys(_TRAIN_FIELDS))
    return [CliffCell(mode=recipe.mode, preset=p, task=lab_task_args(n, g), examples=recipe.eval_examples, seed=0,
                      checkpoint=ids.get(p), **budget, ska_mode=recipe.ska_mode)
            for p in recipe.presets for n in recipe.pairs for g in recipe.gaps]


def cliff_cell(cell: CliffCell) -> dict[str, Any]:
    """One cell of the memory-cliff grid (:class:`CliffCell`, built by :func:`cells`): one model at one (KV
    pairs, gap) point, on this process's device (CUDA if available, else the CPU).

    Returns ``acc``, ``bound_wrong``, ``other_wrong``, ``first_query_acc`` (:func:`recall_breakdown` on
    ``examples`` fresh examples), ``state_bytes`` (after the ``4n + g`` prompt tokens, B=1), ``device``, and
    for mode "train" ``steps``, ``train_seconds`` and ``final_loss`` (the last training batch's).
    """
    torch.manual_seed(cell.seed)
    device = default_device()
    task = make_task(**cell.task)
    out: dict[str, Any] = {}
    if cell.mode == "checkpoint":
        here = checkpoint_id(cell.preset)
        if here != cell.checkpoint:
            raise RuntimeError(f"checkpoint {cell.preset!r} here is {here}, the grid was built for "
                               f"{cell.checkpoint} (a different echo_tutor install on this worker?)")
        model = load_pretrained(cell.preset).to(device)
    else:
        model = build(cell.preset, vocab_size=cell.vocab_size, scale=cell.scale)
        cfg = TrainConfig(steps=cell.steps, batch_size=cell.batch_size, lr=cell.lr, seed=cell.seed,
                          eval_every=cell.steps)
        res = train(model, task, cfg, device=device, progress=False)
        out = {"steps": res.steps_done, "train_seconds": round(res.time_s, 1), "final_loss": res.history[-1]["loss"]}
    if cell.ska_mode == "token":  # evaluate as the model decodes: every token reads the statistics up to itself
        model = rebuilt(model, {"ska": {"mode": "token"}})
    n, gap = cell.task["num_kv_pairs"], cell.task["gap"]
    bs = 16 if 4 * n + gap <= 1200 else 4  # attention over 4k tokens: keep the score tensors small
    return {**recall_breakdown(model, task, cell.examples, batch_size=bs),
            "state_bytes": model_state_bytes(model, 4 * n + gap), **out, "device": str(device)}


def summarize(recipe: CliffRecipe, grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per successful cell: preset, pairs, gap, acc, bound_wrong, other_wrong, first_query_acc,
    examples, mode, state_bytes (after the prompt, B=1, float32), seconds (the cell's wall time)."""
    mode = ("shipped lab-scale checkpoint" if recipe.mode == "checkpoint"
            else f"trained per cell, {recipe.steps} steps")
    keep = ("acc", "bound_wrong", "other_wrong", "first_query_acc")
    decode = {"ska_mode": recipe.ska_mode} if recipe.ska_mode != "chunk" else {}  # the shipped records keep their keys
    return [{"preset": r["spec"]["preset"], "pairs": r["spec"]["task"]["num_kv_pairs"], "gap": r["spec"]["task"]["gap"],
             **{k: r["result"][k] for k in keep}, "examples": r["spec"]["examples"], "mode": mode, **decode,
             "state_bytes": r["result"]["state_bytes"], "seconds": round(r["seconds"], 2)}
            for r in grid if not r["error"]]


def as_decoded(chunk_records: list[dict[str, Any]], decode_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model read the way it decodes: the presets of ``decode_records`` (``cliff/lab-decode``: SKA read token
    by token) replace their chunk-mode records, at the (pairs, gap) points ``chunk_records`` has; the others keep
    theirs (Mamba-2 and attention read the same either way). The README's and lab 03's headline grid."""
    points = {(r["pairs"], r["gap"]) for r in chunk_records}
    swapped = {r["preset"] for r in decode_records}
    return ([r for r in chunk_records if r["preset"] not in swapped]
            + [r for r in decode_records if (r["pairs"], r["gap"]) in points])


def _print_table(records: list[dict[str, Any]]) -> None:
    presets = list(dict.fromkeys(r["preset"] for r in records))
    gaps = sorted({r["gap"] for r in records})
    for n in sorted({r["pairs"] for r in records}):
        print(f"\nKV pairs = {n}: accuracy by gap")
        print(f"{'preset':<10}" + "".join(f"{g:>7}" for g in gaps))
        for p in presets:
            row = {r["gap"]: r["acc"] for r in records if r["preset"] == p and r["pairs"] == n}
            print(f"{p:<10}" + "".join(f"{row.get(g, float('nan')):>7.2f}" for g in gaps))


def run(recipe: str | CliffRecipe = "cliff/lab", out_dir: str | pathlib.Path = "runs/cliff", *,
          grid: GridOptions | None = None, progress: bool = True, **overrides: Any) -> list[dict[str, Any]]:
    """Run a memory-cliff recipe; write ``records.jsonl``, ``cliff.json`` and ``cliff.html`` to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or a :class:`CliffRecipe`; ``overrides`` replace its fields (e.g.
    ``presets=["echo"], gaps=[64], eval_examples=16``). ``grid``: where the cells run
    (:class:`~echo_tutor.grid.GridOptions`). Rerunning into the same ``out_dir`` runs only the cells not
    recorded yet; the summary files are rebuilt from the records. Returns :func:`summarize`'s records.

    Raises :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if some cells failed.
    """
    recipe = resolve(RECIPES, CliffRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    records = run_grid(cells(recipe), cliff_cell, out_dir, grid, progress=progress,
                       describe=lambda r: (f"{r['spec']['preset']} pairs={r['spec']['task']['num_kv_pairs']} "
                                           f"gap={r['spec']['task']['gap']} acc={r['result']['acc']:.2f}"))
    rows = summarize(recipe, records)
    if not progress:
        for rec in rows:
            print(f"{rec['preset']:<10} pairs {rec['pairs']:>3} gap {rec['gap']:>5}: acc {rec['acc']:.3f}", flush=True)
    save_records(rows, out_dir / "cliff.json")
    if rows:
        try:
            from .figures import cliff_figure

            cliff_figure(rows).write_html(out_dir / "cliff.html", include_plotlyjs=True)
        except ImportError:  # plotly is in the lab extra
            pass
    _print_table(rows)
    finish(records, out_dir)
    return rows

