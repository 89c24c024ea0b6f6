"""Which part of a converted SmolLM2 carries the needle: the retrieval probe (:mod:`echo_tutor.convert.passkey`)
on the original model, on converted models, and on their two controls, in one run.

For every converted mixer (the shipped stage-1 mixers of lab 08's study, at the first ``count`` layers of its
cost order) and every prompt cell (format, number of keys, length), three models read the same prompts:

* the mixer itself;
* the **window alone** at the same layers (``"window"``: the softmax over the sinks and the last W tokens);
* the mixer with its **readout shut** (:func:`~echo_tutor.convert.passkey.readout_shut`; for window + linear
  this is the window alone, so it is run for the SKA mixers only).

A mixer *keeps the needle* in a cell where it retrieves the key more often than each control on the same
prompts, by an exact sign test on the prompts where they disagree (p < 0.05 against both). The original
model's row comes first. Recipes:

* ``passkey/fast``: 1,024 tokens, both formats, one key, 5 trials, 8 layers (minutes on a CPU).
* ``passkey/lab``: 1,024 and 2,048 tokens, both formats, one key, 20 trials, 8 / 15 / 22 layers (about two
  hours on the 2-core CPU).
* ``passkey/full``: the issue's probe: 1k-8k tokens, one and three keys, 20 trials (a GPU job: 8k prompts cost
  a minute each on the CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import pathlib
from typing import Any

import torch

from .._checks import check_int
from ..convert.passkey import FORMATS, plain_source, probe_retrieval, readout_shut
from ..convert.probe import window_nll
from ..convert.spec import parse_variant
from ..convert.study import converted, shipped_mixers
from ..echokv.model import calibration_text, load_smollm2, text_windows
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from ..pretrained import results
from ..stats import paired_ci
from .command import Command, Option
from .common import check_int_list, finish, pick, resolve, write_summary

__all__ = ["COMMAND", "PassKeyCell", "PassKeyRecipe", "PICK", "RECIPES", "cells", "keeps", "passkey_cell", "run",
           "summarize"]

SCALE = "smollm2"
KINDS = ("original", "mixer", "window", "shut")  # the model a cell reads with
HELDOUT = "heldout"  # a cell's fmt when it reads held-out text for perplexity, not pass-key prompts
SCORED = 128  # held-out tokens scored after each window's context


@dataclasses.dataclass(frozen=True)
class PassKeyRecipe:
    """A retrieval study: prompt cells (``formats`` x ``keys`` x ``lengths``, ``trials`` prompts each) read by
    the original model and, for each of ``variants`` at each of ``counts`` converted layers, by the mixer and
    its controls. ``seed`` fixes the prompts (the same for every model). With ``ppl_windows > 0`` every model
    but the shut controls also reads that many held-out windows (:data:`HELDOUT`): ``ppl_context`` tokens, then
    :data:`SCORED` tokens scored (next-token NLL), the same windows for every model."""

    name: str
    description: str
    formats: tuple[str, ...] = FORMATS
    keys: tuple[int, ...] = (1,)
    lengths: tuple[int, ...] = (1024,)
    trials: int = 20
    variants: tuple[str, ...] = ("window+ska:K1", "window+linear:K0")
    counts: tuple[int, ...] = (8,)
    seed: int = 0
    scale: str = SCALE
    ppl_windows: int = 0
    ppl_context: int = 512

    def __post_init__(self) -> None:
        check_int("ppl_windows", self.ppl_windows, min_value=0)
        check_int("ppl_context", self.ppl_context, min_value=SCORED)
        for f in self.formats:
            if f not in FORMATS:
                raise BadArgumentError(f"formats must be drawn from {list(FORMATS)}, got {list(self.formats)}")
        object.__setattr__(self, "formats", tuple(self.formats))
        if isinstance(self.variants, str) or not self.variants:
            raise BadArgumentError(f"variants must be a non-empty list of mixer names, got {self.variants!r}")
        object.__setattr__(self, "variants", tuple(self.variants))
        object.__setattr__(self, "keys", check_int_list("keys", list(self.keys), 1))
        object.__setattr__(self, "lengths", check_int_list("lengths", list(self.lengths), 64))
        object.__setattr__(self, "counts", check_int_list("counts", list(self.counts), 1))
        check_int("trials", self.trials, min_value=1)
        check_int("seed", self.seed, min_value=0)
        for v in self.variants:
            parse_variant(v)  # a bad name raises, saying what is expected
            if v.split(":")[0] == "window":
                raise BadArgumentError("variants: the window alone is every mixer's control, not a variant")
        if self.scale != SCALE:
            raise BadArgumentError(f"scale must be {SCALE!r} (the study reads SmolLM2), got {self.scale!r}")


RECIPES: dict[str, PassKeyRecipe] = {r.name: r for r in (
    PassKeyRecipe("passkey/fast", "1,024 tokens, chat and plain, one key, 5 trials, 8 converted layers", trials=5),
    PassKeyRecipe("passkey/lab", "1,024 and 2,048 tokens, chat and plain, one key, 20 trials, 8 / 15 / 22 layers",
                 lengths=(1024, 2048), counts=(8, 15, 22)),
    PassKeyRecipe("passkey/full", "1k-8k tokens, chat and plain, one and three keys, 20 trials, 8 / 15 / 22 layers "
                 "(a GPU job)", keys=(1, 3), lengths=(1024, 2048, 4096, 8192), counts=(8, 15, 22)),
)}
PICK = {(SCALE, True): "passkey/fast", (SCALE, False): "passkey/lab"}

COMMAND = Command("passkey", "which part of a converted SmolLM2 carries the pass key: mixers against their controls",
                  "runs/passkey", (
    Option("--trials", "prompts per cell (the recipe's)", "positive_int"),
    Option("--formats", "prompt formats, chat and/or plain (the recipe's)", "str", nargs="+"),
    Option("--lengths", "prompt lengths in tokens (the recipe's)", "positive_int", nargs="+"),
    Option("--counts", "converted layers (the recipe's)", "positive_int", nargs="+"),
    Option("--ppl-windows", "held-out windows each model's perplexity is read on (0: none; the recipe's)", "nonneg_int"),
    Option("--ppl-context", "tokens before the scored 128 of each held-out window (the recipe's)", "positive_int"),
    Option("--variants", "mixers, e.g. window+ska:K1 window+ska:K1:S16 (':S<n>': a sparse cache of n pairs)", "str",
           nargs="+"),
), scales=(SCALE,))


def recipe_for(scale: str = SCALE, fast: bool = True) -> PassKeyRecipe:
    """The recipe the CLI's ``--scale`` and ``--fast`` pick (``PICK``)."""
    return pick("passkey", RECIPES, PICK, scale, fast)


@dataclasses.dataclass(frozen=True)
class PassKeyCell(Cell):
    """One prompt cell read by one model: ``kind`` (one of ``KINDS``), the ``variant`` and ``layers`` converted
    (none for the original), the prompt ``fmt``, ``keys``, ``length`` and ``trials``, and the prompts' ``seed``."""

    experiment = "passkey"
    kind: str
    variant: str
    layers: list
    fmt: str
    keys: int
    length: int
    trials: int
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kind not in KINDS:
            raise BadArgumentError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if (self.kind == "original") != (not self.layers):
            raise BadArgumentError("layers: the original model converts none, every other kind some")


def _order() -> list[int]:
    """The shipped conversion study's greedy cost order of the layers (cheapest to convert first)."""
    return list(results("convert")["order"])


def cells(recipe: PassKeyRecipe) -> list[PassKeyCell]:
    """The original model's cells first, then for each count and variant: the mixer, then its controls (the
    window alone once per count; the readout shut for the SKA mixers)."""
    prompts = [(f, k, n) for f in recipe.formats for k in recipe.keys for n in recipe.lengths]
    cell = lambda kind, variant, layers, p: PassKeyCell(kind, variant, layers, *p, recipe.trials, recipe.seed)  # noqa: E731
    held = [PassKeyCell("original", "", [], HELDOUT, 0, recipe.ppl_context, recipe.ppl_windows, recipe.seed)]
    out = [cell("original", "", [], p) for p in prompts]
    order = _order()
    for count in recipe.counts:
        layers = sorted(order[:count])
        windows = list(dict.fromkeys(["window", *(window_control(v) for v in recipe.variants)]))
        out += [cell("window", w, layers, p) for w in windows for p in prompts]
        held += [PassKeyCell("window", w, layers, HELDOUT, 0, recipe.ppl_context, recipe.ppl_windows, recipe.seed)
                 for w in windows]
        for v in recipe.variants:
            out += [cell("mixer", v, layers, p) for p in prompts]
            held.append(PassKeyCell("mixer", v, layers, HELDOUT, 0, recipe.ppl_context, recipe.ppl_windows, recipe.seed))
            if ("ska" in v or ":S" in v) and ":W" not in v:  # a longer-window variant is itself a control
                out += [cell("shut", v, layers, p) for p in prompts]
    return out + (held if recipe.ppl_windows else [])


def window_control(variant: str) -> str:
    """The window-alone control of a mixer: the window over as many exact tokens as the mixer reads, its window
    plus its sparse cache (``"window+ska:K1"`` -> ``"window"``; ``"window+ska:K1:S16"`` and
    ``"window+ska:K1:W80"`` with the shipped W = 64 -> ``"window:W80"``). A cached mixer's bytes spent on a
    longer window *beside the statistics* is another mixer, run as its own variant (``"window+ska:K1:W80"``: a
    cached pair costs what a window row and its waiting key features cost)."""
    shipped = results("convert")["config"]["window"]
    tags = variant.split(":")[1:]
    window = next((int(t[1:]) for t in tags if t.startswith("W")), shipped)
    tokens = window + parse_variant(variant).sparse
    return "window" if tokens == shipped else f"window:W{tokens}"


@functools.lru_cache(maxsize=1)
def _model():
    model, tok = load_smollm2()
    return model, tok, plain_source(tok)


def _heldout_nll(model, tok, cell: PassKeyCell) -> dict[str, Any]:
    """Next-token NLL of the :data:`SCORED` tokens after each held-out window's ``cell.length`` tokens."""
    ids = text_windows(tok, calibration_text("heldout"), cell.length + SCORED, cell.trials)
    nll = window_nll(model, ids, cell.length, batch_size=1)
    return {"nll": nll, "mean_nll": sum(nll) / len(nll), "windows": len(nll), "context": cell.length}


def passkey_cell(cell: PassKeyCell) -> dict[str, Any]:
    """Read ``cell.trials`` prompts with the cell's model: ``{"correct", "trials", "ci95", "tokens", "answers",
    "keys"}`` (``answers``: the key read from each answer, None for none; ``keys``: the keys asked for); a
    held-out cell (``fmt == HELDOUT``) gives :func:`_heldout_nll`'s result instead."""
    model, tok, source = _model()

    def read() -> dict[str, Any]:
        if cell.fmt == HELDOUT:
            return _heldout_nll(model, tok, cell)
        return probe_retrieval(model, tok, [cell.length], cell.trials, fmt=cell.fmt, keys=cell.keys, seed=cell.seed,
                               source_ids=source)[str(cell.length)]

    torch.manual_seed(0)
    if cell.kind == "original":
        return read()
    mixers = shipped_mixers(model, cell.variant, cell.layers)
    with converted(model, mixers), (readout_shut(mixers) if cell.kind == "shut" else contextlib.nullcontext()):
        return read()


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven between ``wins`` and ``losses``
    if either side were equally likely (1.0 when there is no disagreement)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def keeps(mixer: dict, controls: list[dict]) -> dict[str, Any]:
    """Whether a mixer keeps the needle against its controls on the same prompts (cell results with ``answers``
    and ``keys``): for each control, the prompts only the mixer answered (``wins``), only the control answered
    (``losses``) and the sign test's p; ``keeps`` when the mixer wins against every control with p < 0.05."""
    for c in controls:
        if c["keys"] != mixer["keys"]:
            raise BadArgumentError("controls must read the same prompts as the mixer (their keys differ)")
    right = lambda r: [a == k for a, k in zip(r["answers"], r["keys"])]  # noqa: E731
    m = right(mixer)
    tests = []
    for c in controls:
        cr = right(c)
        wins = sum(a and not b for a, b in zip(m, cr))
        losses = sum(b and not a for a, b in zip(m, cr))
        tests.append({"wins": wins, "losses": losses, "p": sign_test(wins, losses)})
    return {"against": tests, "keeps": bool(tests) and all(t["wins"] > t["losses"] and t["p"] < 0.05 for t in tests)}


def _row(r: dict[str, Any]) -> dict[str, Any]:
    s, res = r["spec"], r["result"] or {}
    return {"kind": s["kind"], "variant": s["variant"], "count": len(s["layers"]), "fmt": s["fmt"], "keys": s["keys"],
            "length": s["length"], **{k: res.get(k) for k in ("correct", "trials", "ci95", "tokens")}}


def summarize(recipe: PassKeyRecipe, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``: every successful cell's rate (the original's first); ``verdicts``: for each mixer cell, its
    rate beside its controls' and :func:`keeps`' test."""
    ok = [r for r in records if not r.get("error")]
    held = [r for r in ok if r["spec"]["fmt"] == HELDOUT]
    ok = [r for r in ok if r["spec"]["fmt"] != HELDOUT]
    by = {(r["spec"]["kind"], r["spec"]["variant"], len(r["spec"]["layers"]), r["spec"]["fmt"], r["spec"]["keys"],
           r["spec"]["length"]): r["result"] for r in ok}
    verdicts = []
    for (kind, variant, count, fmt, keys, length), res in by.items():
        if kind != "mixer":
            continue
        controls = {"window": by.get(("window", window_control(variant), count, fmt, keys, length)),
                    "shut": by.get(("shut", variant, count, fmt, keys, length))}
        controls = {k: v for k, v in controls.items() if v is not None}
        test = keeps(res, list(controls.values()))
        verdicts.append({"variant": variant, "count": count, "fmt": fmt, "keys": keys, "length": length,
                         "rate": res["correct"] / res["trials"],
                         **{f"{k}_rate": v["correct"] / v["trials"] for k, v in controls.items()},
                         "controls": list(controls), **test})
    return {"recipe": recipe.name, "config": dataclasses.asdict(recipe), "rows": [_row(r) for r in ok],
            "verdicts": verdicts, "perplexity": _perplexity(held), "failed": sum(bool(r.get("error")) for r in records)}


def _perplexity(held: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's held-out perplexity against the original's on the same windows: the ratio
    ``exp(mean NLL - original's)`` and the paired interval of the NLL difference (nats/token)."""
    base = {r["spec"]["length"]: r["result"] for r in held if r["spec"]["kind"] == "original"}
    out = []
    for r in held:
        s, res = r["spec"], r["result"]
        ref = base.get(s["length"])
        if ref is None or len(ref["nll"]) != len(res["nll"]):
            continue
        d, lo, hi = paired_ci(res["nll"], ref["nll"]) if s["kind"] != "original" else (0.0, 0.0, 0.0)
        out.append({"kind": s["kind"], "variant": s["variant"], "count": len(s["layers"]), "context": s["length"],
                    "windows": res["windows"], "ppl": math.exp(res["mean_nll"]), "ratio": math.exp(d),
                    "dnll": d, "lo": lo, "hi": hi})
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The rows and verdicts as markdown tables."""
    lines = ["| model | layers | format | keys | tokens | correct | 95% interval |", "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        name = "original" if r["kind"] == "original" else (r["variant"] + (" (readout shut)" if r["kind"] == "shut" else ""))
        lo, hi = r["ci95"]
        lines.append(f"| {name} | {r['count']} | {r['fmt']} | {r['keys']} | {r['length']} | "
                     f"{r['correct']}/{r['trials']} | [{lo:.2f}, {hi:.2f}] |")
    lines += ["", "| mixer | layers | format | keys | tokens | mixer | window alone (W + S tokens) | readout shut | keeps the needle |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in summary["verdicts"]:
        plain_linear = v["variant"].startswith("window+linear") and ":S" not in v["variant"]
        shut = f"{v['shut_rate']:.2f}" if "shut_rate" in v else "(= window)" if plain_linear else "not run"
        lines.append(f"| {v['variant']} | {v['count']} | {v['fmt']} | {v['keys']} | {v['length']} | {v['rate']:.2f} | "
                     f"{v.get('window_rate', float('nan')):.2f} | {shut} | {'yes' if v['keeps'] else 'no'} |")
    if summary.get("perplexity"):
        lines += ["", "| model | layers | context | windows | perplexity | x original | NLL difference [95%] |",
                  "|---|---|---|---|---|---|---|"]
        for q in summary["perplexity"]:
            name = "original" if q["kind"] == "original" else q["variant"]
            lines.append(f"| {name} | {q['count']} | {q['context']} | {q['windows']} | {q['ppl']:.2f} | x{q['ratio']:.3f} | "
                         f"{q['dnll']:+.4f} [{q['lo']:+.4f}, {q['hi']:+.4f}] |")
    return "\n".join(lines)


def _describe(r: dict[str, Any]) -> str:
    """A finished cell on the progress bar: its model and rate, or its held-out perplexity."""
    res = r["result"]
    if "mean_nll" in res:
        return f"{r['spec']['kind']} perplexity {math.exp(res['mean_nll']):.2f}"
    return f"{r['spec']['kind']} {res['correct']}/{res['trials']}"


def run(recipe: str | PassKeyRecipe = "passkey/fast", out_dir: str | pathlib.Path = "runs/passkey", *,
        grid: GridOptions | None = None, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run a pass-key recipe: one grid cell per (model, prompt cell) (:func:`passkey_cell`), resumable in
    ``out_dir``; writes ``records.jsonl``, ``passkey.json`` and ``passkey.md``. Returns :func:`summarize`'s summary;
    raises :class:`~echo_tutor.grid.GridError` (after writing the rest) if some cells failed."""
    recipe = resolve(RECIPES, PassKeyRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    records = run_grid(cells(recipe), passkey_cell, out_dir, grid, progress=progress,
                       describe=_describe)
    summary = summarize(recipe, records)
    write_summary(out_dir, "passkey", summary, format_summary(summary), progress)
    finish(records, out_dir)
    return summary
