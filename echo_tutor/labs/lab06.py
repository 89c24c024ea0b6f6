"""Lab 06 (EchoKV-lite): exercises, checkers and solutions.

1. ``rope_rotate(x [T, D], cos [T, D], sin [T, D]) -> [T, D]``: Llama's RoPE, pairing dimension i
   with i + D/2: ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x1, x2) = (-x2, x1)``.
2. ``ridge_with_intercept(X [N, a], Y [N, b], lam) -> (W [a, b], c [b])``: minimise
   ``||X W + 1 c^T - Y||^2 + lam ||W||^2`` (the intercept is not penalised): the stage-1 map of one
   discarded head from the retained ones.
3. ``streaming_keep(T, sinks, window) -> bool [T]``: which cached tokens StreamingLLM keeps: the first
   ``sinks`` and the last ``window``.
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = [
    "_rope_rotate_solution", "_ridge_with_intercept_solution", "_streaming_keep_solution",
    "check_rope_rotate", "check_ridge_with_intercept", "check_streaming_keep",
]


def _rope_rotate_solution(x, cos, sin):
    # exactly what EchoKV-lite applies to rebuilt keys
    from ..echokv.capture import apply_rope

    return apply_rope(x, cos, sin)


def _rope_interleaved(x, cos, sin):
    """GPT-J style pairing (2i, 2i+1): a different RoPE convention from Llama's."""
    xr = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + xr * sin


def _ridge_with_intercept_solution(X, Y, lam):
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = torch.linalg.solve(Xc.T @ Xc + lam * torch.eye(X.shape[1], dtype=X.dtype), Xc.T @ Yc)
    return W, my - mx @ W


def _streaming_keep_solution(T, sinks, window):
    keep = torch.zeros(T, dtype=torch.bool)
    keep[:sinks] = True
    if window > 0:
        keep[max(0, T - window):] = True
    return keep


def _tables(T, D, g):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = 1.0 / (100.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = pos * inv[None] + 0.1 * torch.rand(1, D // 2, generator=g, dtype=torch.float64)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


@checker(forbid=("rope_cos_sin", "rotate_half"))
def check_rope_rotate(fn) -> None:
    """Check ``fn(x [T, D], cos [T, D], sin [T, D]) -> [T, D]`` (Llama's half-split pairing)."""
    name = "rope_rotate"
    g, seed = fresh_generator()
    T, D = 7, 8
    x = torch.randn(T, D, generator=g, dtype=torch.float64)
    cos, sin = _tables(T, D, g)
    out = expect_tensor(name, call_student(name, fn, x, cos, sin), (T, D), "[T, D]")
    want = _rope_rotate_solution(x, cos, sin)
    if close(out, want):
        return passed(name)
    # (x * cos - rotate_half(x) * sin and x * cos + (x2, -x1) * sin are the same numbers: one hint)
    typical = {
        " That is the inverse rotation (by -angle): rotate_half(x) = (-x2, x1) is multiplied by +sin"
        " (a rotate_half giving (x2, -x1), or a minus before the sin term, rotates the other way).":
            x * cos - torch.cat((-x[:, D // 2:], x[:, : D // 2]), -1) * sin,
        " That pairs neighbouring dims (2i, 2i+1) (the GPT-J convention); Llama pairs i with i + D/2.":
            _rope_interleaved(x, cos, sin),
        " Only x * cos: the rotate_half(x) * sin term is missing.": x * cos,
    }
    hint = next((h for h, w in typical.items() if close(out, w)), "")
    if not hint and not close(out.norm(dim=-1), x.norm(dim=-1)):
        hint = " A rotation keeps each vector's length; yours does not (check that each cos pairs with its sin)."
    raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")


@checker(forbid=("fit_reconstructor", "Reconstructor", "SlotMap"))
def check_ridge_with_intercept(fn) -> None:
    """Check ``fn(X [N, a], Y [N, b], lam) -> (W [a, b], c [b])``."""
    name = "ridge_with_intercept"
    g, seed = fresh_generator()
    N, a, b, lam = 40, 5, 3, 2.0
    X = torch.randn(N, a, generator=g, dtype=torch.float64) + 3.0       # an offset: the intercept matters
    Y = X @ torch.randn(a, b, generator=g, dtype=torch.float64) + 5.0 + 0.1 * torch.randn(N, b, generator=g, dtype=torch.float64)
    out = call_student(name, fn, X, Y, lam)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ExerciseError(f"{name}: return a pair (W [a, b], c [b]), got {type(out).__name__}")
    W = expect_tensor(name + " W", out[0], (a, b), "W [a, b]")
    c = expect_tensor(name + " c", out[1], (b,), "c [b]")
    Ws, cs = _ridge_with_intercept_solution(X, Y, lam)
    if close(W, Ws) and close(c, cs):
        return passed(name)
    hint = ""
    Z = torch.cat([X, torch.ones(N, 1, dtype=X.dtype)], 1)
    both = torch.linalg.solve(Z.T @ Z + lam * torch.eye(a + 1, dtype=X.dtype), Z.T @ Y)
    no_b = torch.linalg.solve(X.T @ X + lam * torch.eye(a, dtype=X.dtype), X.T @ Y)
    if close(W, _ridge_with_intercept_solution(X, Y, 0.0)[0]):
        hint = " W is the unregularised fit: add lam * I to the centred X^T X."
    elif close(W, both[:a]) and close(c, both[a]):
        hint = " The intercept is penalised too: centre X and Y first (or leave c out of the penalty)."
    elif close(W, no_b):
        hint = " W is fitted without an intercept: centre X and Y, then c = mean(Y) - mean(X) @ W."
    elif close(W, Ws):
        hint = " W is right but c is not: c = mean(Y) - mean(X) @ W (with the W you solved for)."
    raise ExerciseError(
        f"{name}: wrong values (seed {seed}): max abs error W {(W - Ws).abs().max():.3g}, c {(c - cs).abs().max():.3g}.{hint}"
    )


@checker(forbid=("streaming_llm",))
def check_streaming_keep(fn) -> None:
    """Check ``fn(T, sinks, window) -> bool [T]`` on several (T, sinks, window), edge cases included."""
    name = "streaming_keep"
    g, seed = fresh_generator()
    cases = [(int(torch.randint(20, 60, (1,), generator=g)), 4, int(torch.randint(3, 15, (1,), generator=g))),
             (10, 4, 0), (6, 4, 10), (12, 0, 5)]
    for T, s, w in cases:
        out = call_student(name, fn, T, s, w)
        out = expect_tensor(name, out.bool() if isinstance(out, torch.Tensor) else out, (T,), "[T]")
        want = _streaming_keep_solution(T, s, w)
        if torch.equal(out, want):
            continue
        got_n, want_n = int(out.sum()), int(want.sum())
        if not out[:s].all():
            hint = " The first `sinks` tokens (attention sinks) must always be kept."
        elif got_n == want_n + 1 or got_n == want_n - 1:
            hint = " Off by one at the window's edge: keep exactly the last `window` tokens."
        elif w == 0 and out[max(0, T - 1):].any() and not want[max(0, T - 1):].any():
            hint = " window=0 keeps no recent token (x[-0:] is the whole tensor in Python: careful)."
        else:
            hint = ""
        raise ExerciseError(
            f"{name}: wrong mask for T={T}, sinks={s}, window={w} (seed {seed}): kept {out.nonzero().flatten().tolist()}, "
            f"expected {want.nonzero().flatten().tolist()}.{hint}"
        )
    return passed(name)
