"""Lab 01 (SSMs and attention): exercises, checkers and solutions. One head, no batch:

1. ``ssm_scan(x [T, P], a [T], b [T, N], c [T, N]) -> y [T, P]``: the recurrence
   ``h_t = exp(a_t) h_{t-1} + x_t b_t^T`` (``h`` is ``[P, N]``, starts at 0), ``y_t = h_t c_t``.
2. ``decay_mask(a [T]) -> L [T, T]``: ``L[i, j] = exp(a_{j+1} + ... + a_i)`` for ``i >= j``, else 0, with the
   segment sums built directly (a masked cumsum, as ``echo_tutor.ssm.segsum``), not as the difference
   ``cumsum(a)_i - cumsum(a)_j``, which loses the small sums near the diagonal in float32 on long sequences.
3. ``ssd_quadratic(x, a, b, c) -> y [T, P]``: the same outputs as 1 in one matrix product,
   ``y = ((C B^T) o L) x``: attention whose mask decays.
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = [
    "_ssm_scan_solution", "_decay_mask_solution", "_ssd_quadratic_solution",
    "check_ssm_scan", "check_decay_mask", "check_ssd_quadratic",
]


# ---------------------------------------------------------------------------------------------- solutions
def _ssm_scan_solution(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    h = torch.zeros(x.shape[1], b.shape[1], dtype=x.dtype)
    ys = []
    for t in range(x.shape[0]):
        h = torch.exp(a[t]) * h + torch.outer(x[t], b[t])  # decay the old state, then write
        ys.append(h @ c[t])  # read after writing: y_t sees x_t
    return torch.stack(ys)


def _decay_mask_solution(a: torch.Tensor) -> torch.Tensor:
    T = a.shape[0]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)  # i > j
    terms = a[:, None].expand(T, T).masked_fill(~below, 0)  # terms[i, j] = a_i where i > j, else 0
    seg = torch.cumsum(terms, dim=0)  # seg[i, j] = a_{j+1} + ... + a_i (i >= j): no difference of large sums
    return torch.tril(torch.exp(seg))  # 0 above the diagonal


def _ssd_quadratic_solution(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((c @ b.T) * _decay_mask_solution(a)) @ x


# ---------------------------------------------------------------------------------------------- checkers
def _inputs(g: torch.Generator, T=9, P=3, N=4):
    x = torch.randn(T, P, generator=g, dtype=torch.float64)
    a = -torch.rand(T, generator=g, dtype=torch.float64)
    b = torch.randn(T, N, generator=g, dtype=torch.float64)
    c = torch.randn(T, N, generator=g, dtype=torch.float64)
    return x, a, b, c


def _check_sequence_fn(name, fn, solution, typical):
    g, seed = fresh_generator()
    x, a, b, c = _inputs(g)
    T, P = x.shape
    out = expect_tensor(name, call_student(name, fn, x, a, b, c), (T, P), "[T, P]")
    x2, b2 = x.clone(), b.clone()
    x2[6:] += 1.0
    b2[6:] += 1.0
    out2 = expect_tensor(name, call_student(name, fn, x2, a, b2, c), (T, P), "[T, P]")
    if not close(out[:6], out2[:6], 1e-10):
        raise ExerciseError(f"{name}: not causal: outputs before t=6 changed when only inputs from t=6 on changed "
                            f"(seed {seed}). y_t may depend on tokens 0..t only.")
    want = solution(x, a, b, c)
    if close(out, want):
        return passed(name)
    hint = next((h for h, wrong in typical(x, a, b, c).items() if close(out, wrong)), "")
    raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")


def _scan_variants(x, a, b, c):
    def run(decay, read_before):
        h = torch.zeros(x.shape[1], b.shape[1], dtype=x.dtype)
        ys = []
        for t in range(x.shape[0]):
            if read_before:
                ys.append(h @ c[t])
            h = decay(a[t]) * h + torch.outer(x[t], b[t])
            if not read_before:
                ys.append(h @ c[t])
        return torch.stack(ys)

    return {
        " You multiply by a_t itself: the decay factor is exp(a_t) (a_t = A dt is a log-decay, <= 0).": run(lambda z: z, False),
        " It looks like y_t reads the state before x_t is written: update h first, then read y_t = h_t c_t.":
            run(torch.exp, True),
        " The state is never decayed: h_t = exp(a_t) h_{t-1} + x_t b_t^T.": run(lambda z: torch.ones(()), False),
    }


@checker()
def check_ssm_scan(fn) -> None:
    """Check ``fn(x [T, P], a [T], b [T, N], c [T, N]) -> [T, P]`` against the SSM recurrence."""
    return _check_sequence_fn("ssm_scan", fn, _ssm_scan_solution, _scan_variants)


# The long-sequence test of decay_mask: float32, T tokens with a_t uniform in [-2, 0]. The exact form (segment
# sums built directly) stays within ~3e-8 of a float64 reference; the cumsum difference misses by ~1e-5.
_LONG_T, _LONG_TOL = 512, 1e-6


@checker()
def check_decay_mask(fn) -> None:
    """Check ``fn(a [T]) -> L [T, T]``, ``L[i, j] = exp(a_{j+1} + ... + a_i)`` on and below the diagonal:
    values on a short float64 sequence, then accuracy on a long, strongly decaying float32 one (max abs error
    ``<= 1e-6`` against a float64 reference), which the cumsum difference ``exp(s_i - s_j)`` does not reach."""
    name = "decay_mask"
    g, seed = fresh_generator()
    T = 7
    a = -torch.rand(T, generator=g, dtype=torch.float64)
    out = expect_tensor(name, call_student(name, fn, a), (T, T), "[T, T]")
    want = _decay_mask_solution(a)
    if torch.triu(out, 1).abs().max() > 1e-12:
        raise ExerciseError(f"{name}: entries above the diagonal must be 0 (a token cannot read later tokens); "
                            f"seed {seed}")
    if not close(out, want):
        cs = torch.cumsum(a, 0)
        typical = {
            " The diagonal should be exp(0) = 1: the sum runs over a_{j+1} .. a_i, so it excludes a_j.":
                torch.tril(torch.exp(cs[:, None] - cs[None, :] + a[None, :])),
            " That is the sum itself: the mask is its exponential.": torch.tril(cs[:, None] - cs[None, :]),
            " The decay runs the wrong way: L[i, j] multiplies what token j wrote, seen from token i >= j.":
                torch.tril(torch.exp(cs[None, :] - cs[:, None])),
        }
        hint = next((h for h, wrong in typical.items() if close(out, wrong)), "")
        raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")

    # accuracy where it matters: a long chunk of strongly decaying float32 log-decays
    g, seed = fresh_generator()
    a = -2 * torch.rand(_LONG_T, generator=g, dtype=torch.float32)
    ref = _decay_mask_solution(a.double())
    reach = f" Over T={_LONG_T} float32 tokens cumsum(a) reaches {float(torch.cumsum(a, 0)[-1]):.0f}"
    fix = (" Build a_{j+1} + ... + a_i directly: put a_i in row i of every column j < i (0 elsewhere) and cumsum "
           "down the rows, as echo_tutor.ssm.segsum does; exponentiate, and zero the entries above the diagonal.")
    try:
        out = expect_tensor(name, call_student(name, fn, a), (_LONG_T, _LONG_T), "[T, T]")
    except ExerciseError as e:
        extra = ""
        if "NaN or Inf" in str(e):
            extra = (f"{reach}: exp of sums that large underflows or overflows (exp(cumsum_i) / exp(cumsum_j) "
                     f"is 0/0; exp(cumsum_i - cumsum_j) above the diagonal is inf, and inf * 0 is NaN).{fix}")
        raise ExerciseError(f"{e} (on a long float32 sequence, seed {seed}).{extra}") from None
    err = float((out.double() - ref).abs().max())
    if err > _LONG_TOL:
        raise ExerciseError(f"{name}: right on a short float64 sequence, but inexact on a long float32 one "
                            f"(seed {seed}): max abs error {err:.2g} against a float64 reference, allowed "
                            f"{_LONG_TOL:g}.{reach}: exp(cumsum_i - cumsum_j) subtracts two large numbers, and "
                            f"the small segment sums near the diagonal (the largest entries of L) lose their "
                            f"digits.{fix}")
    return passed(name)


@checker(forbid=("ssm_scan",))
def check_ssd_quadratic(fn) -> None:
    """Check ``fn(x, a, b, c) -> [T, P]`` equals the recurrence through ``((C B^T) o L) x``."""

    def typical(x, a, b, c):
        L = _decay_mask_solution(a)
        return {
            " That is B C^T: scores[i, j] = c_i . b_j (token i reads with c_i what token j wrote with b_j).":
                ((b @ c.T) * L) @ x,
            " Without the decay mask this is plain causal linear attention: multiply the scores by L.":
                torch.tril(c @ b.T) @ x,
        }

    return _check_sequence_fn("ssd_quadratic", fn, _ssd_quadratic_solution, typical)
