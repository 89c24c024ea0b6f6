"""Train a pure Mamba-2 model to recall at short gaps, measure its memory cliff, and predict the cliff from
its own measured decay.

    OMP_NUM_THREADS=1 python scripts/train_ssm_cliff.py --pairs 1 2 --gaps 0 4 8 16 32 64 \\
        --steps 3000 --minutes 15 --threads 1 --out runs/ssm_cliff/ssm-cliff.pt

The model is the lab-scale ``ssm`` (``build("ssm", scale="lab")``: two Mamba-2 blocks, d=64) with the
overrides given (``--d-state``, ``--heads``, ``--expand``, ``--d-model``), trained on MQAR-gap
(``[k1 v1 .. kn vn][gap value-half tokens][queries]``, values hidden) with the gap mixture ``--gaps``, then
optionally a second stage on ``--then-gaps`` (a curriculum). Then, in this order:

1. **Decay.** ``ssm_decay`` on 64 prompts at each evaluation gap g gives every head's per-token factor
   ``exp(A dt_t)``. The last value (position ``2n-1``) reaches the SSM through the causal conv until
   position ``w = 2n-1 + d_conv-1``; the trained models write it there with a large ``dt``, which also
   wipes the state *before* the write. A head's retention of the value at the first query (``2n+g``) is
   therefore ``R_h(g)``, the median over prompts of the product of its factors over positions
   ``w+1 .. 2n+g`` (1 when the query still sees the value through the conv). ``R*(g) = max_h R_h(g)`` over
   every head of every block (the most retentive head).
2. **Four predictions, fixed before any long-gap accuracy is measured**, with chance ``c = 2/V``:

   * rule 1 (stated before the first run): with ``acc_ref`` the accuracy at ``--ref-gap`` (16),
     ``acc_pred(g) = c + (acc_ref - c) * min(1, R*(g) / R*(g_ref))``; the cliff is where that ratio is 1/2.
   * rule 2 (stated after rule 1 failed on the first model): the tolerance is measured at the longest
     *trained* gap ``g_tol`` by an intervention: every head's retention after the write is multiplied by
     ``rho = 2^-k`` (``A dt`` shifted on positions ``w+1 .. 2n+g-1``, writes untouched) and ``rho_half`` is
     where accuracy falls half-way to chance. The cliff is predicted where ``R*(g) / R*(g_tol) = rho_half``
     (log-log between evaluation gaps, beyond them at the last rate).
   * rule 3 (calibrated on the first two models): the cliff is where ``R*(g)`` falls to ``TAU = 0.04``, the
     geometric mean of R* at the measured cliffs of those two models (0.11 and 0.015).
   * rule 4 (stated after rule 2 missed on a model whose memory is spread over several heads): the
     accuracy at gap g is predicted at the trained gap ``g_tol``, with every head's retention after the
     write multiplied by its own measured loss between ``g_tol`` and g, ``min(1, R_h(g) / R_h(g_tol))``:
     the decay of gap g transplanted into a trained-length prompt. The cliff is where that falls half-way.
3. **Accuracy by gap**, and the measured cliff: the gap where accuracy falls below ``c + (acc_ref - c)/2``.
4. **A causal check.** The decay of one head, and of all heads, is set to 1 (``A dt = 0``) after the
   write (positions ``w+1 .. 2n+g-1``; the writes are kept) and the accuracy is measured again at the longest gaps: if the decay
   causes the cliff, this restores recall.

``--load FILE`` skips training and measures a saved model.
Writes the model (``--out``, float16) and ``<out>.json`` (the command, the training history, the decay,
the prediction, the accuracies and the causal check).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import sys
import time

import torch

from echo_tutor.experiments.diagnostics import hold_decay, retention_after
from echo_tutor.models import build, load
from echo_tutor.ssm import Mamba2
from echo_tutor.tasks import make_task
from echo_tutor.train import evaluate, train

EVAL_GAPS = [0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TAU = 0.04  # rule 3's retention threshold: calibrated on the first two models (module doc)


def recall_task(a, pairs, gap):
    return make_task("mqar_gap", vocab_size=a.vocab, num_kv_pairs=pairs, gap=gap, show_values=a.show_values)


def after_write(model, n: int) -> int:
    """The first position after the last one that sees the last value (2n-1) through the causal conv."""
    return 2 * n + model.blocks[0].mixer.d_conv - 1


def retention(model, a, gap: int, examples: int = 64) -> list[list[float]]:
    """``[block][head]``: median over prompts of the product of exp(A dt_t) over positions w+1 .. 2n+gap."""
    x, _ = recall_task(a, a.eval_pairs, gap).sample(examples, 10_000)
    lo, q = after_write(model, a.eval_pairs), 2 * a.eval_pairs + gap
    sizes = [b.mixer.n_heads for b in model.blocks if isinstance(b.mixer, Mamba2)]
    if q < lo:  # the query still sees the value through the conv
        return [[1.0] * n for n in sizes]
    row = retention_after(model, x, lo)[q - lo].tolist()  # every head, block by block
    return [row[sum(sizes[:k]): sum(sizes[:k + 1])] for k in range(len(sizes))]


def crossing(gaps: list[int], ys: list[float], level: float) -> float | None:
    """The first gap where ``ys`` falls below ``level`` (interpolated in log(1 + gap)); None if it never does."""
    for (g0, y0), (g1, y1) in zip(zip(gaps, ys), zip(gaps[1:], ys[1:])):
        if y0 >= level > y1:
            u0, u1 = math.log1p(g0), math.log1p(g1)
            return math.expm1(u0 + (u1 - u0) * (y0 - level) / (y0 - y1))
    return None


def predict(gaps, best: list[float], g_ref: int, acc_ref: float, chance: float) -> dict:
    """The rule of the module doc, from the best head's retention ``best[i]`` at ``gaps[i]``."""
    r_ref = best[gaps.index(g_ref)]
    ratio = [min(1.0, r / r_ref) for r in best]
    cliff = crossing(gaps, ratio, 0.5)
    if cliff is None:  # extrapolate at the per-token rate between g_ref and the longest gap
        rate = (math.log(r_ref) - math.log(max(best[-1], 1e-300))) / (gaps[-1] - g_ref)
        cliff = g_ref + math.log(2) / rate if rate > 0 else math.inf
    return {"ratio": ratio, "acc_pred": [chance + (acc_ref - chance) * r for r in ratio], "cliff_pred": cliff}


@contextlib.contextmanager
def edited_decay(model, heads: list[tuple[int, int]], lo: int, hi: int, scale: float | dict | None = None):
    """``hold_decay`` on the (block, head) pairs at positions ``lo .. hi-1``: ``A dt = 0`` (``scale=None``) or
    the retention over the span times ``scale`` (a dict gives each (block, head) its own factor)."""
    with contextlib.ExitStack() as stack:
        if isinstance(scale, dict):
            for bh in heads:
                stack.enter_context(hold_decay(model, lo, hi, heads=[bh], factor=max(scale[bh], 1e-30)))
        else:
            stack.enter_context(hold_decay(model, lo, hi, heads=heads,
                                           factor=None if scale is None else max(scale, 1e-30)))
        yield


def tolerance(model, a, heads, acc_at, chance: float) -> dict:
    """Rule 2's threshold, measured at the trained gap ``g_tol`` only: the accuracy when the retention of every
    head over the gap is multiplied by rho = 2^-k, and rho_half, where it falls half-way to chance."""
    g, n = a.tol_gap, a.eval_pairs
    lo = after_write(model, n)
    rhos = [2.0 ** -k for k in range(0, 17)]
    accs = []
    for rho in rhos:
        with edited_decay(model, heads, lo, 2 * n + g, rho):
            accs.append(acc_at(g))
        if accs[-1] < chance + (accs[0] - chance) / 4:
            break
    level = chance + (accs[0] - chance) / 2
    logs = [math.log(r) for r in rhos[:len(accs)]]
    half = None
    for (u0, y0), (u1, y1) in zip(zip(logs, accs), zip(logs[1:], accs[1:])):
        if y0 >= level > y1:
            half = math.exp(u0 + (u1 - u0) * (y0 - level) / (y0 - y1))
            break
    return {"tol_gap": g, "rho": rhos[:len(accs)], "acc": accs, "rho_half": half}


def transplant(model, a, heads, ret: dict, acc_at) -> dict:
    """Rule 4: the accuracy at gap g, predicted at the trained gap g_tol with every head's retention after
    the write multiplied by its own measured loss between g_tol and g, ``min(1, R_h(g) / R_h(g_tol))``."""
    g_tol, n = a.tol_gap, a.eval_pairs
    lo = after_write(model, n)
    out = {}
    for g in [g for g in a.eval_gaps if g > g_tol]:
        f = {(b, h): min(1.0, ret[g][b][h] / max(ret[g_tol][b][h], 1e-30)) for b, h in heads}
        with edited_decay(model, heads, lo, 2 * n + g_tol, f):
            out[g] = acc_at(g_tol)
    return out


def retention_crossing(gaps, rel: list[float], level: float) -> float:
    """The gap where the retention ``rel`` (positive, falling) first drops to ``level``: log-log between the
    gaps, beyond the last at the per-token rate between the last two."""
    logs = [math.log(max(r, 1e-300)) for r in rel]
    lv = math.log(level)
    for (g0, y0), (g1, y1) in zip(zip(gaps, logs), zip(gaps[1:], logs[1:])):
        if y0 >= lv > y1:
            u0, u1 = math.log1p(g0), math.log1p(g1)
            return math.expm1(u0 + (u1 - u0) * (y0 - lv) / (y0 - y1))
    rate = (logs[-2] - logs[-1]) / (gaps[-1] - gaps[-2])
    return gaps[-1] + (logs[-1] - lv) / rate if rate > 0 else math.inf


def predict_tolerance(gaps, best: list[float], g_tol: int, rho_half: float | None) -> float | None:
    """Rule 2: the gap (>= g_tol) where the best head's retention relative to g_tol falls to rho_half."""
    if rho_half is None:
        return None
    i = gaps.index(g_tol)
    return retention_crossing(gaps[i:], [r / best[i] for r in best[i:]], rho_half)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, nargs="+", default=[1, 2], help="KV pairs (several: a mixture)")
    p.add_argument("--gaps", type=int, nargs="+", default=[0, 4, 8, 16, 32, 64], help="training gap mixture")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=15.0, help="training budget of the whole run (both stages)")
    p.add_argument("--then-gaps", type=int, nargs="+", default=None, help="second stage's gap mixture")
    p.add_argument("--then-steps", type=int, default=0)
    p.add_argument("--show-values", action="store_true", help="show each query's value after it")
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--heads", type=int, default=2, help="n_heads: Mamba-2 headdim = 2 d / heads")
    p.add_argument("--expand", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-pairs", type=int, default=None, help="pairs of the evaluation (default: the most trained)")
    p.add_argument("--eval-gaps", type=int, nargs="+", default=EVAL_GAPS)
    p.add_argument("--eval-examples", type=int, default=256)
    p.add_argument("--ref-gap", type=int, default=16, help="rule 1's reference gap")
    p.add_argument("--tol-gap", type=int, default=None, help="rule 2's gap (default: the longest trained gap)")
    p.add_argument("--check-gaps", type=int, nargs="+", default=None,
                   help="gaps of the causal check (default: the three longest evaluation gaps >= 256)")
    p.add_argument("--check-examples", type=int, default=128)
    p.add_argument("--load", default=None, help="evaluate this checkpoint instead of training one")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="runs/ssm_cliff/ssm-cliff.pt")
    a = p.parse_args(argv)
    a.eval_pairs = a.eval_pairs or max(a.pairs)
    a.tol_gap = a.tol_gap if a.tol_gap is not None else max(a.gaps + (a.then_gaps or []))
    if a.ref_gap not in a.eval_gaps:
        p.error("--ref-gap must be one of --eval-gaps")
    if a.tol_gap not in a.eval_gaps:
        p.error("--tol-gap (default: the longest trained gap) must be one of --eval-gaps")
    return a


def run_training(model, a) -> list[dict]:
    one = lambda xs: xs[0] if len(xs) == 1 else xs  # noqa: E731
    stages = [(a.gaps, a.steps)] + ([(a.then_gaps, a.then_steps)] if a.then_gaps and a.then_steps else [])
    budget, log = 60 * a.minutes, []
    for k, (gaps, steps) in enumerate(stages):
        task = recall_task(a, one(a.pairs), one(gaps))
        probe = recall_task(a, a.eval_pairs, a.ref_gap)
        res = train(model, task, steps=steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed + k, eval_every=250,
                    eval_examples=128, eval_task=probe, time_budget_s=budget, progress=False,
                    callback=lambda r: print(f"  step {r['step']} loss {r['loss']:.3f} eval@{a.ref_gap} "
                                             f"{r['eval_acc']:.3f} t {r['time_s']:.0f}s", flush=True))
        budget -= res.time_s
        log.append({"task": task.describe(), "steps": res.steps_done, "time_s": round(res.time_s, 1),
                    "evals": res.evals, "history": res.history[:: max(1, len(res.history) // 100)]})
        print(f"stage {k}: {task.describe()}: {res.steps_done} steps, {res.time_s:.0f}s", flush=True)
        if budget <= 0:
            break
    return log


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.load:
        model, stages = load(a.load), [{"loaded": a.load}]
    else:
        model = build("ssm", vocab_size=a.vocab, scale="lab", d_model=a.d_model, d_state=a.d_state, n_heads=a.heads,
                      mixer_kwargs={"mamba2": {"expand": a.expand, "headdim": max(1, a.expand * a.d_model // a.heads)}})
    print(vars(a), model.blocks[0].mixer, flush=True)
    t0 = time.time()
    if not a.load:
        stages = run_training(model, a)
        model.save(out, dtype=torch.float16)
    model.eval()
    gaps, chance = a.eval_gaps, 2 / a.vocab
    acc = lambda g, n=a.eval_examples: evaluate(model, recall_task(a, a.eval_pairs, g), n, batch_size=16)  # noqa: E731
    # 1-2: decay and the two predictions, from the decay and accuracies at trained gaps only
    ret = {g: retention(model, a, g) for g in gaps}
    best = [max(max(hs) for hs in ret[g]) for g in gaps]
    heads = [(b, h) for b, hs in enumerate(ret[gaps[0]]) for h in range(len(hs))]
    acc_ref = acc(a.ref_gap)
    pred = predict(gaps, best, a.ref_gap, acc_ref, chance)
    tol = tolerance(model, a, heads, acc, chance)
    cliff2 = predict_tolerance(gaps, best, a.tol_gap, tol["rho_half"])
    cliff3 = retention_crossing(gaps, best, TAU)
    acc4 = transplant(model, a, heads, ret, acc)
    print(f"rule 1 (acc_ref {acc_ref:.3f} at gap {a.ref_gap}): cliff at gap {pred['cliff_pred']:.0f}", flush=True)
    print(f"rule 2 (gap {a.tol_gap}: acc {[round(x, 3) for x in tol['acc']]} at rho 2^-k; rho_half {tol['rho_half']}):"
          f" cliff at gap {cliff2}", flush=True)
    print(f"rule 3 (R* = {TAU}): cliff at gap {cliff3:.0f}", flush=True)
    print(f"rule 4 (accuracy at gap {a.tol_gap} with each head's decay to gap g): {acc4}", flush=True)
    for g, r, p in zip(gaps, best, pred["acc_pred"]):
        print(f"  gap {g:5d}  R* {r:.3g}  heads {[[round(v, 3) for v in hs] for hs in ret[g]]}  acc_pred {p:.3f}")
    # 3: accuracy by gap
    accs = []
    for g in gaps:
        accs.append(acc_ref if g == a.ref_gap else acc(g))
        print(f"  gap {g:5d}  acc {accs[-1]:.3f}  (rule 1: {pred['acc_pred'][len(accs) - 1]:.3f})", flush=True)
    cliff = crossing(gaps, accs, chance + (acc_ref - chance) / 2)
    g4 = [g for g in gaps if g >= a.tol_gap]
    cliff4 = crossing(g4, [accs[gaps.index(a.tol_gap)]] + [acc4[g] for g in g4[1:]], chance + (acc_ref - chance) / 2)
    print(f"measured cliff: {cliff}; rule 1: {pred['cliff_pred']:.0f}; rule 2: {cliff2}; rule 3: {cliff3:.0f}; "
          f"rule 4: {cliff4}", flush=True)
    # 4: the causal check at the longest gaps, freezing the decay of each head and of all heads over the gap
    n = a.eval_pairs
    check = []
    for g in a.check_gaps or [g for g in gaps if g >= 256][-3:]:
        for sel in [[hh] for hh in heads] + [heads]:
            with edited_decay(model, sel, after_write(model, n), 2 * n + g):
                check.append({"gap": g, "frozen": sel, "acc": acc(g, a.check_examples)})
            print(f"  gap {g}: decay frozen on {sel}: acc {check[-1]['acc']:.3f}", flush=True)
    out.with_suffix(".json").write_text(json.dumps({
        "argv": ["scripts/train_ssm_cliff.py", *(sys.argv[1:] if argv is None else argv)], "args": vars(a),
        "config": model.config.to_dict(), "stages": stages, "wall_s": round(time.time() - t0, 1),
        "eval_task": recall_task(a, a.eval_pairs, "G").describe(), "chance": chance, "gaps": gaps,
        "acc": accs, "ref_gap": a.ref_gap, "acc_ref": acc_ref, "cliff_measured": cliff,
        "retention": {str(g): ret[g] for g in gaps}, "best_retention": best, **pred,
        "rule": "acc_pred(g) = c + (acc_ref - c) * min(1, R*(g)/R*(g_ref)); cliff where R*(g)/R*(g_ref) = 1/2",
        "tolerance": tol, "cliff_pred_rule2": cliff2,
        "rule2": "cliff where R*(g)/R*(g_tol) = rho_half, the retention factor that halves accuracy at g_tol",
        "acc_pred_rule4": {str(g): v for g, v in acc4.items()}, "cliff_pred_rule4": cliff4,
        "rule4": "acc(g) = accuracy at g_tol with each head's retention after the write times R_h(g)/R_h(g_tol)",
        "cliff_pred_rule3": cliff3, "rule3": f"cliff where R*(g) = {TAU} (calibrated on the first two models)",
        "frozen_decay_check": check},
        indent=1))
    print("saved", out, out.with_suffix(".json"), flush=True)


if __name__ == "__main__":
    main()
