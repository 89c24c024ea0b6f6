"""A pure Mamba-2 trained to recall at short gaps, its memory cliff, and the cliff predicted from its own
measured decay (lab 03, section 4; ``docs/results.md``, "A trained pure Mamba-2 cliff").

Recipes (``RECIPES``; the CLI's ``--fast`` picks ``ssm_cliff/fast``, no flag ``ssm_cliff/lab``):

* ``ssm_cliff/lab``: the run that made the shipped ``ssm-recall`` (two Mamba-2 blocks at d = 128, 4 heads,
  N = 32; MQAR-gap, 2 pairs, gaps 0-64; 6,000 steps or 14 minutes), for seeds 0, 1 and 2: seed 0 is the
  shipped checkpoint, the three are its record's ``seeds``. About half an hour of one core per seed.
  ``--save-models`` keeps the models, and ``scripts/ship_ssm_recall.py`` ships one.
* ``ssm_cliff/fast`` (``--fast``): the lab-scale ``ssm`` (d = 64, 2 heads, N = 16) on 1 pair, 3,000 steps or
  2.5 minutes (run 2 of the results table), fewer gaps and examples: a few minutes on a CPU.
* ``ssm_cliff/smoke``: a tiny model, 3 steps, a few gaps and examples (seconds; the tests).

One grid cell per seed (:func:`ssm_cliff_cell`): build the lab-scale ``ssm`` with the recipe's overrides and
train it on MQAR-gap (``gaps``, then optionally ``then_gaps``: a curriculum) within ``time_budget_s``, or
measure a saved checkpoint instead (``run(..., load=FILE)``, ``--load``); then, in this order, each head's
decay (the retention ``R_h(g)`` of the last value, and ``R*(g)``, the most retentive head's), the four cliff
predictions fixed before any long-gap accuracy is measured (``experiments.ssm_cliff_rules``), the accuracy
by gap and the measured cliff (where accuracy falls half-way from its level at ``ref_gap`` to chance), and a
causal check (the decay of one head, and of all, held at 1 over the gap at ``check_gaps``).

``ssm_cliff.json``: the recipe, one record per seed (the cell's arguments, the training stages, the decay,
the predictions, the accuracies and the causal check), and across seeds the measured cliff and each rule's
predicted cliff with a 95% interval (``stats.mean_ci``: Student's t below 10 seeds).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
import types
from typing import Any

import torch

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..grid import Cell, GridOptions, run_grid
from ..models import build, load as load_model
from ..train import TrainConfig, evaluate, train
from .command import Command, Option
from .common import check_int_list, finish, pick, plain, resolve
from .ssm_cliff_rules import (TAU, after_write, crossing, edited_decay, predict, predict_tolerance, recall_task,
                              retention, retention_crossing, tolerance, transplant)
from .stats import mean_ci

__all__ = ["COMMAND", "SSMCliffCell", "SSMCliffRecipe", "RECIPES", "PICK", "EVAL_GAPS", "RULES", "recipe_for",
           "cells", "ssm_cliff_cell", "train_stages", "measure", "summarize", "run"]

EVAL_GAPS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
RULES = {"cliff_pred": "rule 1", "cliff_pred_rule2": "rule 2", "cliff_pred_rule3": "rule 3",
         "cliff_pred_rule4": "rule 4"}  # each rule's predicted cliff, by its key in a record


@dataclasses.dataclass(frozen=True)
class SSMCliffRecipe:
    """One SSM-cliff study: the model (the lab-scale ``ssm`` with ``d_model``, ``d_state``, ``heads``,
    ``expand``; Mamba-2 headdim ``expand * d_model / heads``), its training on MQAR-gap (``vocab``, ``pairs``:
    one or a mixture, ``gaps``: the mixture; ``steps`` steps, then ``then_steps`` on ``then_gaps`` if both are
    given; ``time_budget_s`` seconds of training in all, both stages; the accuracy at ``ref_gap`` probed on
    ``probe_examples`` every ``probe_every`` steps), one cell per seed of ``seeds``, and the measurement:
    ``eval_pairs`` pairs (None: the most trained), ``eval_gaps`` (increasing) with ``eval_examples`` a gap,
    rule 1's ``ref_gap`` and rule 2's ``tol_gap`` (None: the longest trained gap), both among ``eval_gaps``,
    and the causal check at ``check_gaps`` (None: the three longest evaluation gaps >= 256) on
    ``check_examples``. Fields and defaults are the old ``scripts/train_ssm_cliff.py``'s arguments
    (``--minutes 15`` is ``time_budget_s=900``)."""

    name: str
    description: str
    scale: str = "lab"
    pairs: tuple[int, ...] = (1, 2)
    gaps: tuple[int, ...] = (0, 4, 8, 16, 32, 64)
    steps: int = 3000
    time_budget_s: float = 900.0
    then_gaps: tuple[int, ...] | None = None
    then_steps: int = 0
    show_values: bool = False
    vocab: int = 128
    d_model: int = 64
    d_state: int = 16
    heads: int = 2
    expand: int = 2
    batch_size: int = 16
    lr: float = 3e-3
    seeds: tuple[int, ...] = (0,)
    probe_every: int = 250
    probe_examples: int = 128
    eval_pairs: int | None = None
    eval_gaps: tuple[int, ...] = EVAL_GAPS
    eval_examples: int = 256
    ref_gap: int = 16
    tol_gap: int | None = None
    check_gaps: tuple[int, ...] | None = None
    check_examples: int = 128

    def __post_init__(self) -> None:
        if self.scale != "lab":
            raise BadArgumentError(f"scale must be 'lab' (the study trains the lab-scale ssm), got {self.scale!r}")
        for field, low in (("pairs", 1), ("gaps", 0), ("seeds", 0), ("eval_gaps", 0)):
            object.__setattr__(self, field, check_int_list(field, getattr(self, field), low))
        for field in ("then_gaps", "check_gaps"):
            if getattr(self, field) is not None:
                object.__setattr__(self, field, check_int_list(field, getattr(self, field), 0))
        for field, low in (("steps", 1), ("then_steps", 0), ("vocab", 4), ("d_model", 1), ("d_state", 1),
                           ("heads", 1), ("expand", 1), ("batch_size", 1), ("probe_every", 1),
                           ("probe_examples", 1), ("eval_examples", 1), ("ref_gap", 0), ("check_examples", 1)):
            check_int(field, getattr(self, field), min_value=low)
        for field in ("eval_pairs", "tol_gap"):
            if getattr(self, field) is not None:
                check_int(field, getattr(self, field), min_value=1 if field == "eval_pairs" else 0)
        check_positive("time_budget_s", self.time_budget_s)
        check_positive("lr", self.lr)
        if not isinstance(self.show_values, bool):
            raise BadArgumentError(f"show_values must be True or False, got {self.show_values!r}")
        self._check_gaps()

    def _check_gaps(self) -> None:
        if len(set(self.seeds)) != len(self.seeds):
            raise BadArgumentError(f"seeds must be distinct, got {list(self.seeds)}")
        if any(g1 <= g0 for g0, g1 in zip(self.eval_gaps, self.eval_gaps[1:])):
            raise BadArgumentError(f"eval_gaps must be increasing, got {list(self.eval_gaps)}")
        if self.ref_gap not in self.eval_gaps:
            raise BadArgumentError(f"ref_gap must be one of eval_gaps {list(self.eval_gaps)}, got {self.ref_gap}")
        tol = self.resolved()["tol_gap"]
        if tol not in self.eval_gaps or tol == self.eval_gaps[-1]:
            raise BadArgumentError(f"tol_gap (default: the longest trained gap) must be one of eval_gaps "
                                   f"{list(self.eval_gaps)} and not the last, got {tol}")

    def resolved(self) -> dict[str, Any]:
        """The measurement's arguments as a cell runs them: every field but name, description, scale and
        seeds, with ``eval_pairs``, ``tol_gap`` and ``check_gaps`` resolved (lists, JSON-ready)."""
        skip = ("name", "description", "scale", "seeds")
        out = {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}
        out["eval_pairs"] = self.eval_pairs or max(self.pairs)
        out["tol_gap"] = self.tol_gap if self.tol_gap is not None else max(self.gaps + (self.then_gaps or ()))
        if self.check_gaps is None:
            out["check_gaps"] = [g for g in self.eval_gaps if g >= 256][-3:]
        return out


RECIPES: dict[str, SSMCliffRecipe] = {r.name: r for r in (
    SSMCliffRecipe("ssm_cliff/lab", "the shipped ssm-recall's run (d=128, 4 heads, N=32; 2 pairs, gaps 0-64, 6,000 "
                   "steps or 14 min), seeds 0-2 (about half an hour of one core a seed)", pairs=(2,), steps=6000,
                   time_budget_s=840.0, d_model=128, d_state=32, heads=4, seeds=(0, 1, 2), eval_examples=128,
                   check_gaps=(4096,)),
    SSMCliffRecipe("ssm_cliff/fast", "the lab-scale ssm (d=64) on 1 pair, 3,000 steps or 2.5 min, 64 examples a gap "
                   "(a few minutes on a CPU)", pairs=(1,), time_budget_s=150.0, seeds=(1,),
                   eval_gaps=EVAL_GAPS[:-1], eval_examples=64, check_gaps=(2048,), check_examples=32),
    SSMCliffRecipe("ssm_cliff/smoke", "a tiny model, 3 steps, a few gaps and examples (seconds: the tests)",
                   pairs=(1,), gaps=(0, 4), steps=3, time_budget_s=60.0, vocab=32, d_model=16, d_state=8,
                   batch_size=4, seeds=(0, 1), probe_every=3, probe_examples=8, eval_gaps=(0, 4, 8, 16),
                   eval_examples=8, ref_gap=4, check_gaps=(16,), check_examples=4),
)}
PICK = {("lab", False): "ssm_cliff/lab", ("lab", True): "ssm_cliff/fast"}

COMMAND = Command("ssm-cliff", "a pure Mamba-2 trained to recall: its memory cliff, predicted from its decay",
                  "runs/ssm_cliff", (
    Option("--seeds", "seeds, one cell each (the recipe's)", "nonneg_int", nargs="+"),
    Option("--steps", "training steps of the first stage (the recipe's)", "positive_int"),
    Option("--time-budget-s", "seconds of training, both stages (the recipe's)", "positive_float"),
    Option("--eval-gaps", "evaluation gaps, increasing (the recipe's)", "nonneg_int", nargs="+"),
    Option("--eval-examples", "examples a gap (the recipe's)", "positive_int"),
    Option("--check-gaps", "gaps of the causal check (the recipe's)", "nonneg_int", nargs="+"),
    Option("--check-examples", "examples a gap of the causal check (the recipe's)", "positive_int"),
    Option("--save-models", "save each trained model as <out-dir>/models/seed<k>.pt (float16)", to="run",
           flag_only=True),
    Option("--load", "measure this checkpoint instead of training (one cell, the first seed)", to="run"),
), finished="ssm-cliff", scales=("lab",))


def recipe_for(scale: str = "lab", fast: bool = False) -> SSMCliffRecipe:
    """The recipe the CLI's ``--scale`` and ``--fast`` pick (``PICK``)."""
    return pick("ssm_cliff", RECIPES, PICK, scale, fast)


def _file_id(path: str | pathlib.Path) -> dict[str, str]:
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadArgumentError(f"load: {path} is not a file (expected a checkpoint saved by HybridLM.save)")
    return {"file": str(p.resolve()), "sha1": hashlib.sha1(p.read_bytes()).hexdigest()[:16]}


@dataclasses.dataclass(frozen=True)
class SSMCliffCell(Cell):
    """One seed of the study (:func:`ssm_cliff_cell`): ``seed``; ``args``, the measurement's arguments
    (``SSMCliffRecipe.resolved()``); ``load``, ``{"file": "path.pt", "sha1": "<16 hex>"}`` to measure that
    checkpoint instead of training (None: train); ``save_as``, where the trained model is saved (an absolute
    path, float16 as the shipped checkpoints; None: not saved)."""

    experiment = "ssm_cliff"
    seed: int
    args: dict[str, Any]
    load: dict[str, str] | None = None
    save_as: str | None = None


def cells(recipe: SSMCliffRecipe, save_dir: pathlib.Path | None = None,
          load: str | pathlib.Path | None = None) -> list[SSMCliffCell]:
    """The grid's cells, one per seed (see :func:`ssm_cliff_cell`); with ``save_dir`` each saves its model
    there as ``seed<k>.pt``. With ``load`` one cell (the first seed) measures that checkpoint instead."""
    args = recipe.resolved()
    if load is not None:
        return [SSMCliffCell(recipe.seeds[0], args, load=_file_id(load))]
    return [SSMCliffCell(s, args, save_as=str((save_dir / f"seed{s}.pt").resolve()) if save_dir else None)
            for s in recipe.seeds]


def train_stages(model, a) -> list[dict[str, Any]]:
    """Train ``model`` on MQAR-gap as the cell's arguments ``a`` say (``gaps``, then ``then_gaps``), within
    ``a.time_budget_s`` in all; one log per stage (task, steps, seconds, evaluations, a thinned history)."""
    one = lambda xs: xs[0] if len(xs) == 1 else xs  # noqa: E731
    stages = [(a.gaps, a.steps)] + ([(a.then_gaps, a.then_steps)] if a.then_gaps and a.then_steps else [])
    budget, log = a.time_budget_s, []
    for k, (gaps, steps) in enumerate(stages):
        task = recall_task(a, one(a.pairs), one(gaps))
        probe = recall_task(a, a.eval_pairs, a.ref_gap)
        config = TrainConfig(steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed + k, eval_every=a.probe_every,
                             eval_examples=a.probe_examples, time_budget_s=budget)
        res = train(model, task, config, eval_task=probe, progress=False,
                    callback=lambda r: print(f"  seed {a.seed} step {r['step']} loss {r['loss']:.3f} eval@{a.ref_gap} "
                                             f"{r['eval_acc']:.3f} t {r['time_s']:.0f}s", flush=True))
        budget -= res.time_s
        log.append({"task": task.describe(), "steps": res.steps_done, "time_s": round(res.time_s, 1),
                    "evals": res.evals, "history": res.history[:: max(1, len(res.history) // 100)]})
        if budget <= 0:
            break
    return log


def _causal_check(model, a, heads, acc) -> list[dict[str, Any]]:
    """The accuracy at each of ``a.check_gaps`` with the decay of one head, and of all, held at 1 over the gap."""
    n, check = a.eval_pairs, []
    for g in a.check_gaps:
        for sel in [[hh] for hh in heads] + [heads]:
            with edited_decay(model, sel, after_write(model, n), 2 * n + g):
                check.append({"gap": g, "frozen": [list(hh) for hh in sel], "acc": acc(g, a.check_examples)})
    return check


def measure(model, a) -> dict[str, Any]:
    """Decay, the four predictions (from the decay and accuracies at trained gaps only), accuracy by gap and
    the measured cliff, and the causal check, as the old script measured them (its JSON's keys)."""
    gaps, chance = a.eval_gaps, 2 / a.vocab
    acc = lambda g, n=a.eval_examples: evaluate(model, recall_task(a, a.eval_pairs, g), n, batch_size=16)  # noqa: E731
    ret = {g: retention(model, a, g) for g in gaps}
    best = [max(max(hs) for hs in ret[g]) for g in gaps]
    heads = [(b, h) for b, hs in enumerate(ret[gaps[0]]) for h in range(len(hs))]
    acc_ref = acc(a.ref_gap)
    pred = predict(gaps, best, a.ref_gap, acc_ref, chance)
    tol = tolerance(model, a, heads, acc, chance)
    cliff2 = predict_tolerance(gaps, best, a.tol_gap, tol["rho_half"])
    cliff3 = retention_crossing(gaps, best, TAU)
    acc4 = transplant(model, a, heads, ret, acc)
    accs = [acc_ref if g == a.ref_gap else acc(g) for g in gaps]  # measured only now, after the predictions
    level = chance + (acc_ref - chance) / 2
    g4 = [g for g in gaps if g >= a.tol_gap]
    cliff4 = crossing(g4, [accs[gaps.index(a.tol_gap)]] + [acc4[g] for g in g4[1:]], level)
    return {
        "eval_task": recall_task(a, a.eval_pairs, "G").describe(), "chance": chance, "gaps": list(gaps),
        "acc": accs, "ref_gap": a.ref_gap, "acc_ref": acc_ref, "cliff_measured": crossing(gaps, accs, level),
        "retention": {str(g): ret[g] for g in gaps}, "best_retention": best, **pred,
        "rule": "acc_pred(g) = c + (acc_ref - c) * min(1, R*(g)/R*(g_ref)); cliff where R*(g)/R*(g_ref) = 1/2",
        "tolerance": tol, "cliff_pred_rule2": cliff2,
        "rule2": "cliff where R*(g)/R*(g_tol) = rho_half, the retention factor that halves accuracy at g_tol",
        "acc_pred_rule4": {str(g): v for g, v in acc4.items()}, "cliff_pred_rule4": cliff4,
        "rule4": "acc(g) = accuracy at g_tol with each head's retention after the write times R_h(g)/R_h(g_tol)",
        "cliff_pred_rule3": cliff3, "rule3": f"cliff where R*(g) = {TAU} (calibrated on the first two models)",
        "frozen_decay_check": _causal_check(model, a, heads, acc)}


def ssm_cliff_cell(cell: SSMCliffCell) -> dict[str, Any]:
    """One seed of the study (:class:`SSMCliffCell`, built by :func:`cells`), on the CPU (training moves the
    model to CUDA if there is one). Returns ``config`` (the model's), ``stages`` (each training stage's log,
    or ``[{"loaded": file}]``), ``wall_s`` and :func:`measure`'s record.
    """
    a = types.SimpleNamespace(**cell.args, seed=cell.seed)
    torch.manual_seed(a.seed)
    if cell.load:
        here = _file_id(cell.load["file"])
        if here != cell.load:
            raise RuntimeError(f"load: {here} is not the checkpoint the grid was built for, {cell.load}")
        model, stages = load_model(cell.load["file"]), [{"loaded": cell.load["file"]}]
    else:
        model = build("ssm", vocab_size=a.vocab, scale="lab", d_model=a.d_model, d_state=a.d_state, n_heads=a.heads,
                      mixer_kwargs={"mamba2": {"expand": a.expand, "headdim": max(1, a.expand * a.d_model // a.heads)}})
    t0 = time.time()
    if not cell.load:
        stages = train_stages(model, a)
        if cell.save_as:
            pathlib.Path(cell.save_as).parent.mkdir(parents=True, exist_ok=True)
            model.save(cell.save_as, dtype=torch.float16)
    model.eval()
    out = measure(model, a)
    return {"config": model.config.to_dict(), "stages": stages, "wall_s": round(time.time() - t0, 1), **out}


def _interval(xs: list[float | None]) -> dict[str, Any]:
    """The values, how many are finite, and the mean of those with its 95% interval (None where unbounded)."""
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    out: dict[str, Any] = {"values": xs, "n": len(vals), "mean": None, "lo": None, "hi": None}
    if vals:
        m, lo, hi = mean_ci(vals)
        out.update(mean=m, lo=lo if math.isfinite(lo) else None, hi=hi if math.isfinite(hi) else None)
    return out


def summarize(recipe: SSMCliffRecipe, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """``recipe`` (its fields), ``seeds`` (one record per successful cell: ``seed``, ``args``, ``load`` and the
    cell's result) and ``across_seeds``: the measured cliff and each rule's predicted cliff (``values`` per
    seed, ``mean`` and the 95% interval ``lo``-``hi`` over the finite ones, ``stats.mean_ci``: Student's t
    below 10 seeds), each rule also as the ratio of predicted to measured."""
    seeds = [{"seed": r["spec"]["seed"], "args": {**r["spec"]["args"], "seed": r["spec"]["seed"]},
              "load": r["spec"]["load"], **r["result"]} for r in grid if not r["error"]]
    measured = [s["cliff_measured"] for s in seeds]
    across: dict[str, Any] = {"cliff_measured": _interval(measured)}
    for key, rule in RULES.items():
        pred = [s[key] for s in seeds]
        ratio = [p / m if p is not None and m else None for p, m in zip(pred, measured)]
        across[key] = {"rule": rule, **_interval(pred), "ratio_to_measured": _interval(ratio)}
    return {"recipe": {f.name: plain(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)},
            "seeds": seeds, "across_seeds": across,
            "interval": "95%, stats.mean_ci over the seeds with a finite value (Student's t below 10)"}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _print_summary(summary: dict[str, Any]) -> None:
    for s in summary["seeds"]:
        print(f"seed {s['seed']}: acc by gap " + ", ".join(f"{g}: {v:.2f}" for g, v in zip(s["gaps"], s["acc"]))
              + f"; measured cliff {_fmt(s['cliff_measured'])}; "
              + "; ".join(f"{rule} {_fmt(s[key])}" for key, rule in RULES.items()), flush=True)
    print("cliff over seeds (mean [95% interval], n finite):")
    for key, v in summary["across_seeds"].items():
        print(f"  {v.get('rule', 'measured'):<9} {_fmt(v['mean'])} [{_fmt(v['lo'])}, {_fmt(v['hi'])}], n={v['n']}")


def run(recipe: str | SSMCliffRecipe = "ssm_cliff/lab", out_dir: str | pathlib.Path = "runs/ssm_cliff", *,
        load: str | pathlib.Path | None = None, save_models: bool = False, grid: GridOptions | None = None,
        progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Run an SSM-cliff recipe; write ``records.jsonl`` and ``ssm_cliff.json`` to ``out_dir``.

    ``recipe``: a name of ``RECIPES`` or an :class:`SSMCliffRecipe`; ``overrides`` replace its fields (e.g.
    ``seeds=(0,), eval_examples=32``). ``load``: measure that checkpoint (one cell) instead of training.
    ``save_models``: each trained model is saved as ``<out_dir>/models/seed<k>.pt`` (float16; on a Ray cluster
    ``out_dir`` must be a shared filesystem). One grid cell per seed (:func:`ssm_cliff_cell`) through
    :func:`echo_tutor.grid.run_grid` with ``grid``; rerunning into the same ``out_dir`` runs only the cells not
    recorded yet. Returns :func:`summarize`'s summary. Raises :class:`~echo_tutor.grid.GridError` (after
    writing the other cells' results) if some cells failed.
    """
    recipe = resolve(RECIPES, SSMCliffRecipe, recipe, overrides)
    out_dir = pathlib.Path(out_dir)
    seed_cells = cells(recipe, out_dir / "models" if save_models else None, load)
    records = run_grid(seed_cells, ssm_cliff_cell, out_dir, grid, progress=progress,
                       describe=lambda r: f"seed={r['spec']['seed']} cliff={_fmt(r['result']['cliff_measured'])}")
    summary = summarize(recipe, records)
    (out_dir / "ssm_cliff.json").write_text(json.dumps(summary, indent=1))
    _print_summary(summary)
    finish(records, out_dir)
    return summary
