"""Lab 00 (the tour): exercises, checkers and solutions. Memory arithmetic, no tensors:

1. ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes) -> int``: the bytes of a KV cache
   for one sequence: every layer keeps a key *and* a value of ``head_dim`` numbers per KV head per token.
2. ``ska_state_floats(n_heads, r, head_dim) -> int``: the numbers one SKA layer keeps per sequence, whatever
   the context: per head ``G`` (``r x r``), ``M`` (``r x r``), ``C`` (``head_dim x r``) and ``k_prev`` (``r``).
"""

from __future__ import annotations

import math
import numbers

import torch

from . import ExerciseError, call_student, checker, fresh_generator, passed

__all__ = ["_kv_cache_bytes_solution", "_ska_state_floats_solution", "check_kv_cache_bytes", "check_ska_state_floats"]


# ---------------------------------------------------------------------------------------------- solutions
def _kv_cache_bytes_solution(n_layers: int, n_kv_heads: int, head_dim: int, tokens: int, dtype_bytes: int) -> int:
    return 2 * n_layers * n_kv_heads * head_dim * tokens * dtype_bytes  # 2: a key and a value


def _ska_state_floats_solution(n_heads: int, r: int, head_dim: int) -> int:
    return n_heads * (r * r + r * r + head_dim * r + r)  # G, M, C, k_prev per head


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
    """Check ``fn(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes) -> int`` on fresh random sizes."""
    g, seed = fresh_generator()
    cases = []
    for _ in range(4):
        L, H, D = (int(v) for v in torch.randint(3, 40, (3,), generator=g))
        T = int(torch.randint(1, 5000, (1,), generator=g))
        B = [2, 4, 8][int(torch.randint(0, 3, (1,), generator=g))]
        cases.append((L, H, D, T, B))
    cases.append((1, 1, 1, 1, 1))
    return _check_counts("kv_cache_bytes", fn, ("n_layers", "n_kv_heads", "head_dim", "tokens", "dtype_bytes"),
                         cases, _kv_cache_bytes_solution, _KV_TYPICAL, seed)


@checker(forbid=("state_nbytes", "nbytes", "SKAState", "init_state"))
def check_ska_state_floats(fn) -> None:
    """Check ``fn(n_heads, r, head_dim) -> int`` on fresh random sizes."""
    g, seed = fresh_generator()
    cases = [tuple(int(v) for v in torch.randint(2, 65, (3,), generator=g)) for _ in range(4)] + [(1, 1, 1)]
    return _check_counts("ska_state_floats", fn, ("n_heads", "r", "head_dim"), cases, _ska_state_floats_solution,
                         _SKA_TYPICAL, seed)
