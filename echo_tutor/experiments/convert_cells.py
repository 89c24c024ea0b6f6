"""The cells of the conversion study (``echo_tutor.experiments.convert``): one function per kind of cell, each
one record of ``records.jsonl``. A cell's spec holds every setting its result depends on; the model, the token
windows and the captured layer inputs are loaded once per process (:func:`context`), and the fitted mixers
travel between cells as files under ``<out_dir>/mixers/`` (so on a cluster of several machines ``out_dir`` must
be a shared folder).

Kinds (``spec["kind"]``): ``fit`` (stage 1 of one variant at one layer; saves the mixer), ``cost`` (held-out NLL
with that one layer converted), ``eval`` (held-out NLL with some layers converted: stage 1, stage 2, or
``"full"``, the original model), ``needle`` (pass-key accuracy), ``distill`` (stage 2 of some layers; saves
the mixers), ``compose`` (converted layers beside KIVI layers, or EchoKV-lite with and without KIVI).
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

__all__ = ["Context", "context", "convert_cell", "mixer_file", "stage2_file"]

DEFAULT_SINKS = 4  # specs without "sinks" were written before it was a setting: 4 is their value


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


def _mixer_spec(spec: dict[str, Any], variant: str) -> MixerSpec:
    return parse_variant(variant, window=spec["window"], sinks=spec.get("sinks", DEFAULT_SINKS), rank=spec["rank"],
                         eps=spec["eps"])


def _fit(ctx: Context, spec: dict[str, Any], variant: str, layer: int, out: pathlib.Path) -> tuple[ConvertedAttention, dict]:
    """Stage 1 of ``variant`` at ``layer`` with the spec's fit settings; the mixer is saved."""
    if layer not in ctx.captured:  # one pass captures every layer still to fit (float16, ~5 MB a layer for SmolLM2)
        ctx.captured.update(capture_inputs(ctx.model, ctx.cal_ids, list(range(layer, ctx.n_layers))))
    m, info = fit_layer(ctx.model, layer, _mixer_spec(spec, variant), ctx.captured[layer], steps=spec["fit_steps"],
                        batch=spec["fit_batch"], lr=spec["fit_lr"], seed=spec["seed"])
    _save(mixer_params(m), mixer_file(out, variant, layer))
    info.pop("losses", None)
    return m, info


def _stage1(ctx: Context, spec: dict[str, Any], variant: str, layers: list[int], out: pathlib.Path) -> dict[int, ConvertedAttention]:
    """The stage-1 mixers of ``variant`` at ``layers``: loaded from their files (fitted again where one is missing)."""
    ms, mixers = _mixer_spec(spec, variant), {}
    for i in layers:
        f = mixer_file(out, variant, i)
        mixers[i] = load_mixer(ctx.model, i, ms, torch.load(f)) if f.exists() else _fit(ctx, spec, variant, i, out)[0]
    return mixers


def _distill(ctx: Context, spec: dict[str, Any], out: pathlib.Path) -> tuple[dict[int, ConvertedAttention], dict]:
    """Stage 2 of ``spec["variant"]`` at ``spec["layers"]`` from fresh copies of the stage-1 mixers; saved."""
    variant, layers = spec["variant"], spec["layers"]
    mixers = _stage1(ctx, spec, variant, layers, out)
    info = distill(ctx.model, mixers, ctx.cal_ids, steps=spec["stage2_steps"], lr=spec["stage2_lr"], seed=spec["seed"])
    _save({i: mixer_params(m) for i, m in mixers.items()}, stage2_file(out, variant, layers))
    return mixers, info


def _mixers(ctx: Context, spec: dict[str, Any], out: pathlib.Path) -> dict[int, ConvertedAttention]:
    """The mixers a cell converts: none for ``"full"``, stage 2 (saved by its ``distill`` cell; distilled
    again if the file is missing) when ``spec["stage"] == 2``, else stage 1."""
    variant, layers = spec["variant"], spec["layers"]
    if variant == "full":
        return {}
    if spec.get("stage") != 2:
        return _stage1(ctx, spec, variant, layers, out)
    f = stage2_file(out, variant, layers)
    if not f.exists():
        return _distill(ctx, spec, out)[0]
    saved, ms = torch.load(f), _mixer_spec(spec, variant)
    return {i: load_mixer(ctx.model, i, ms, saved[i]) for i in layers}


def _nll(ctx: Context, mixers: dict[int, ConvertedAttention], ids: torch.Tensor, ctx_len: int) -> dict[str, list[float]]:
    with converted(ctx.model, mixers):
        return {"window_nll": window_nll(ctx.model, ids, ctx_len)}


def convert_cell(spec: dict[str, Any], *, out_dir: str, data: dict[str, Any]) -> dict[str, Any]:
    """Run one cell of the conversion study (the kinds: see the module doc) with the study's ``data``
    settings (:func:`context`) and mixer files under ``out_dir``; returns its JSON-ready result."""
    ctx, out = context(json.dumps(data, sort_keys=True)), pathlib.Path(out_dir)
    torch.manual_seed(data["seed"])
    kind = spec["kind"]
    if kind == "fit":
        return _fit(ctx, spec, spec["variant"], spec["layer"], out)[1]
    if kind == "cost":
        return _nll(ctx, _stage1(ctx, spec, spec["variant"], [spec["layer"]], out), ctx.eval_ids[: spec["cost_windows"]],
                    spec["ctx_len"])
    if kind == "eval":
        return _nll(ctx, _mixers(ctx, spec, out), ctx.eval_ids, spec["ctx_len"])
    if kind == "needle":
        with converted(ctx.model, _mixers(ctx, spec, out)):
            return needle_probe(ctx.model, ctx.tok, spec["distances"], spec["trials"], seed=spec["seed"])
    if kind == "distill":
        return _distill(ctx, spec, out)[1]
    if kind == "compose" and spec["what"] == "converted+kivi":
        mixers = _stage1(ctx, spec, spec["variant"], spec["layers"], out)
        return {"window_nll": converted_with_kivi_nll(ctx.model, mixers, spec["bits"], ctx.eval_ids, spec["ctx_len"])}
    if kind == "compose" and spec["what"] == "echokv+kivi":
        cal = ctx.windows("calib", spec["calib_len"], spec["calib_windows"])
        return echokv_with_kivi(ctx.model, cal, ctx.eval_ids, spec["ctx_len"], spec["ratios"], spec["bits"],
                                cache=ctx.tok is not None)
    raise BadArgumentError(f"spec: no cell of kind {kind!r} (what={spec.get('what')!r}) in the conversion study")
