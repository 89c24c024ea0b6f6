"""Three ways to remember key/value bindings, in closed form: no training, random keys.

The no-training half of lab 03. A stream of writes ``(k_t, v_t)`` (keys ``[r]``, values from a codebook of
``n_values`` random vectors ``[P]``) holds ``n`` bindings, then ``gap`` distractor writes with random keys
and values; then each bound key is read. A read is correct when the codebook vector closest (cosine) to the
memory's output is the bound value. Three memories:

* ``decay``:  a fixed-size state that writes every token and forgets at rate ``lam`` per token,
  ``S = sum_t lam^(T-1-t) v_t k_t^T``, read ``S q`` (linear attention with a decay: the shape of an SSM's
  memory). A binding ``d`` tokens back weighs ``lam^d`` against the distractors written since.
* ``window``: the last ``W`` writes, exactly (sliding-window attention with a sharp softmax). Perfect for
  bindings inside the window, nothing beyond it.
* ``ridge``:  SKA's statistics with K=0, ``G = eps I + sum_t beta_t k_t k_t^T``, ``C = sum_t beta_t v_t k_t^T``,
  read ``C G^-1 q``: fixed size (``r^2 + P r`` floats) and no forgetting. With a write gate (``beta = 0`` on
  distractors, what SKA's learned ``beta_t`` can do) the gap does not matter at all; the limit is the rank:
  ``n`` random keys in ``r`` dimensions are separable only while ``n <= r``.

Every function is seeded and returns an accuracy in [0, 1].
"""

from __future__ import annotations

import math

import torch

from ._checks import check_int, check_positive
from .errors import BadArgumentError

__all__ = ["MEMORIES", "recall_accuracy", "state_floats", "horizon"]

MEMORIES = ("decay", "window", "ridge")


def _stream(n: int, gap: int, r: int, P: int, n_values: int, trials: int, seed: int):
    """keys [trials, n+gap, r], values [trials, n+gap, P], the codebook [n_values, P], bound value ids [trials, n]."""
    g = torch.Generator().manual_seed(seed)
    book = torch.nn.functional.normalize(torch.randn(n_values, P, generator=g, dtype=torch.float64), dim=-1)
    keys = torch.nn.functional.normalize(torch.randn(trials, n + gap, r, generator=g, dtype=torch.float64), dim=-1)
    ids = torch.randint(0, n_values, (trials, n + gap), generator=g)
    return keys, book[ids], book, ids[:, :n]


def recall_accuracy(memory: str, n_pairs: int = 8, gap: int = 64, r: int = 32, *, lam: float = 0.98,
                    window: int = 64, gate: bool = True, eps: float = 1e-3, P: int = 32, n_values: int = 64,
                    trials: int = 64, seed: int = 0) -> float:
    """Accuracy of one memory on ``trials`` random streams of ``n_pairs`` bindings then ``gap`` distractors.

    Args:
        memory: ``"decay"``, ``"window"`` or ``"ridge"`` (see the module doc).
        n_pairs: bindings n, written first (binding i sits ``n - i + gap`` tokens before the reads).
        gap: distractor writes between the bindings and the reads.
        r: key width (the rank of SKA's statistics).
        lam: the decay per token of ``"decay"``, in (0, 1].
        window: W of ``"window"``.
        gate: ``"ridge"`` only: distractors are not written (``beta = 0``); else every token writes.
        eps: ridge of ``"ridge"``.
        P, n_values: value width and codebook size (chance is ``1 / n_values``).
        trials, seed: how many streams, and their seed.
    """
    if memory not in MEMORIES:
        raise BadArgumentError(f"memory must be one of {list(MEMORIES)}, got {memory!r}")
    n = check_int("n_pairs", n_pairs, min_value=1)
    G = check_int("gap", gap, min_value=0)
    check_int("r", r, min_value=1)
    check_int("window", window, min_value=1)
    check_int("trials", trials, min_value=1)
    check_int("n_values", n_values, min_value=2)
    check_positive("eps", eps)
    if not (0 < lam <= 1):
        raise BadArgumentError(f"lam must be in (0, 1], got {lam}")
    keys, vals, book, bound = _stream(n, G, r, P, n_values, trials, seed)
    T = n + G
    q = keys[:, :n]  # [trials, n, r]: read every bound key
    if memory == "decay":
        w = lam ** torch.arange(T - 1, -1, -1, dtype=torch.float64)  # [T]: token t weighs lam^(T-1-t)
        S = torch.einsum("t,btp,btr->bpr", w, vals, keys)  # [trials, P, r]
        out = torch.einsum("bpr,bnr->bnp", S, q)
    elif memory == "window":
        lo = max(0, T - window)
        k_w, v_w = keys[:, lo:], vals[:, lo:]  # [trials, <=W, .]
        if k_w.shape[1] == 0:
            out = torch.zeros(trials, n, P, dtype=torch.float64)
        else:
            att = torch.softmax(50.0 * torch.einsum("bnr,bwr->bnw", q, k_w), dim=-1)  # sharp: exact match wins
            out = torch.einsum("bnw,bwp->bnp", att, v_w)
    else:
        beta = torch.ones(T, dtype=torch.float64)
        if gate:
            beta[n:] = 0.0
        Gm = eps * torch.eye(r, dtype=torch.float64) + torch.einsum("t,btr,bts->brs", beta, keys, keys)
        C = torch.einsum("t,btp,btr->bpr", beta, vals, keys)  # [trials, P, r]
        z = torch.linalg.solve(Gm, q.transpose(1, 2))  # G^-1 q: [trials, r, n]
        out = (C @ z).transpose(1, 2)  # [trials, n, P]
    pred = torch.einsum("bnp,vp->bnv", out, book).argmax(-1)  # nearest codebook vector
    return float((pred == bound).double().mean())


def state_floats(memory: str, r: int = 32, P: int = 32, window: int = 64, context: int = 0) -> int:
    """Floats a memory holds after ``context`` tokens: decay ``P r``, window ``min(context, W) (r + P)``,
    ridge ``r^2 + P r`` (G and C)."""
    if memory not in MEMORIES:
        raise BadArgumentError(f"memory must be one of {list(MEMORIES)}, got {memory!r}")
    if memory == "decay":
        return P * r
    if memory == "window":
        return min(context, window) * (r + P)
    return r * r + P * r


def horizon(lam: float, floor: float = 0.01) -> float:
    """Tokens after which a decay ``lam`` per token leaves less than ``floor`` of a write: ``log floor / log lam``."""
    if not (0 < lam < 1):
        raise BadArgumentError(f"lam must be in (0, 1), got {lam}")
    return math.log(floor) / math.log(lam)
