"""Lab 02 (SKA from scratch): exercises, checkers and solutions.

1. ``ridge_readout(keys [n, r], values [n, P], query [r], eps) -> [P]``: the ridge-regression map from
   keys to values applied to one query, ``V^T K (K^T K + eps I)^-1 q``.
2. ``causal_ridge(keys [T, r], values [T, P], queries [T, r], eps) -> [T, P]``: the same at every
   position t, fitted only on tokens <= t (SKA with K = 0, token mode).
3. ``koopman_from_stats(G [r, r], M [r, r]) -> [r, r]``: the Koopman operator ``A = M G^-1``.
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = [
    "_ridge_readout_solution", "_causal_ridge_solution", "_koopman_from_stats_solution",
    "check_ridge_readout", "check_causal_ridge", "check_koopman_from_stats",
]


# ---------------------------------------------------------------------------------------------- solutions
def _ridge_readout_solution(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor, eps: float) -> torch.Tensor:
    r = keys.shape[1]
    G = keys.T @ keys + eps * torch.eye(r, dtype=keys.dtype)  # [r, r]
    C = values.T @ keys  # [P, r]
    return C @ torch.linalg.solve(G, query)  # [P]


def _causal_ridge_solution(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor, eps: float) -> torch.Tensor:
    return _causal_ridge(keys, values, queries, eps, inclusive=True)


def _causal_ridge(keys, values, queries, eps, inclusive: bool) -> torch.Tensor:
    T, r = keys.shape
    G = eps * torch.eye(r, dtype=keys.dtype)
    C = torch.zeros(values.shape[1], r, dtype=keys.dtype)
    out = []
    for t in range(T):
        if not inclusive:  # the off-by-one variant the checker recognises: tokens < t only
            out.append(C @ torch.linalg.solve(G, queries[t]))
        G = G + torch.outer(keys[t], keys[t])  # statistics include token t ...
        C = C + torch.outer(values[t], keys[t])
        if inclusive:
            out.append(C @ torch.linalg.solve(G, queries[t]))  # ... and nothing after it
    return torch.stack(out)


def _koopman_from_stats_solution(G: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    return torch.linalg.solve(G, M.T).T  # M G^-1 (G is symmetric)


# ---------------------------------------------------------------------------------------------- checkers
def _kv(g: torch.Generator, n: int, r: int, P: int):
    keys = torch.randn(n, r, generator=g, dtype=torch.float64)
    values = torch.randn(n, P, generator=g, dtype=torch.float64)
    return keys, values


@checker()
def check_ridge_readout(fn) -> None:
    """Check ``fn(keys [n, r], values [n, P], query [r], eps) -> [P]`` against the closed form."""
    name = "ridge_readout"
    for n, r, P, eps in [(12, 6, 4, 0.5), (5, 8, 3, 0.1), (1, 4, 2, 1.0)]:
        g, seed = fresh_generator()
        keys, values = _kv(g, n, r, P)
        query = torch.randn(r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, call_student(name, fn, keys, values, query, eps), (P,), "[P]")
        want = _ridge_readout_solution(keys, values, query, eps)
        if close(out, want):
            continue
        typical = {  # what a typical wrong answer computes -> what to say
            " It matches the fit without the ridge term: add eps * I to K^T K.":
                values.T @ keys @ torch.linalg.pinv(keys.T @ keys) @ query,
            " That is linear attention (C q): the ridge fit also needs the inverse of G = K^T K + eps I.":
                values.T @ keys @ query,
        }
        hint = next((h for h, wrong in typical.items() if close(out, wrong)), "")
        raise ExerciseError(f"{name}: wrong values for n={n}, r={r}, P={P}, eps={eps} (seed {seed}): "
                            f"max abs error {(out - want).abs().max():.3g}.{hint}")
    return passed(name)


@checker()
def check_causal_ridge(fn) -> None:
    """Check ``fn(keys [T, r], values [T, P], queries [T, r], eps) -> [T, P]``: values and causality."""
    name = "causal_ridge"
    T, r, P, eps = 11, 4, 3, 0.3
    g, seed = fresh_generator()
    keys, values = _kv(g, T, r, P)
    queries = torch.randn(T, r, generator=g, dtype=torch.float64)
    out = expect_tensor(name, call_student(name, fn, keys, values, queries, eps), (T, P), "[T, P]")
    # causality: change every token after t0; outputs up to t0 must not move
    t0 = 5
    k2, v2 = keys.clone(), values.clone()
    k2[t0 + 1:] += torch.randn(T - t0 - 1, r, generator=g, dtype=torch.float64)
    v2[t0 + 1:] += torch.randn(T - t0 - 1, P, generator=g, dtype=torch.float64)
    out2 = expect_tensor(name, call_student(name, fn, k2, v2, queries, eps), (T, P), "[T, P]")
    if not close(out[: t0 + 1], out2[: t0 + 1], 1e-9):
        bad = int(((out[: t0 + 1] - out2[: t0 + 1]).abs().amax(-1) > 1e-9).nonzero()[0])
        raise ExerciseError(f"{name}: not causal: output {bad} changed when only tokens after {t0} changed "
                            f"(seed {seed}). Position t may only use statistics of tokens 0..t.")
    want = _causal_ridge_solution(keys, values, queries, eps)
    if close(out, want):
        return passed(name)
    hint = ""
    if close(out, _causal_ridge(keys, values, queries, eps, inclusive=False)):  # a common off-by-one
        hint = " It looks like position t uses tokens < t only: include token t itself in G and C before reading out."
    raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")


@checker()
def check_koopman_from_stats(fn) -> None:
    """Check ``fn(G [r, r], M [r, r]) -> A [r, r]`` with ``A = M G^-1``."""
    name = "koopman_from_stats"
    for r in (3, 6):
        g, seed = fresh_generator()
        X = torch.randn(3 * r, r, generator=g, dtype=torch.float64)
        G = X.T @ X + 0.1 * torch.eye(r, dtype=torch.float64)
        M = torch.randn(r, r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, call_student(name, fn, G, M), (r, r), "[r, r]")
        want = _koopman_from_stats_solution(G, M)
        if close(out, want):
            continue
        Ginv = torch.linalg.inv(G)
        if close(out, Ginv @ M):
            hint = (" You computed G^-1 M. It has the same eigenvalues (G^-1 M = G^-1 A G) but it is not the "
                    "predictor: A = M G^-1 is what maps k_{t-1} to k_t.")
        elif close(out, M.T @ Ginv) or close(out, want.T):
            hint = " You have the transpose: A = M G^-1 maps k_{t-1} to k_t when M = sum k_t k_{t-1}^T."
        elif close(out, M):
            hint = " That is M alone: divide by the Gram matrix (A = M G^-1)."
        else:
            hint = ""
        raise ExerciseError(f"{name}: wrong values for r={r} (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")
    return passed(name)
