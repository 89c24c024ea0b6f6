"""Lab 08 (Echo meets SmolLM2): exercises, checkers and solutions.

1. ``visible_parts(T, window, sinks) -> int64 [T, T]``: what query t reads of token s in a converted
   ``window+ska`` layer: 0 nothing (the future), 1 the softmax (the first ``sinks`` tokens and the last
   ``window`` tokens, ``t - window < s <= t``), 2 the SKA statistics (everything else in the past).
2. ``converted_state_bytes(window, sinks, rank, n_kv_heads, head_dim) -> int``: the float32 bytes of one
   converted ``window+ska`` layer's decode state (batch 1) once its window is full: the K and V rows of the
   sinks and the window, the key features of the window tokens waiting to enter the statistics, and per KV
   head G, M (r x r each), C (head_dim x r) and the previous key (r).
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, expect_tensor, fresh_generator, passed

__all__ = [
    "_converted_state_bytes_solution", "_visible_parts_solution", "check_converted_state_bytes",
    "check_visible_parts",
]


def _visible_parts_solution(T, window, sinks):
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    past = s <= t
    soft = past & ((t - s < window) | (s < sinks))
    parts = torch.zeros(T, T, dtype=torch.int64)
    parts[past] = 2
    parts[soft] = 1
    return parts


def _converted_state_bytes_solution(window, sinks, rank, n_kv_heads, head_dim):
    rows = 2 * (window + sinks) * n_kv_heads * head_dim  # K and V of the sinks and the window
    pending = window * n_kv_heads * rank  # key features of window tokens, written when they leave
    stats = n_kv_heads * (2 * rank * rank + head_dim * rank + rank)  # G, M, C, k_prev
    return 4 * (rows + pending + stats)


@checker(forbid=("ConvertedAttention", "state_nbytes", "mixer_bytes", "state_bytes"))
def check_visible_parts(fn) -> None:
    """Check ``fn(T, window, sinks) -> int [T, T]`` on several shapes, edge cases included."""
    name = "visible_parts"
    g, seed = fresh_generator()
    cases = [(int(torch.randint(12, 30, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g)), 2),
             (10, 3, 0), (8, 20, 2), (9, 1, 4)]
    for T, w, a in cases:
        out = call_student(name, fn, T, w, a)
        if isinstance(out, torch.Tensor) and not out.is_floating_point():
            out = out.double()  # expect_tensor checks floating tensors; the values are compared exactly below
        out = expect_tensor(name, out, (T, T), "[T, T] (query t, token s)").long()
        want = _visible_parts_solution(T, w, a)
        if torch.equal(out, want):
            continue
        t = torch.arange(T)[:, None]
        s = torch.arange(T)[None, :]
        hint = ""
        if (out[s > t] != 0).any():
            hint = " A query reads nothing of the future: parts[t, s] = 0 for s > t."
        elif torch.equal(out.T, want):
            hint = " Rows are queries t and columns tokens s: yours is transposed."
        elif (out[:, :a][want[:, :a] > 0] != 1).any():
            hint = " The sinks (the first `sinks` tokens) stay in the softmax for every later query; they never enter the statistics."
        elif torch.equal(out, _visible_parts_solution(T, w + 1, a)) or torch.equal(out, _visible_parts_solution(T, w - 1, a)):
            hint = " Off by one at the window's edge: the softmax sees exactly the last `window` tokens, t - window < s <= t."
        elif (out[want == 2] == 0).any():
            hint = " Tokens older than the window are not forgotten: the statistics hold them (part 2)."
        raise ExerciseError(f"{name}: wrong parts for T={T}, window={w}, sinks={a} (seed {seed}): "
                            f"{int((out != want).sum())} of {T * T} entries differ.{hint}")
    return passed(name)


@checker(forbid=("ConvertedAttention", "state_nbytes", "mixer_bytes", "state_bytes", "SKAState"))
def check_converted_state_bytes(fn) -> None:
    """Check ``fn(window, sinks, rank, n_kv_heads, head_dim) -> int`` against exact integer arithmetic."""
    name = "converted_state_bytes"
    g, seed = fresh_generator()
    cases = [(64, 4, 32, 3, 64), (int(torch.randint(5, 40, (1,), generator=g)), int(torch.randint(0, 5, (1,), generator=g)),
                                  int(torch.randint(3, 20, (1,), generator=g)), int(torch.randint(1, 5, (1,), generator=g)),
                                  int(torch.randint(4, 33, (1,), generator=g)))]
    for W, A, r, H, D in cases:
        out = call_student(name, fn, W, A, r, H, D)
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int):
            raise ExerciseError(f"{name}: return an int number of bytes, got {out!r}")
        want = _converted_state_bytes_solution(W, A, r, H, D)
        if out == want:
            continue
        rows, pend = 2 * (W + A) * H * D * 4, W * H * r * 4
        stats = H * (2 * r * r + D * r + r) * 4
        typical = {
            "the K and V rows of the sinks are missing (the first `sinks` tokens are kept too)": want - 2 * A * H * D * 4,
            "only K or only V rows: the window keeps both (factor 2)": want - rows // 2,
            "the key features waiting to enter the statistics (window x n_kv_heads x rank) are missing": want - pend,
            "the previous key k_prev (r per KV head, for M's next term) is missing": want - H * r * 4,
            "M is missing: SKA keeps G and M, both r x r": want - H * r * r * 4,
            "counted in float16 (2 bytes); the state is float32": want // 2,
            "counted in elements, not bytes (x4 for float32)": want // 4,
            "the statistics are counted per query head: they are per KV head (the query heads of a group share them)":
                want + 2 * stats,
        }
        hint = next((f" It looks like {h}." for h, v in typical.items() if out == v), "")
        raise ExerciseError(f"{name}: {out} bytes for window={W}, sinks={A}, rank={r}, n_kv_heads={H}, head_dim={D} "
                            f"(seed {seed}); expected {want}.{hint}")
    return passed(name)
