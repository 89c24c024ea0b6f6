"""The science of the SSM-cliff study (``experiments.ssm_cliff``): a Mamba-2 head's retention of the last value,
the four cliff predictions made from it before any long-gap accuracy is measured, and the crossings that turn
accuracies and retentions into a cliff gap.

Every function takes ``a``, the cell's measurement arguments (``types.SimpleNamespace`` of an
``SSMCliffCell``'s ``args``: ``vocab``, ``show_values``, ``eval_pairs``, ``eval_gaps``, ``ref_gap``,
``tol_gap``, ...), where it needs them. The rules, in the order they were stated:

* rule 1: with ``acc_ref`` the accuracy at ``ref_gap``, ``acc_pred(g) = c + (acc_ref - c) min(1, R*(g) /
  R*(g_ref))``; the cliff is where that ratio is 1/2 (:func:`predict`).
* rule 2: the tolerance ``rho_half`` measured at the trained gap ``tol_gap`` by shrinking every head's retention
  by ``rho = 2^-k`` (:func:`tolerance`); the cliff where ``R*(g) / R*(g_tol) = rho_half``
  (:func:`predict_tolerance`).
* rule 3: the cliff where ``R*(g)`` falls to :data:`TAU` (:func:`retention_crossing`).
* rule 4: the accuracy at ``tol_gap`` with each head's retention multiplied by its own loss between ``tol_gap``
  and g (:func:`transplant`); the cliff where that falls half-way to chance.
"""

from __future__ import annotations

import contextlib
import math

from ..models import HybridLM
from ..ssm import Mamba2
from ..tasks import Task, make_task
from .diagnostics import device_of, hold_decay, retention_after

__all__ = ["TAU", "recall_task", "after_write", "retention", "crossing", "predict", "edited_decay", "tolerance",
           "transplant", "retention_crossing", "predict_tolerance"]

TAU = 0.04  # rule 3's retention threshold: the geometric mean of R* at the measured cliffs of the first two models


def recall_task(a, pairs, gap) -> Task:
    """MQAR-gap with ``a.vocab`` tokens, ``pairs`` KV pairs (an int or a mixture), ``gap`` (an int or a mixture)."""
    return make_task("mqar_gap", vocab_size=a.vocab, num_kv_pairs=pairs, gap=gap, show_values=a.show_values)


def after_write(model: HybridLM, n: int) -> int:
    """The first position after the last one that sees the last value (2n-1) through the causal conv."""
    return 2 * n + model.blocks[0].mixer.d_conv - 1


def retention(model: HybridLM, a, gap: int, examples: int = 64) -> list[list[float]]:
    """``[block][head]``: median over prompts of the product of exp(A dt_t) over positions w+1 .. 2n+gap."""
    x, _ = recall_task(a, a.eval_pairs, gap).sample(examples, 10_000)
    lo, q = after_write(model, a.eval_pairs), 2 * a.eval_pairs + gap
    sizes = [b.mixer.n_heads for b in model.blocks if isinstance(b.mixer, Mamba2)]
    if q < lo:  # the query still sees the value through the conv
        return [[1.0] * n for n in sizes]
    row = retention_after(model, x.to(device_of(model)), lo)[q - lo].tolist()  # every head, block by block
    return [row[sum(sizes[:k]): sum(sizes[:k + 1])] for k in range(len(sizes))]


def crossing(gaps: list[int], ys: list[float], level: float) -> float | None:
    """The first gap where ``ys`` falls below ``level`` (interpolated in log(1 + gap)); None if it never does."""
    for (g0, y0), (g1, y1) in zip(zip(gaps, ys), zip(gaps[1:], ys[1:])):
        if y0 >= level > y1:
            u0, u1 = math.log1p(g0), math.log1p(g1)
            return math.expm1(u0 + (u1 - u0) * (y0 - level) / (y0 - y1))
    return None


def predict(gaps, best: list[float], g_ref: int, acc_ref: float, chance: float) -> dict:
    """Rule 1, from the best head's retention ``best[i]`` at ``gaps[i]``."""
    r_ref = best[gaps.index(g_ref)]
    ratio = [min(1.0, r / r_ref) for r in best]
    cliff = crossing(gaps, ratio, 0.5)
    if cliff is None:  # extrapolate at the per-token rate between g_ref and the longest gap
        rate = (math.log(r_ref) - math.log(max(best[-1], 1e-300))) / (gaps[-1] - g_ref)
        cliff = g_ref + math.log(2) / rate if rate > 0 else math.inf
    return {"ratio": ratio, "acc_pred": [chance + (acc_ref - chance) * r for r in ratio], "cliff_pred": cliff}


@contextlib.contextmanager
def edited_decay(model: HybridLM, heads: list[tuple[int, int]], lo: int, hi: int, scale: float | dict | None = None):
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


def tolerance(model: HybridLM, a, heads, acc_at, chance: float) -> dict:
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


def transplant(model: HybridLM, a, heads, ret: dict, acc_at) -> dict:
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
