"""EchoKV-lite on SmolLM2: held-out perplexity against cache bytes, for it and the baselines (``echo-tutor
echokv``; ``docs/results.md`` reports the shipped run, lab 06 plots it).

Recipes (``RECIPES``; ``--fast`` picks ``echokv/fast``):

* ``echokv/full`` (the shipped results): K/V captured on 32 calibration windows of 512 tokens (stdlib
  docstrings, "calib" split), 24 held-out windows of 512 context + 128 scored tokens ("heldout" split, disjoint
  modules), compression ratios 0.25 / 0.5 / 0.75, stage 2 for 100 steps on 32 calibration windows.
* ``echokv/fast``: 8 x 256 calibration tokens, 4 x (256 + 64) held out, ratio 0.5, 5 stage-2 steps (a few CPU
  minutes; the sizes of lab 06's live run).
* ``echokv/smoke`` (``--recipe``): the plumbing in seconds: a tiny GQA Llama trained on a copy task
  (``echokv.tiny_gqa_model``) on random copy sequences instead of SmolLM2 on text; no result to read.

Cells (:class:`EchoKVCell`, one record each in ``<out_dir>/records.jsonl``, run by
:func:`~echo_tutor.grid.run_grid`, locally or on Ray; a killed run resumes), each scoring its methods on the
same held-out windows (so any two rows pair): one ``ratio`` cell per ratio, then ``kivi``, ``ablation`` and
``stage2`` (the kinds: see :class:`EchoKVCell`).

Every cell seeds torch with the recipe's seed first, so a cell's numbers do not depend on which cells ran
before it in the same process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any

import torch

from .._checks import check_int, check_positive
from ..echokv import baselines as B
from ..echokv.capture import capture_kv
from ..echokv.evaluate import distill, paired_difference, perplexity
from ..echokv.fit import fit_reconstructor, slot_errors
from ..echokv.model import STUDY_MODELS, study_model
from ..echokv.slots import KINDS, SlotMoments, light_keys
from ..echokv.study import format_table
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from .command import Command, Option
from .common import finish, pick, resolve, write_summary

__all__ = ["COMMAND", "EchoKVCell", "EchoKVRecipe", "RECIPES", "PICK", "recipe_for", "cells", "echokv_cell",
           "summarize", "run"]

SCALE = "smollm2"  # the one model of the shipped recipes (SmolLM2-135M-Instruct), the CLI's --scale for them
MODELS = tuple(STUDY_MODELS)
KIVI_BITS = (2, 4, 8)
# the rows the stage-2 method is compared with, window by window (a paired bootstrap of the NLL difference)
PAIRED_WITH = ("StreamingLLM", "random-drop", "ridge, greedy @", "cross-layer")


@dataclasses.dataclass(frozen=True)
class EchoKVRecipe:
    """One EchoKV-lite study: the data (calibration and held-out windows), the ratios, stage 2.

    ``calib_windows`` x ``calib_len``: the K/V capture the maps are fitted on; ``eval_windows`` x
    (``ctx_len`` + ``eval_len``): held-out windows, the context compressed, the last ``eval_len`` tokens
    scored; ``layer_window``: how many layers on each side of a discarded slot feed its maps (in layers, not
    tokens); ``stage2_*``: stage 2's steps, MLP rank, learning rate
    and calibration windows (``distill_windows``)."""

    name: str
    description: str
    calib_windows: int = 32
    calib_len: int = 512
    eval_windows: int = 24
    ctx_len: int = 512
    eval_len: int = 128
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    stage2_steps: int = 100
    stage2_rank: int = 16
    stage2_lr: float = 3e-4
    layer_window: int = 2
    distill_windows: int = 32
    seed: int = 0
    model: str = "smollm2"
    scale: str = SCALE

    def __post_init__(self) -> None:
        for f in ("calib_windows", "calib_len", "eval_windows", "ctx_len", "eval_len", "stage2_rank",
                  "layer_window", "distill_windows"):
            check_int(f, getattr(self, f), min_value=1)
        check_int("stage2_steps", self.stage2_steps, min_value=0)
        check_int("seed", self.seed, min_value=0)
        check_positive("stage2_lr", self.stage2_lr)
        ratios = tuple(self.ratios) if isinstance(self.ratios, (list, tuple)) else self.ratios
        if not isinstance(ratios, tuple) or not ratios or any(
                isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < 1 for r in ratios):
            raise BadArgumentError(f"ratios must be a non-empty list of fractions in (0, 1), got {self.ratios!r}")
        object.__setattr__(self, "ratios", tuple(float(r) for r in ratios))
        if self.model not in MODELS:
            raise BadArgumentError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.scale != SCALE:
            raise BadArgumentError(f"scale must be {SCALE!r} (the model of these recipes), got {self.scale!r}")

    @property
    def stage2_ratio(self) -> float:
        """The ratio of stage 2, the ablations and the paired comparisons: 0.5 if studied, else the first."""
        return 0.5 if 0.5 in self.ratios else self.ratios[0]


RECIPES: dict[str, EchoKVRecipe] = {r.name: r for r in (
    EchoKVRecipe("echokv/full", "the shipped study: 32 x 512 calibration tokens, 24 held-out windows, 3 ratios"),
    EchoKVRecipe("echokv/fast", "8 x 256 calibration tokens, 4 held-out windows, ratio 0.5, 5 stage-2 steps",
                 calib_windows=8, calib_len=256, eval_windows=4, ctx_len=256, eval_len=64, ratios=(0.5,),
                 stage2_steps=5, distill_windows=8),
    EchoKVRecipe("echokv/smoke", "the plumbing in seconds: a tiny GQA Llama on random copy sequences",
                 calib_windows=4, calib_len=64, eval_windows=3, ctx_len=48, eval_len=16, ratios=(0.5,),
                 stage2_steps=2, stage2_rank=4, distill_windows=2, model="tiny-gqa"),
)}
PICK = {(SCALE, False): "echokv/full", (SCALE, True): "echokv/fast"}

COMMAND = Command("echokv", "EchoKV-lite on SmolLM2: perplexity vs cache bytes for it and the baselines",
                  "runs/echokv", (Option("--stage2-steps", "stage-2 (KL) steps", "nonneg_int"),), scales=(SCALE,))


def recipe_for(scale: str = SCALE, fast: bool = False) -> EchoKVRecipe:
    """The recipe the CLI's ``--fast`` picks (``PICK``)."""
    return pick("echokv", RECIPES, PICK, scale, fast)


DATA_FIELDS = ("calib_windows", "calib_len", "eval_windows", "ctx_len", "eval_len")  # a cell's data: the windows


@dataclasses.dataclass(frozen=True)
class EchoKVCell(Cell):
    """One cell of the study: its ``kind`` and what that kind reads.

    Every cell: ``seed`` (torch's, first thing in the cell), ``layer_window`` (layers on each side of a
    discarded slot that feed its maps), ``data`` (the recipe's ``calib_windows``, ``calib_len``,
    ``eval_windows``, ``ctx_len``, ``eval_len``) and ``model`` (a name of ``STUDY_MODELS``). By kind:

    * ``ratio``: EchoKV-lite ridge maps on greedy / fixed / random slots, random slot dropping, per-head SVD,
      cross-layer SVD and StreamingLLM at ``ratio`` (the greedy slots and their errors are part of the result);
    * ``kivi``: KIVI at each of ``bits`` (no ratio: its bytes are set by the bits);
    * ``ablation``: the two knobs changed from the design notes (a layer window of 1; equal K/V budgets) at
      ``ratio`` (the stage-2 ratio);
    * ``stage2``: stage 2 (ridge + rank-``rank`` MLP maps distilled against the full cache, the LLM frozen,
      ``steps`` Adam steps at ``lr`` on ``distill_windows`` calibration windows) on the greedy slots at ``ratio``.

    Fields a kind does not read are None. A spec recorded before the cells were typed left out the fields
    that were None and named a model other than SmolLM2 inside ``data``: :meth:`from_spec` reads it as this
    cell (``rehash_records``)."""

    experiment = "echokv"
    kind: str
    seed: int
    layer_window: int
    data: dict[str, int]
    model: str = "smollm2"
    ratio: float | None = None
    bits: list[int] | None = None
    steps: int | None = None
    rank: int | None = None
    lr: float | None = None
    distill_windows: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "EchoKVCell":
        """:meth:`Cell.from_spec`, also of an untyped cell's spec that named its model inside ``data``."""
        data = spec.get("data") if isinstance(spec, dict) else None
        if isinstance(data, dict) and "model" in data:
            spec = {**spec, "data": {k: v for k, v in data.items() if k != "model"}, "model": data["model"]}
        return super().from_spec(spec)


def cells(recipe: EchoKVRecipe) -> list[EchoKVCell]:
    """The grid's cells: one ``ratio`` cell per ratio, then ``kivi``, ``ablation`` and ``stage2``."""
    base = dict(seed=recipe.seed, layer_window=recipe.layer_window, model=recipe.model,
                data={k: getattr(recipe, k) for k in DATA_FIELDS})
    r2 = recipe.stage2_ratio
    return [*(EchoKVCell("ratio", ratio=r, **base) for r in recipe.ratios),
            EchoKVCell("kivi", bits=KIVI_BITS, **base),
            EchoKVCell("ablation", ratio=r2, **base),
            EchoKVCell("stage2", ratio=r2, steps=recipe.stage2_steps, rank=recipe.stage2_rank, lr=recipe.stage2_lr,
                       distill_windows=recipe.distill_windows, **base)]


@functools.lru_cache(maxsize=1)
def _data(data_json: str):
    """The model (on CUDA if present), ``windows(split, length, n)`` (token windows of a split), the calibration
    capture and its moments, the held-out windows: loaded once per process (SmolLM2's capture from its disk
    cache after the first run). ``data_json``: a cell's ``data`` and ``model`` as one JSON object."""
    d = json.loads(data_json)
    model, tok, windows = study_model(d["model"])
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")  # captures, moments and fits stay on the CPU
    cap = capture_kv(model, windows("calib", d["calib_len"], d["calib_windows"]), cache=tok is not None)
    moments = {k: SlotMoments(cap, k) for k in KINDS}
    eval_ids = windows("heldout", d["ctx_len"] + d["eval_len"], d["eval_windows"])
    return model, windows, cap, moments, eval_ids


def _methods(cell: EchoKVCell, model, windows, cap, moments) -> tuple[list, dict[str, Any]]:
    """The methods of one cell, and what else the cell reports."""
    kind, seed, lw, d, ratio = cell.kind, cell.seed, cell.layer_window, cell.data, cell.ratio
    if kind == "kivi":
        return [B.kivi(b) for b in cell.bits], {}
    if kind == "ratio":
        methods, extra = [], {}
        for sel in ("greedy", "fixed", "random"):
            rec = fit_reconstructor(cap, ratio, method=sel, key_ratio=light_keys(ratio), layer_window=lw,
                                    moments=moments, seed=seed)
            methods.append(B.echokv_method(rec, f"echokv-lite ridge, {sel} @{ratio}"))
            if sel == "greedy":
                errs = slot_errors(rec, cap)
                extra = {"kept_greedy": rec.kept, "slot_rel_err_greedy": {k: errs[k]["rel_err"].tolist() for k in KINDS}}
        for m in (B.random_drop(cap, ratio, seed=seed), B.per_head_svd(cap, ratio), B.cross_layer_svd(cap, ratio),
                  B.streaming_llm(d["ctx_len"], ratio)):
            m.name += f" @{ratio}"
            methods.append(m)
        return methods, extra
    if kind == "ablation":  # a layer window of 1, and the recipe's, each with equal K/V budgets
        # (the row names keep the shipped results' "window <n>": a layer window, not tokens)
        return [B.echokv_method(fit_reconstructor(cap, ratio, key_ratio=None, layer_window=w, moments=moments),
                                f"echokv-lite ridge, greedy, {tag} @{ratio}")
                for w, tag in ((1, "window 1, equal K/V"), (lw, f"window {lw}, equal K/V"))], {}
    if kind == "stage2":
        kept = fit_reconstructor(cap, ratio, method="greedy", key_ratio=light_keys(ratio), layer_window=lw,
                                 moments=moments, seed=seed).kept
        rec = fit_reconstructor(cap, ratio, kept=kept, layer_window=lw, rank=cell.rank, moments=moments)
        dis_ids = windows("calib", d["ctx_len"] + d["eval_len"], cell.distill_windows)
        kl = distill(model, rec, dis_ids, d["ctx_len"], steps=cell.steps, lr=cell.lr, seed=seed) if cell.steps else []
        return [B.echokv_method(rec, f"echokv-lite stage 2, greedy @{ratio}")], {"stage2_kl": kl}
    raise BadArgumentError(f"cell.kind must be 'ratio', 'kivi', 'ablation' or 'stage2', got {kind!r}")


def echokv_cell(cell: EchoKVCell) -> dict[str, Any]:
    """One cell of the study (:class:`EchoKVCell`, built by :func:`cells`): fit its methods and score them on
    the held-out windows. Returns ``perplexity`` (``{name: {"fraction", "ppl", "nll", "delta_ppl",
    "window_nll"}}``, the full cache's row included) and, by kind, ``kept_greedy`` and
    ``slot_rel_err_greedy`` (``ratio``) or ``stage2_kl`` (``stage2``)."""
    torch.manual_seed(cell.seed)
    model, windows, cap, moments, eval_ids = _data(json.dumps({**cell.data, "model": cell.model}, sort_keys=True))
    methods, extra = _methods(cell, model, windows, cap, moments)
    table = perplexity(model, eval_ids, cell.data["ctx_len"], methods)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {"perplexity": table, **extra, "device": dev}


def _label(spec: dict[str, Any]) -> str:
    """A recorded cell as "kind @ratio" (a record's spec: today's, or one written before the cells were typed)."""
    return spec["kind"] + (f" @{spec['ratio']}" if spec.get("ratio") is not None else "")


def summarize(recipe: EchoKVRecipe, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's results from the successful cells: ``perplexity`` (every method's row, the full cache's
    once), ``paired`` (stage 2 against the other methods at its ratio, window by window: mean NLL difference
    and a paired bootstrap 95% interval), ``stage2_kl``, ``kept_greedy``, ``slot_rel_err_greedy`` (at the
    stage-2 ratio), ``timings`` (seconds per cell), and the recipe."""
    ok = [r for r in records if not r["error"]]
    table: dict[str, dict] = {}
    for r in ok:
        table.update({n: row for n, row in r["result"]["perplexity"].items() if n not in table})
    by_kind = {(r["spec"]["kind"], r["spec"].get("ratio")): r["result"] for r in ok}
    r2 = recipe.stage2_ratio
    s2 = f"echokv-lite stage 2, greedy @{r2}"
    others = [n for n in table if n.endswith(f"@{r2}") and n != s2 and any(k in n for k in PAIRED_WITH)]
    ratio_cells = {ratio: res for (kind, ratio), res in by_kind.items() if kind == "ratio"}
    return {
        "model": STUDY_MODELS[recipe.model],
        "recipe": recipe.name, "config": {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("name", "description")},
        "perplexity": table,
        "stage2_kl": by_kind.get(("stage2", r2), {}).get("stage2_kl", []),
        "paired": [paired_difference(table, s2, n) for n in others] if s2 in table else [],
        "kept_greedy": {str(r): res["kept_greedy"] for r, res in sorted(ratio_cells.items())},
        "slot_rel_err_greedy": ratio_cells.get(r2, {}).get("slot_rel_err_greedy", {}),
        "timings": {f"{_label(r['spec'])}_s": r.get("seconds") for r in ok},
        "device": next((r["result"]["device"] for r in ok), None),
    }


def run(recipe: str | EchoKVRecipe = "echokv/fast", out_dir: str | pathlib.Path = "runs/echokv", *,
        grid: GridOptions | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run an EchoKV-lite recipe through :func:`~echo_tutor.grid.run_grid`; write ``records.jsonl``,
    ``echokv.json`` (:func:`summarize`) and ``echokv.md`` (the table at the stage-2 ratio) to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or an :class:`EchoKVRecipe`; ``overrides`` replace its fields (e.g.
    ``stage2_steps=0``). Rerunning into the same ``out_dir`` runs only the cells not recorded yet. Raises
    :class:`~echo_tutor.grid.GridError` (after writing the other cells' results) if some cells failed."""
    recipe = resolve(RECIPES, EchoKVRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    records = run_grid(cells(recipe), echokv_cell, out_dir, grid, progress=progress,
                       describe=lambda r: f"{_label(r['spec'])}: {len(r['result']['perplexity'])} rows")
    out = summarize(recipe, records)
    write_summary(out_dir, "echokv", out, format_table(out, recipe.stage2_ratio))
    finish(records, out_dir)
    return out
