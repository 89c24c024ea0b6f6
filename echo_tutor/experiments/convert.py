"""Converting SmolLM2-135M's attention layers into fixed-state mixers (a softmax window beside SKA or linear
attention statistics): stage 1 per layer, the per-layer cost map, the greedy sweep, stage 2, the pass-key
probe and the compositions at equal bytes (``echo-tutor convert``; lab 08 reads the shipped run).

Recipes (``RECIPES``; ``--fast`` picks ``convert/fast``):

* ``convert/full`` (the shipped results): all 30 layers, four variants, 8 calibration windows of 512 tokens,
  24 held-out windows of 512 + 128 tokens (lab 06's), the pass key at 256, 1,024 and 2,048 tokens.
* ``convert/fast``: the first 6 layers, two variants, few and short windows (minutes on 2 CPU cores).
* ``convert/smoke`` (``--recipe``): the plumbing in seconds on a tiny GQA Llama trained on a copy task, with
  random copy sequences for text and no pass-key probe (it has no tokenizer); no result to read.

Protocol: windows of ``ctx_len + eval_len`` tokens of held-out text, each run in one forward pass through the
(partly converted) model, scored on the next-token NLL of its last ``eval_len`` tokens, so every scored token
has at least ``ctx_len`` tokens of context, far more than the window W. Stage 1 fits each converted layer
alone on the calibration split (never the held-out one): the MSE between the mixer's output and the original
attention's output on the layer's own captured inputs, over the target's mean square.

The study is a chain of four grids (``run_grid``, local or Ray, one record per cell in ``records.jsonl``; the
cells: ``convert_cells``): (1) the original model and stage 1 of every variant at every layer; (2) the cost of
each layer converted alone, which orders the layers cheapest first; (3) the sweep over numbers of converted
layers, the pass-key probe and stage 2's distillation; (4) stage 2's evaluation and the compositions. A rerun
into the same ``out_dir`` runs only the cells not recorded; a failed cell is recorded, and the study stops
after its grid with :class:`~echo_tutor.grid.GridError` listing it (later grids need its result).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any

import torch

from .._checks import check_int, check_positive
from ..convert.layers import kv_bytes, mixer_bytes, state_bytes
from ..convert.spec import MixerSpec, parse_variant
from ..echokv.model import STUDY_MODELS
from ..errors import BadArgumentError
from ..grid import GridOptions, run_grid
from .command import Command, Option
from .common import finish, pick, resolve
from .convert_cells import ConvertCell, context, convert_cell
from .convert_report import format_summary

__all__ = ["COMMAND", "ConvertRecipe", "RECIPES", "PICK", "recipe_for", "run"]

SCALE = "smollm2"
MODELS = tuple(STUDY_MODELS)
MEMORY_TOKENS = (512, 2048, 16384)  # the context lengths of the state-bytes table


@dataclasses.dataclass(frozen=True)
class ConvertRecipe:
    """One conversion study.

    Args:
        variants: mixer labels ``"<variant>:K<k>"`` to fit and sweep (``"window"`` needs no fit).
        window, sinks, rank, eps: the mixers' W, attention sinks A, r, ridge strength.
        calib_windows, calib_len: stage 1 data (calibration split).
        fit_steps, fit_batch, fit_lr: stage 1 optimisation (Adam) per layer.
        cost_variant: the variant whose single-layer costs order the layers (cheapest first).
        cost_windows: held-out windows for the per-layer cost map.
        counts: numbers of converted layers in the greedy sweep.
        eval_windows, ctx_len, eval_len: held-out perplexity windows (lab 06's: 24 x (512 + 128)).
        needle_distances, needle_trials, needle_count: the pass-key probe (filler tokens between the key and
            the question, none: no probe; trials per distance; converted layers).
        stage2_variants, stage2_steps, stage2_lr, stage2_counts: stage 2 (end-to-end KL to the original model,
            one calibration window per step, only the mixers train) for the ``n`` cheapest layers, each ``n``
            in ``stage2_counts`` (the window alone has nothing to train).
        compose_variants, compose_counts, compose_bits, compose_ratios, compose_calib_windows: the compositions
            at equal bytes (``convert.compose``): ``n`` converted layers with a KIVI ``compose_bits`` context on
            the others, and lab 06's EchoKV-lite (at each ratio, fit on ``compose_calib_windows`` windows) with
            and without its kept heads KIVI-quantised.
        layers: convert only among the first ``layers`` layers (None: all of them).
        model: ``"smollm2"`` or ``"tiny-gqa"`` (``convert/smoke``).
    """

    name: str
    description: str
    variants: tuple[str, ...] = ("window", "window+linear:K0", "window+ska:K0", "window+ska:K1")
    window: int = 64
    sinks: int = 4
    rank: int = 32
    eps: float = 1e-2
    calib_windows: int = 8
    calib_len: int = 512
    fit_steps: int = 40
    fit_batch: int = 2
    fit_lr: float = 1e-2
    cost_variant: str = "window+ska:K1"
    cost_windows: int = 8
    counts: tuple[int, ...] = (1, 2, 4, 8, 15, 22, 28, 30)
    eval_windows: int = 24
    ctx_len: int = 512
    eval_len: int = 128
    needle_distances: tuple[int, ...] = (256, 1024, 2048)
    needle_trials: int = 5
    needle_count: int = 8
    stage2_variants: tuple[str, ...] = ("window+linear:K0", "window+ska:K1")
    stage2_steps: int = 32
    stage2_lr: float = 1e-3
    stage2_counts: tuple[int, ...] = (8, 30)
    compose_variants: tuple[str, ...] = ("window+linear:K0", "window+ska:K1")
    compose_counts: tuple[int, ...] = (8, 15)
    compose_bits: int = 4
    compose_ratios: tuple[float, ...] = (0.5, 0.75)
    compose_calib_windows: int = 32
    layers: int | None = None
    seed: int = 0
    model: str = "smollm2"
    scale: str = SCALE

    def __post_init__(self) -> None:
        for f in ("variants", "counts", "needle_distances", "stage2_variants", "stage2_counts", "compose_variants",
                  "compose_counts", "compose_ratios"):
            v = getattr(self, f)
            if not isinstance(v, (list, tuple)):
                raise BadArgumentError(f"{f} must be a list, got {v!r}")
            object.__setattr__(self, f, tuple(v))
        if not self.variants:
            raise BadArgumentError(f"variants must be a non-empty list of names like 'window+ska:K1', got {self.variants!r}")
        for v in (*self.variants, self.cost_variant):
            self.spec(v)
        for v in self.stage2_variants:
            if v not in self.variants or self.spec(v).variant == "window":
                raise BadArgumentError(f"stage2_variants must be fitted variants among {list(self.variants)} (not the "
                                       f"window alone), got {v!r}")
        for v in self.compose_variants:
            if v not in self.variants:
                raise BadArgumentError(f"compose_variants must be among variants {list(self.variants)}, got {v!r}")
        if self.compose_bits not in (2, 3, 4, 8):
            raise BadArgumentError(f"compose_bits must be one of 2, 3, 4, 8, got {self.compose_bits!r}")
        if any(not isinstance(r, float) or not 0 < r < 1 for r in self.compose_ratios):
            raise BadArgumentError(f"compose_ratios must be floats in (0, 1), got {list(self.compose_ratios)!r}")
        for f in ("calib_windows", "calib_len", "fit_batch", "cost_windows", "eval_windows", "ctx_len", "eval_len",
                  "needle_trials", "needle_count", "compose_calib_windows"):
            check_int(f, getattr(self, f), min_value=1)
        for f in ("fit_steps", "stage2_steps", "seed"):
            check_int(f, getattr(self, f), min_value=0)
        check_positive("stage2_lr", self.stage2_lr)
        if self.layers is not None:
            check_int("layers", self.layers, min_value=1)
        for f, low in (("counts", 1), ("stage2_counts", 1), ("compose_counts", 1), ("needle_distances", 1)):
            if any(isinstance(c, bool) or not isinstance(c, int) or c < low for c in getattr(self, f)):
                raise BadArgumentError(f"{f} must be a list of ints >= {low}, got {list(getattr(self, f))!r}")
        if not self.counts:
            raise BadArgumentError("counts must name at least one number of converted layers")
        if self.model not in MODELS:
            raise BadArgumentError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.model != "smollm2" and self.needle_distances:
            raise BadArgumentError("needle_distances must be empty for the tiny model (the pass key needs a tokenizer)")
        if self.scale != SCALE:
            raise BadArgumentError(f"scale must be {SCALE!r} (the model of these recipes), got {self.scale!r}")

    def spec(self, variant: str) -> MixerSpec:
        """The :class:`MixerSpec` of a variant name such as ``"window+ska:K1"``."""
        return parse_variant(variant, window=self.window, sinks=self.sinks, rank=self.rank, eps=self.eps)


RECIPES: dict[str, ConvertRecipe] = {r.name: r for r in (
    ConvertRecipe("convert/full", "the shipped study: 30 layers, 4 variants, 24 held-out windows, stage 2, pass key"),
    ConvertRecipe("convert/fast", "the first 6 layers, 2 variants, few short windows: minutes on a CPU",
                  variants=("window", "window+ska:K1"), calib_windows=4, calib_len=256, fit_steps=12, cost_windows=2,
                  counts=(1, 2, 4), eval_windows=4, ctx_len=256, eval_len=64, needle_distances=(256,), needle_trials=2,
                  needle_count=2, stage2_variants=("window+ska:K1",), stage2_steps=3, stage2_counts=(2,),
                  compose_variants=("window+ska:K1",), compose_counts=(2,), compose_ratios=(0.5,),
                  compose_calib_windows=4, layers=6),
    ConvertRecipe("convert/smoke", "the plumbing in seconds: a tiny GQA Llama on random copy sequences",
                  variants=("window", "window+ska:K1"), window=8, sinks=2, rank=8, calib_windows=4, calib_len=64,
                  fit_steps=3, cost_windows=2, counts=(1, 2), eval_windows=3, ctx_len=48, eval_len=16,
                  needle_distances=(), stage2_variants=("window+ska:K1",), stage2_steps=2, stage2_counts=(2,),
                  compose_variants=("window+ska:K1",), compose_counts=(1,), compose_ratios=(0.5,),
                  compose_calib_windows=2, model="tiny-gqa"),
)}
PICK = {(SCALE, False): "convert/full", (SCALE, True): "convert/fast"}

COMMAND = Command("convert", "convert SmolLM2's attention layers into fixed-state mixers (window, SKA, linear)",
                  "runs/convert", (
    Option("--variants", "mixers, e.g. window window+linear:K0 window+ska:K0 window+ska:K1 ska:K1", nargs="+"),
    Option("--window", "softmax window W (the recipe's: 64)", "positive_int"),
    Option("--sinks", "attention-sink tokens kept in the softmax (4)", "nonneg_int"),
    Option("--rank", "feature size r of the statistics (32)", "positive_int"),
    Option("--fit-steps", "stage 1 Adam steps per layer", "nonneg_int"),
    Option("--counts", "numbers of converted layers to sweep", "positive_int", nargs="+"),
    Option("--layers", "convert among the first N layers only", "positive_int"),
    Option("--stage2-variants", "variants that get stage 2 (end-to-end KL); none to skip it", nargs="*"),
    Option("--stage2-steps", "stage 2 Adam steps", "nonneg_int"),
    Option("--stage2-counts", "numbers of converted layers that get stage 2 (8 30)", "positive_int", nargs="*"),
), scales=(SCALE,))


def recipe_for(scale: str = SCALE, fast: bool = False) -> ConvertRecipe:
    """The recipe the CLI's ``--fast`` picks (``PICK``)."""
    return pick("convert", RECIPES, PICK, scale, fast)


def _common(r: ConvertRecipe) -> dict[str, Any]:
    """The stage-1 settings (and the model) every cell that uses a fitted mixer carries."""
    return {k: getattr(r, k) for k in ("window", "sinks", "rank", "eps", "calib_windows", "calib_len", "fit_steps",
                                       "fit_batch", "fit_lr", "seed", "model")}


def _evalspec(r: ConvertRecipe) -> dict[str, int]:
    return {"eval_windows": r.eval_windows, "ctx_len": r.ctx_len, "eval_len": r.eval_len}


def _stage2spec(r: ConvertRecipe) -> dict[str, Any]:
    return {"stage2_steps": r.stage2_steps, "stage2_lr": r.stage2_lr, **_common(r)}


def _grid(cells: list[ConvertCell], fn, out: pathlib.Path, grid: GridOptions | None, progress: bool,
          used: list[dict]) -> list[Any]:
    """One grid of the chain: the results of ``cells`` in order (their records added to ``used``; records
    written before the cells were typed count: the grid reads them as today's cells); raises GridError (the records
    written) if a cell failed."""
    records = run_grid(cells, fn, out, grid, progress=progress)
    used.extend(records)
    finish(records, out)
    return [x["result"] for x in records]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _keep_subsets(recipe: str | ConvertRecipe, overrides: dict[str, Any]) -> dict[str, Any]:
    """Chosen ``variants`` without chosen stage-2 variants: stage 2 and the compositions of those variants only."""
    if "variants" not in overrides or "stage2_variants" in overrides:
        return overrides
    base = resolve(RECIPES, ConvertRecipe, recipe, {})
    keep = lambda vs: tuple(v for v in vs if v in overrides["variants"])  # noqa: E731
    return {"stage2_variants": keep(base.stage2_variants), "compose_variants": keep(base.compose_variants), **overrides}


def run(recipe: str | ConvertRecipe = "convert/fast", out_dir: str | pathlib.Path = "runs/convert", *,
        grid: GridOptions | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run (or continue) a conversion study; write ``records.jsonl``, ``convert.json`` (the result returned)
    and ``convert.md`` (:func:`~echo_tutor.experiments.convert_report.format_summary`) to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or a :class:`ConvertRecipe`; ``overrides`` replace its fields. The mixers'
    parameters are saved under ``<out_dir>/mixers/`` (``pack_mixers`` ships them). Raises
    :class:`~echo_tutor.grid.GridError` after the grid in which a cell failed."""
    r = resolve(RECIPES, ConvertRecipe, recipe, _keep_subsets(recipe, overrides))
    out, t0, used = pathlib.Path(out_dir), time.time(), []
    data = {"model": r.model, "layers": r.layers, "seed": r.seed, "calib_windows": r.calib_windows,
            "calib_len": r.calib_len, **_evalspec(r)}
    ctx = context(json.dumps(data, sort_keys=True))  # the driver's model: the layer count and the bytes tables
    go = functools.partial(_grid, fn=functools.partial(convert_cell, out_dir=str(out), data=data), out=out, grid=grid,
                           progress=progress, used=used)
    result = _chain(r, ctx.n_layers, go)
    counts = [c for c in r.counts if c <= ctx.n_layers]
    m = ctx.model
    result.update(
        state_bytes={str(T): {"full": state_bytes(m, None, 0, T),
                              **{v: {str(c): state_bytes(m, r.spec(v), c, T) for c in counts} for v in r.variants}}
                     for T in MEMORY_TOKENS},
        layer_kv_bytes_per_token=kv_bytes(m, 1), mixer_state_bytes={v: mixer_bytes(m, r.spec(v)) for v in r.variants},
        device=f"cpu ({torch.get_num_threads()} threads)", seconds=time.time() - t0,
        cell_seconds=sum(float(x.get("seconds") or 0.0) for x in used))  # resumed cells too
    (out / "convert.json").write_text(json.dumps(result, indent=1))
    summary = format_summary(result)
    (out / "convert.md").write_text(summary + "\n")
    if progress:
        print(summary, flush=True)
    return result


def _chain(r: ConvertRecipe, n: int, go) -> dict[str, Any]:
    """The four grids of the study (``go(cells) -> results``) and the result's tables."""
    common, ev, s2spec, C = _common(r), _evalspec(r), _stage2spec(r), ConvertCell
    fitted = list(dict.fromkeys([*r.variants, r.cost_variant]))
    r1 = go([C("eval", variant="full", layers=[], model=r.model, **ev),
             *(C("fit", variant=v, layer=i, **common) for v in fitted for i in range(n))])
    full, fits = r1[0]["window_nll"], r1[1:]
    r2 = go([C("cost", variant=r.cost_variant, layer=i, cost_windows=r.cost_windows, **ev, **common) for i in range(n)])
    costs = [_mean(c["window_nll"]) - _mean(full[: r.cost_windows]) for c in r2]
    order = sorted(range(n), key=lambda i: costs[i])
    counts, nl = [c for c in r.counts if c <= n], sorted(order[: r.needle_count])
    first = lambda c: sorted(order[:c])  # noqa: E731 - the c cheapest layers
    needle = {"distances": r.needle_distances, "trials": r.needle_trials}
    s2 = [(v, c) for v in r.stage2_variants for c in r.stage2_counts if c <= n]

    sweep = [C("eval", variant=v, layers=first(c), **ev, **common) for v in r.variants for c in counts]
    needles = [C("needle", variant="full", layers=[], seed=r.seed, model=r.model, **needle),
               *(C("needle", variant=v, layers=nl, **needle, **common) for v in r.variants)] if r.needle_distances else []
    distills = [C("distill", variant=v, layers=first(c), **s2spec) for v, c in s2]
    r3 = iter(go([*sweep, *needles, *distills]))
    sweep_res, needle_res, distill_res = ([next(r3) for _ in xs] for xs in (sweep, needles, distills))

    s2_evals = [C("eval", variant=v, stage=2, layers=first(c), **ev, **s2spec) for v, c in s2]
    s2_needles = [C("needle", variant=v, layers=nl, stage=2, **needle, **s2spec)
                  for v, c in s2 if first(c) == nl and r.needle_distances]
    kivi = [C("compose", what="converted+kivi", variant=v, layers=first(c), bits=r.compose_bits, **ev, **common)
            for v in r.compose_variants for c in r.compose_counts if c <= n]
    ekv = [C("compose", what="echokv+kivi", ratios=r.compose_ratios, bits=r.compose_bits, model=r.model,
             calib_windows=r.compose_calib_windows, calib_len=r.calib_len, **ev)] if r.compose_ratios else []
    r4 = iter(go([*s2_evals, *s2_needles, *kivi, *ekv]))
    s2_res, s2_needle_res, kivi_res, ekv_res = ([next(r4) for _ in xs] for xs in (s2_evals, s2_needles, kivi, ekv))
    return {
        "model": STUDY_MODELS[r.model],
        "recipe": r.name, "config": {f: getattr(r, f) for f in _CONFIG_FIELDS},
        "labels": {v: r.spec(v).label for v in r.variants}, "full_window_nll": full,
        "fit": {v: fits[fitted.index(v) * n: (fitted.index(v) + 1) * n] for v in r.variants},
        "cost_nll": costs, "order": order,
        "sweep_window_nll": _by_variant({(s.variant, len(s.layers)): x["window_nll"] for s, x in zip(sweep, sweep_res)}),
        "needle": dict(zip(["full", *r.variants], needle_res)),
        "stage2": _by_variant({vc: {"window_nll": e["window_nll"], **d} for vc, e, d in zip(s2, s2_res, distill_res)}),
        "needle_stage2": {s.variant: x for s, x in zip(s2_needles, s2_needle_res)},
        "compose": {"bits": r.compose_bits, "echokv": ekv_res[0] if ekv_res else {},
                    "converted_kivi": _by_variant({(s.variant, len(s.layers)): x["window_nll"]
                                                   for s, x in zip(kivi, kivi_res)})} if kivi or ekv else {},
        "needle_layers": nl,
    }


_CONFIG_FIELDS = [f.name for f in dataclasses.fields(ConvertRecipe) if f.name not in ("name", "description", "scale")]


def _by_variant(d: dict[tuple[str, int], Any]) -> dict[str, dict[str, Any]]:
    """``{(variant, count): x}`` as ``{variant: {str(count): x}}``."""
    out: dict[str, dict[str, Any]] = {}
    for (v, c), x in d.items():
        out.setdefault(v, {})[str(c)] = x
    return out
