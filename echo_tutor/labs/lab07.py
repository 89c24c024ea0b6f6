"""Lab 07 (Triton fast paths): exercises, checkers and solutions.

1. ``chunk_gram(ok [N, T, r], kk [N, T, r], S) -> [N, T/S, r, r]``: each chunk's own Gram term
   ``sum_{s in chunk} ok_s kk_s^T`` (not a running sum): what ``echo_kernels.ska.chunk_stats`` computes for G.
2. ``sherman_morrison(Ginv [r, r], k [r], a) -> [r, r]``: the inverse of ``G + a k k^T`` from ``G^-1``,
   the rank-1 update the decode kernel keeps ``G^-1`` with.
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = ["_chunk_gram_solution", "_sherman_morrison_solution", "check_chunk_gram", "check_sherman_morrison"]


def _chunk_gram_solution(ok, kk, S):
    # G's part of the twin that echo_kernels.ska.chunk_stats is tested against
    from ..ska.ops import chunk_stats

    return chunk_stats(ok, kk, kk, ok, S)[0]


def _sherman_morrison_solution(Ginv, k, a):
    g = Ginv @ k
    return Ginv - a * torch.outer(g, g) / (1.0 + a * (k @ g))


@checker()
def check_chunk_gram(fn) -> None:
    """Check ``fn(ok [N, T, r], kk [N, T, r], S) -> [N, T/S, r, r]``."""
    name = "chunk_gram"
    g, seed = fresh_generator()
    N, S, nc, r = 2, 4, 3, 3
    ok = torch.randn(N, nc * S, r, generator=g, dtype=torch.float64)
    kk = torch.randn(N, nc * S, r, generator=g, dtype=torch.float64)
    out = expect_tensor(name, call_student(name, fn, ok, kk, S), (N, nc, r, r), "[N, T/S, r, r]")
    want = _chunk_gram_solution(ok, kk, S)
    if close(out, want):
        return passed(name)
    typical = {
        " You return a running (inclusive) sum over chunks: each chunk's own term is wanted; the prefix is a separate step.":
            want.cumsum(1),
        " Transposed: the term is ok_s kk_s^T (rows from ok), i.e. einsum 'si,sj->ij'.": want.transpose(-1, -2),
        " That is the exclusive prefix (what chunk c reads), not the per-chunk term.":
            torch.cat([torch.zeros_like(want[:, :1]), want.cumsum(1)[:, :-1]], 1),
    }
    hint = next((h for h, w in typical.items() if close(out, w)), "")
    raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")


@checker(forbid=("inv", "inv_ex", "inverse", "solve", "solve_ex", "pinv", "lstsq", "cholesky", "cholesky_ex", "cholesky_inverse", "cholesky_solve", "solve_triangular"))
def check_sherman_morrison(fn) -> None:
    """Check ``fn(Ginv [r, r], k [r], a) -> (G + a k k^T)^-1`` against an explicit inverse."""
    name = "sherman_morrison"
    g, seed = fresh_generator()
    r = 4
    A = torch.randn(r, r, generator=g, dtype=torch.float64)
    G = A @ A.T + torch.eye(r, dtype=torch.float64)
    k = torch.randn(r, generator=g, dtype=torch.float64)
    a = 0.3 + torch.rand(1, generator=g, dtype=torch.float64).item()
    Ginv = torch.linalg.inv(G)
    out = expect_tensor(name, call_student(name, fn, Ginv, k, a), (r, r), "[r, r]")
    want = torch.linalg.inv(G + a * torch.outer(k, k))
    if close(out, want, 1e-8):
        return passed(name)
    gk = Ginv @ k
    typical = {
        " Wrong sign: the update subtracts a (G^-1 k)(G^-1 k)^T / (1 + a k^T G^-1 k).":
            Ginv + a * torch.outer(gk, gk) / (1 + a * (k @ gk)),
        " The denominator 1 + a k^T G^-1 k is missing.": Ginv - a * torch.outer(gk, gk),
        " The weight a is missing (that is the inverse of G + k k^T).": Ginv - torch.outer(gk, gk) / (1 + k @ gk),
    }
    hint = next((h for h, w in typical.items() if close(out, w, 1e-8)), "")
    raise ExerciseError(f"{name}: not the inverse of G + a k k^T (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")
