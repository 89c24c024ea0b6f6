"""The cells of the conversion study (``echo_tutor.experiments.convert``): :class:`ConvertCell`, and one function
per kind of cell, each one record of ``records.jsonl``. A cell holds every setting its result depends on; the
model, the token windows and the captured layer inputs are loaded once per process (:func:`context`), and the
fitted mixers travel between cells as files under ``<out_dir>/mixers/`` (so on a cluster of several machines
``out_dir`` must be a shared folder).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..convert.compose import converted_with_kivi_nll, echokv_with_kivi
from ..convert.distill import distill
from ..convert.layers import capture_inputs, converted, fit_layer, load_mixer, mixer_params
from ..convert.mixer import ConvertedAttention
from ..convert.probe import needle_probe, window_nll
from ..convert.spec import MixerSpec, parse_variant
from ..echokv.model import study_model
from ..errors import BadArgumentError
from ..grid import Cell

__all__ = ["ConvertCell", "Context", "context", "convert_cell", "mixer_file", "stage2_file"]


@dataclass(frozen=True)
class ConvertCell(Cell):
    """One cell of the conversion study. ``kind`` (what :func:`convert_cell` runs) and the fields it reads:

    * ``fit``: stage 1 of ``variant`` at ``layer`` (saves the mixer);
    * ``cost``: the held-out NLL on the first ``cost_windows`` windows with that one ``layer`` converted;
    * ``eval``: the held-out NLL with ``layers`` converted (``variant`` ``"full"``: none, the original model),
      by their stage-``stage`` mixers (1 or 2);
    * ``needle``: the pass-key accuracy at each of ``distances`` (``trials`` each, ``seed``) with ``layers``
      converted (``variant``, ``stage`` as for ``eval``);
    * ``distill``: stage 2 of ``variant`` at ``layers`` (saves the mixers);
    * ``compose``: ``what`` is ``"converted+kivi"`` (``variant`` at ``layers`` beside a KIVI ``bits`` context
      on the other layers) or ``"echokv+kivi"`` (EchoKV-lite at each of ``ratios``, fit on ``calib_windows``
      calibration windows of ``calib_len`` tokens, with and without ``bits``-bit KIVI on its kept heads).

    A cell with fitted mixers carries stage 1's settings: the mixer (``window``, ``sinks``, ``rank``,
    ``eps``), its data (``calib_windows`` x ``calib_len``) and its fit (``fit_steps``, ``fit_batch``,
    ``fit_lr``, ``seed``); a stage-2 cell also ``stage2_steps`` and ``stage2_lr``; a cell that scores
    held-out text ``eval_windows`` x (``ctx_len`` + ``eval_len``). ``model``: a name of ``STUDY_MODELS``.
    Fields a kind does not read are None; ``stage``, ``sinks`` and ``model`` default to what a spec written
    before the cells were typed meant by leaving them out (the grid reads such a record as today's cell), and a cell without
    mixers keeps the defaults of ``stage`` and ``sinks`` (unused).
    """

    experiment = "convert"
    kind: str
    variant: str | None = None
    what: str | None = None
    layer: int | None = None
    layers: list[int] | None = None
    stage: int = 1
    window: int | None = None
    sinks: int = 4  # (the shipped records were written before sinks became a setting; 4 is their value)
    rank: int | None = None
    eps: float | None = None
    calib_windows: int | None = None
    calib_len: int | None = None
    fit_steps: int | None = None
    fit_batch: int | None = None
    fit_lr: float | None = None
    seed: int | None = None
    cost_windows: int | None = None
    eval_windows: int | None = None
    ctx_len: int | None = None
    eval_len: int | None = None
    distances: list[int] | None = None
    trials: int | None = None
    stage2_steps: int | None = None
    stage2_lr: float | None = None
    bits: int | None = None
    ratios: list[float] | None = None
    model: str = "smollm2"


@dataclass
class Context:
    """What the cells of one study share in a process: the model (CPU, float32), its tokenizer (None for the
    tiny model), ``windows(split, length, n)``, the number of convertible layers, the calibration and held-out
    windows, and the layer inputs captured so far (``{layer: [W, T, d] float16}``)."""

    model: Any
    tok: Any
    windows: Any
    n_layers: int
    cal_ids: torch.Tensor
    eval_ids: torch.Tensor
    captured: dict[int, torch.Tensor] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def context(data_json: str) -> Context:
    """The :class:`Context` of the data settings ``data_json`` (a JSON object: ``model``, ``calib_windows``,
    ``calib_len``, ``eval_windows``, ``ctx_len``, ``eval_len``, ``layers``, ``seed``); one per process."""
    d = json.loads(data_json)
    torch.manual_seed(d["seed"])
    model, tok, windows = study_model(d["model"])
    L = len(model.model.layers)
    return Context(model, tok, windows, L if d["layers"] is None else min(d["layers"], L),
                   windows("calib", d["calib_len"], d["calib_windows"]),
                   windows("heldout", d["ctx_len"] + d["eval_len"], d["eval_windows"]))


def _slug(variant: str) -> str:
    return variant.replace("+", "_").replace(":", "_")


def mixer_file(out_dir: pathlib.Path, variant: str, layer: int) -> pathlib.Path:
    """Where the stage-1 mixer of ``variant`` at ``layer`` is saved (``pack_mixers`` reads these)."""
    return out_dir / "mixers" / f"{_slug(variant)}_L{layer:02d}.pt"


def stage2_file(out_dir: pathlib.Path, variant: str, layers: list[int]) -> pathlib.Path:
    """Where the stage-2 mixers of ``variant`` with ``layers`` converted are saved."""
    return out_dir / "mixers" / f"s2_{_slug(variant)}_{'-'.join(map(str, layers))}.pt"


def _save(obj: Any, path: pathlib.Path) -> None:
    """``torch.save`` to a file of this process, then renamed into place (two workers never clobber one file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _mixer_spec(cell: ConvertCell, variant: str) -> MixerSpec:
    return parse_variant(variant, window=cell.window, sinks=cell.sinks, rank=cell.rank, eps=cell.eps)


def _fit(ctx: Context, cell: ConvertCell, variant: str, layer: int,
         out: pathlib.Path) -> tuple[ConvertedAttention, dict]:
    """Stage 1 of ``variant`` at ``layer`` with the cell's fit settings; the mixer is saved."""
    if layer not in ctx.captured:  # one pass captures every layer still to fit (float16, ~5 MB a layer for SmolLM2)
        ctx.captured.update(capture_inputs(ctx.model, ctx.cal_ids, list(range(layer, ctx.n_layers))))
    m, info = fit_layer(ctx.model, layer, _mixer_spec(cell, variant), ctx.captured[layer], steps=cell.fit_steps,
                        batch=cell.fit_batch, lr=cell.fit_lr, seed=cell.seed)
    _save(mixer_params(m), mixer_file(out, variant, layer))
    info.pop("losses", None)
    return m, info


def _stage1(ctx: Context, cell: ConvertCell, variant: str, layers: list[int],
            out: pathlib.Path) -> dict[int, ConvertedAttention]:
    """The stage-1 mixers of ``variant`` at ``layers``: loaded from their files (fitted again where one is missing)."""
    ms, mixers = _mixer_spec(cell, variant), {}
    for i in layers:
        f = mixer_file(out, variant, i)
        mixers[i] = load_mixer(ctx.model, i, ms, torch.load(f)) if f.exists() else _fit(ctx, cell, variant, i, out)[0]
    return mixers


def _distill(ctx: Context, cell: ConvertCell, out: pathlib.Path) -> tuple[dict[int, ConvertedAttention], dict]:
    """Stage 2 of ``cell.variant`` at ``cell.layers`` from fresh copies of the stage-1 mixers; saved."""
    variant, layers = cell.variant, cell.layers
    mixers = _stage1(ctx, cell, variant, layers, out)
    info = distill(ctx.model, mixers, ctx.cal_ids, steps=cell.stage2_steps, lr=cell.stage2_lr, seed=cell.seed)
    _save({i: mixer_params(m) for i, m in mixers.items()}, stage2_file(out, variant, layers))
    return mixers, info


def _mixers(ctx: Context, cell: ConvertCell, out: pathlib.Path) -> dict[int, ConvertedAttention]:
    """The mixers a cell converts: none for ``"full"``, stage 2 (saved by its ``distill`` cell; distilled
    again if the file is missing) when ``cell.stage == 2``, else stage 1."""
    variant, layers = cell.variant, cell.layers
    if variant == "full":
        return {}
    if cell.stage != 2:
        return _stage1(ctx, cell, variant, layers, out)
    f = stage2_file(out, variant, layers)
    if not f.exists():
        return _distill(ctx, cell, out)[0]
    saved, ms = torch.load(f), _mixer_spec(cell, variant)
    return {i: load_mixer(ctx.model, i, ms, saved[i]) for i in layers}


def _nll(ctx: Context, mixers: dict[int, ConvertedAttention], ids: torch.Tensor, ctx_len: int) -> dict[str, list[float]]:
    with converted(ctx.model, mixers):
        return {"window_nll": window_nll(ctx.model, ids, ctx_len)}


def convert_cell(cell: ConvertCell, *, out_dir: str, data: dict[str, Any]) -> dict[str, Any]:
    """Run one cell of the conversion study (:class:`ConvertCell`; its kinds there) with the study's ``data``
    settings (:func:`context`) and mixer files under ``out_dir``; returns its JSON-ready result."""
    ctx, out, c = context(json.dumps(data, sort_keys=True)), pathlib.Path(out_dir), cell
    torch.manual_seed(data["seed"])
    if c.kind == "fit":
        return _fit(ctx, c, c.variant, c.layer, out)[1]
    if c.kind == "cost":
        return _nll(ctx, _stage1(ctx, c, c.variant, [c.layer], out), ctx.eval_ids[: c.cost_windows], c.ctx_len)
    if c.kind == "eval":
        return _nll(ctx, _mixers(ctx, c, out), ctx.eval_ids, c.ctx_len)
    if c.kind == "needle":
        with converted(ctx.model, _mixers(ctx, c, out)):
            return needle_probe(ctx.model, ctx.tok, c.distances, c.trials, seed=c.seed)
    if c.kind == "distill":
        return _distill(ctx, c, out)[1]
    if c.kind == "compose" and c.what == "converted+kivi":
        mixers = _stage1(ctx, c, c.variant, c.layers, out)
        return {"window_nll": converted_with_kivi_nll(ctx.model, mixers, c.bits, ctx.eval_ids, c.ctx_len)}
    if c.kind == "compose" and c.what == "echokv+kivi":
        cal = ctx.windows("calib", c.calib_len, c.calib_windows)
        return echokv_with_kivi(ctx.model, cal, ctx.eval_ids, c.ctx_len, c.ratios, c.bits, cache=ctx.tok is not None)
    raise BadArgumentError(f"cell: no cell of kind {c.kind!r} (what={c.what!r}) in the conversion study")
