"""Lab 00 (the tour): exercises, checkers and solutions. Memory arithmetic, no tensors:

1. ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes) -> int``: the bytes of a KV cache
   for one sequence: every layer keeps a key *and* a value of ``head_dim`` numbers per KV head per token.
2. ``ska_state_floats(n_heads, r, head_dim) -> int``: the numbers one SKA layer keeps per sequence, whatever
   the context: per head ``G`` (``r x r``), ``M`` (``r x r``), ``C`` (``head_dim x r``) and ``k_prev`` (``r``).
3. ``crossover_tokens(n_kv_heads, head_dim, n_heads, r, P) -> int``: the smallest context length ``T`` at which
   one layer's KV cache (``2 T n_kv_heads head_dim`` numbers) holds *more* numbers than one SKA layer's state
   (``n_heads (2 r^2 + P r + r)``), in exact integer arithmetic.

Each checker tries fresh random sizes and then every call the lab itself makes with the learner's function
(``LAB_CALLS``: section 1's layers, section 3's comparison, and the paper's model sizes the "77 KB" cell uses),
so a function that is right on random sizes and wrong on the lab's own cannot pass.
"""

from __future__ import annotations

import math
import numbers

import torch

from . import ExerciseError, call_student, checker, fresh_generator, passed

__all__ = ["_kv_cache_bytes_solution", "_ska_state_floats_solution", "_crossover_tokens_solution",
           "check_kv_cache_bytes", "check_ska_state_floats", "check_crossover_tokens", "LAB_CALLS"]

# The calls lab 00 makes with the learner's functions (its layers: d = 64, 2 heads of 32, r = 32; the paper's
# 180M and 50M models as sections 3.4 and 6.2 give them, r = 56 or 48, P = 64; the 131K-token FP16 cache of
# section 6.2). tests/test_lab00_checkers.py checks the notebook still makes exactly these.
LAB_CALLS: dict[str, tuple[tuple[int, ...], ...]] = {
    "kv_cache_bytes": ((1, 2, 32, 4096, 4), (1, 2, 32, 49, 4), (1, 2, 32, 48, 4), (1, 12, 64, 131072, 2)),
    "ska_state_floats": ((2, 32, 32), (12, 56, 64), (1, 56, 64), (12, 48, 64), (1, 48, 64), (7, 56, 64)),
    "crossover_tokens": ((2, 32, 2, 32, 32), (1, 32, 2, 32, 32)),
}


# ---------------------------------------------------------------------------------------------- solutions
def _kv_cache_bytes_solution(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int) -> int:
    return 2 * n_layers * n_kv_heads * head_dim * tokens * dtype_bytes  # 2: a key and a value


def _ska_state_floats_solution(n_heads: int, r: int, head_dim: int) -> int:
    return n_heads * (r * r + r * r + head_dim * r + r)  # G, M, C, k_prev per head


def _crossover_tokens_solution(n_kv_heads: int, head_dim: int, n_heads: int, r: int, P: int) -> int:
    state = n_heads * (2 * r * r + P * r + r)  # SKA's numbers, whatever the context
    per_token = 2 * n_kv_heads * head_dim      # the cache's numbers per token: a key and a value per KV head
    return state // per_token + 1              # the first T with per_token * T > state (strictly)


# ---------------------------------------------------------------------------------------------- checkers
def _as_int(name: str, out: object, call: str) -> int:
    """The student's answer as an int: a Python or numpy integer, a 0-d integer tensor, or a whole float."""
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            raise ExerciseError(f"{name}: return one number, got a tensor of shape {tuple(out.shape)} for {call}")
        out = out.item()
    if isinstance(out, bool) or not isinstance(out, numbers.Real):
        raise ExerciseError(f"{name}: return one number (an int), got {type(out).__name__} for {call}")
    if not math.isfinite(float(out)) or float(out) != int(out):
        raise ExerciseError(f"{name}: a count is a whole number, got {out!r} for {call}")
    return int(out)


def _check_counts(name, fn, signature, cases, solution, typical, seed) -> None:
    """Call ``fn`` on every case; on a mismatch, name the first failing call and the typical mistake that
    explains *every* answer (a formula, so one coincidence cannot mislead the hint)."""
    outs = []
    for args in cases:
        call = f"{name}({', '.join(f'{k}={v}' for k, v in zip(signature, args))})"
        outs.append((call, _as_int(name, call_student(name, fn, *args), call)))
    wants = [solution(*args) for args in cases]
    bad = next((i for i, ((_, out), want) in enumerate(zip(outs, wants)) if out != want), None)
    if bad is None:
        return passed(name)
    hint = next((h for h, wrong in typical if all(out == wrong(*args) for (_, out), args in zip(outs, cases))), "")
    call, out = outs[bad]
    raise ExerciseError(f"{name}: expected {wants[bad]:,d}, got {out:,d} for {call} (seed {seed}).{hint}")


_KV_TYPICAL = [
    (" Half the answer: each token stores a key *and* a value.", lambda L, H, D, T, B: L * H * D * T * B),
    (" That counts numbers, not bytes: multiply by dtype_bytes.", lambda L, H, D, T, B: 2 * L * H * D * T),
    (" That is one layer: every layer keeps its own cache.", lambda L, H, D, T, B: 2 * H * D * T * B),
    (" That is one KV head: every KV head of a layer keeps its own keys and values.", lambda L, H, D, T, B: 2 * L * D * T * B),
]

_SKA_TYPICAL = [
    (" M is missing: SKA keeps two r x r matrices, G (keys with keys) and M (each key with the one before).",
     lambda H, r, P: H * (r * r + P * r + r)),
    (" k_prev is missing: the state keeps the last key (r numbers) to add the next term of M.",
     lambda H, r, P: H * (2 * r * r + P * r)),
    (" C pairs values with keys: it is head_dim x r, not r x r.", lambda H, r, P: H * (3 * r * r + r)),
    (" That is one head: every head keeps its own G, M, C and k_prev.", lambda H, r, P: 2 * r * r + P * r + r),
    (" That looks like a KV cache entry per head (r + head_dim), not the statistics: G and M are r x r, C is head_dim x r.",
     lambda H, r, P: H * (r + P)),
]


@checker(forbid=("state_nbytes", "nbytes", "KVCache", "init_state"))
def check_kv_cache_bytes(fn) -> None:
    """Check ``fn(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes) -> int`` on fresh random sizes and the
    lab's own calls."""
    g, seed = fresh_generator()
    cases = []
    for _ in range(4):
        L, H, D = (int(v) for v in torch.randint(3, 40, (3,), generator=g))
        T = int(torch.randint(1, 5000, (1,), generator=g))
        B = [2, 4, 8][int(torch.randint(0, 3, (1,), generator=g))]
        cases.append((L, H, D, T, B))
    cases += [(1, 1, 1, 1, 1), *LAB_CALLS["kv_cache_bytes"]]
    return _check_counts("kv_cache_bytes", fn, ("n_layers", "n_kv_heads", "head_dim", "tokens", "dtype_bytes"),
                         cases, _kv_cache_bytes_solution, _KV_TYPICAL, seed)


@checker(forbid=("state_nbytes", "nbytes", "SKAState", "init_state"))
def check_ska_state_floats(fn) -> None:
    """Check ``fn(n_heads, r, head_dim) -> int`` on fresh random sizes and the lab's own calls."""
    g, seed = fresh_generator()
    cases = [tuple(int(v) for v in torch.randint(2, 65, (3,), generator=g)) for _ in range(4)] + [(1, 1, 1)]
    cases += LAB_CALLS["ska_state_floats"]
    return _check_counts("ska_state_floats", fn, ("n_heads", "r", "head_dim"), cases, _ska_state_floats_solution,
                         _SKA_TYPICAL, seed)


def _past(state, per_token):
    """The first T with per_token * T > state: the right rule, applied to a wrong count."""
    return state // per_token + 1


_CROSSOVER_TYPICAL = [
    (" At that T the cache is not larger than the state yet (smaller, or at most equal): the answer is the first "
     "whole T *past* the break-even point, state // per_token + 1.",
     lambda A, D, H, r, P: H * (2 * r * r + P * r + r) // (2 * A * D)),
    (" Rounding the break-even point up gives the T where the two can be *equal* (when it is a whole number); the "
     "question asks for the first T at which the cache holds *more*: state // per_token + 1.",
     lambda A, D, H, r, P: -(-H * (2 * r * r + P * r + r) // (2 * A * D))),
    (" The cache grows by 2 x n_kv_heads x head_dim numbers per token: a key *and* a value per KV head.",
     lambda A, D, H, r, P: _past(H * (2 * r * r + P * r + r), A * D)),
    (" The state's last-key term is missing: SKA keeps k_prev (r numbers per head) besides G, M and C.",
     lambda A, D, H, r, P: _past(H * (2 * r * r + P * r), 2 * A * D)),
    (" That compares one head's state with the whole layer's cache: SKA's state has n_heads heads.",
     lambda A, D, H, r, P: _past(2 * r * r + P * r + r, 2 * A * D)),
    (" The cache has n_kv_heads heads, not n_heads: with grouped-query attention several query heads share one "
     "KV head.",
     lambda A, D, H, r, P: _past(H * (2 * r * r + P * r + r), 2 * H * D)),
]


def _odd(g: torch.Generator, lo: int, hi: int) -> int:
    return 2 * int(torch.randint(lo // 2, hi // 2 + 1, (1,), generator=g)) + 1


@checker(forbid=("state_nbytes", "nbytes", "SKAState", "KVCache", "init_state"))
def check_crossover_tokens(fn) -> None:
    """Check ``fn(n_kv_heads, head_dim, n_heads, r, P) -> int`` on fresh random sizes, two of them built so that
    every typical mistake shows: one where the break-even point is never a whole number (one KV head of size 1,
    an odd state), one where it always is (``n_heads = 2 n_kv_heads``, ``r`` a multiple of ``head_dim``); then
    the lab's own calls."""
    g, seed = fresh_generator()
    rand = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    cases = [(1, 1, _odd(g, 3, 15), _odd(g, 3, 63), 2 * rand(2, 64))]  # state odd, 2 numbers per token
    A, D = rand(2, 8), rand(4, 64)
    cases.append((A, D, 2 * A, D * rand(1, 4), rand(4, 128)))  # state a multiple of 2 A D
    for _ in range(3):
        A = rand(1, 8)
        cases.append((A, rand(8, 128), A * [1, 2, 4][rand(0, 2)], rand(4, 64), rand(8, 128)))
    cases += LAB_CALLS["crossover_tokens"]
    return _check_counts("crossover_tokens", fn, ("n_kv_heads", "head_dim", "n_heads", "r", "P"), cases,
                         _crossover_tokens_solution, _CROSSOVER_TYPICAL, seed)
