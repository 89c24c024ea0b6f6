"""Lab 01 (SSMs and attention): exercises, checkers and solutions. One head per sequence; every exercise takes
any number of leading batch dims ``...`` (sequences, heads), counted from the end, and the checkers try zero,
one and two of them and the shapes the lab's later cells use (``_LATER_LEADS``):

1. ``ssm_scan(x [..., T, P], a [..., T], b [..., T, N], c [..., T, N]) -> y [..., T, P]``: the recurrence
   ``h_t = exp(a_t) h_{t-1} + x_t b_t^T`` (``h`` is ``[..., P, N]``, starts at 0), ``y_t = h_t c_t``.
2. ``decay_mask(a [..., T]) -> L [..., T, T]``: ``L[i, j] = exp(a_{j+1} + ... + a_i)`` for ``i >= j``, else 0, with
   the segment sums built directly (a masked cumsum, as ``echo_tutor.ssm.segsum``), not as the difference
   ``cumsum(a)_i - cumsum(a)_j``, which loses the small sums near the diagonal in float32 on long sequences.
3. ``ssd_quadratic(x, a, b, c) -> y [..., T, P]``: the same outputs as 1 in one matrix product,
   ``y = ((C B^T) o L) x``: attention whose mask decays.
4. ``ssd_chunked(x, a, b, c, chunk) -> y [..., T, P]`` (open-ended): Mamba-2's chunked SSD algorithm, written
   from 1-3: the quadratic form inside each chunk of ``chunk`` tokens (the last may be shorter), a state
   ``[..., P, N]`` carried across chunks by a loop over the chunks only. The checker compares it with the
   recurrence on awkward lengths, refuses a call to ``ssm_scan`` (a token loop is not the chunked algorithm),
   and watches the tensor operations it makes: their number must not grow with the chunk's length (no loop
   over tokens) and no tensor may be ``T x T`` (no quadratic form over the whole sequence).

This module holds the checkers of exercises 1-3. The solutions and the helpers the checkers share live in
:mod:`echo_tutor.labs.lab01_common`, exercise 4's checker in :mod:`echo_tutor.labs.lab01_chunked`; both are
re-exported here (the lab, the grader and the tests import every name from ``lab01``).
"""

from __future__ import annotations

import torch

from . import (ExerciseError, NotAttempted, call_student, checker, close, expect_tensor, fresh_generator, leading_dims,
               passed)
from .lab01_chunked import _CHUNK_CASES, _CHUNK_MISTAKES, _chunked_variant, check_ssd_chunked
from .lab01_common import (_LATER_LEADS, _decay_mask_solution, _first_failure, _inputs, _shapes,
                           _ssd_chunked_solution, _ssd_quadratic_solution, _ssm_scan_solution)

__all__ = [
    "_ssm_scan_solution", "_decay_mask_solution", "_ssd_quadratic_solution", "_ssd_chunked_solution",
    "check_ssm_scan", "check_decay_mask", "check_ssd_quadratic", "check_ssd_chunked",
    "_LATER_LEADS", "_inputs", "_scan_variants", "_chunked_variant", "_CHUNK_MISTAKES", "_CHUNK_CASES",
]


# ---------------------------------------------------------------------------------------------- checkers
def _check_sequence_fn(name, fn, solution, typical):
    """``fn(x, a, b, c) -> [..., T, P]`` on every leading shape: shape, causality (inputs from t=6 on changed),
    values; the typical mistakes are named on the no-leading-dims case."""
    g, seed = fresh_generator()
    ok, failures = [], []
    for lead in leading_dims(*_LATER_LEADS):
        x, a, b, c = _inputs(g, lead)
        T, P = x.shape[-2:]
        where = _shapes(x, a, b, c)
        try:
            out = expect_tensor(name, call_student(name, fn, x, a, b, c), (*lead, T, P), "[..., T, P]")
            x2, b2 = x.clone(), b.clone()
            x2[..., 6:, :] += 1.0
            b2[..., 6:, :] += 1.0
            out2 = expect_tensor(name, call_student(name, fn, x2, a, b2, c), (*lead, T, P), "[..., T, P]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            failures.append((lead, f"{e} (with {where})", ""))
            continue
        if not close(out[..., :6, :], out2[..., :6, :], 1e-10):
            failures.append((lead, f"{name}: not causal: outputs before t=6 changed when only inputs from t=6 on "
                                   f"changed (with {where})", " y_t may depend on tokens 0..t only."))
            continue
        want = solution(x, a, b, c)
        if close(out, want):
            ok.append(lead)
            continue
        hint = next((h for h, wrong in typical(x, a, b, c).items() if close(out, wrong)), "") if not lead else ""
        failures.append((lead, f"{name}: wrong values with {where}: max abs error {(out - want).abs().max():.3g}",
                         hint))
    _first_failure(name, failures, ok, seed)
    return passed(name)


def _scan_variants(x, a, b, c):
    def run(decay, read_before):
        h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])
        ys = []
        for t in range(x.shape[-2]):
            read = (h @ c[..., t, :, None])[..., 0]
            h = decay(a[..., t, None, None]) * h + x[..., t, :, None] * b[..., t, None, :]
            ys.append(read if read_before else (h @ c[..., t, :, None])[..., 0])
        return torch.stack(ys, dim=-2)

    return {
        " You multiply by a_t itself: the decay factor is exp(a_t) (a_t = A dt is a log-decay, <= 0).": run(lambda z: z, False),
        " It looks like y_t reads the state before x_t is written: update h first, then read y_t = h_t c_t.":
            run(torch.exp, True),
        " The state is never decayed: h_t = exp(a_t) h_{t-1} + x_t b_t^T.": run(lambda z: torch.ones_like(z), False),
    }


@checker()
def check_ssm_scan(fn) -> None:
    """Check ``fn(x [..., T, P], a [..., T], b [..., T, N], c [..., T, N]) -> [..., T, P]`` against the SSM
    recurrence, with zero, one and two leading dims and the lab's (4,)."""
    return _check_sequence_fn("ssm_scan", fn, _ssm_scan_solution, _scan_variants)


# The long-sequence test of decay_mask: float32, T tokens with a_t uniform in [-2, 0]. The exact form (segment
# sums built directly) stays within ~3e-8 of a float64 reference; the cumsum difference misses by ~1e-5.
_LONG_T, _LONG_TOL = 512, 1e-6


def _mask_variants(a):
    cs = torch.cumsum(a, -1)
    diff = cs[..., :, None] - cs[..., None, :]  # cumsum_i - cumsum_j
    return {
        " The diagonal should be exp(0) = 1: the sum runs over a_{j+1} .. a_i, so it excludes a_j.":
            torch.tril(torch.exp(diff + a[..., None, :])),
        " That is the sum itself: the mask is its exponential.": torch.tril(diff),
        " The decay runs the wrong way: L[i, j] multiplies what token j wrote, seen from token i >= j.":
            torch.tril(torch.exp(-diff)),
    }


@checker()
def check_decay_mask(fn) -> None:
    """Check ``fn(a [..., T]) -> L [..., T, T]``, ``L[..., i, j] = exp(a_{j+1} + ... + a_i)`` on and below the
    diagonal: values on short float64 sequences with zero, one and two leading dims (and the lab's), then
    accuracy on a long, strongly decaying float32 one (max abs error ``<= 1e-6`` against a float64 reference),
    which the cumsum difference ``exp(s_i - s_j)`` does not reach."""
    name = "decay_mask"
    g, seed = fresh_generator()
    T = 7
    ok, failures = [], []
    for lead in leading_dims(*_LATER_LEADS):
        a = -torch.rand(*lead, T, generator=g, dtype=torch.float64)
        where = f"a {tuple(a.shape)}"
        try:
            out = expect_tensor(name, call_student(name, fn, a), (*lead, T, T), "[..., T, T]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            failures.append((lead, f"{e} (with {where})", ""))
            continue
        want = _decay_mask_solution(a)
        if torch.triu(out, 1).abs().max() > 1e-12:
            failures.append((lead, f"{name}: entries above the diagonal must be 0 (a token cannot read later "
                                   f"tokens); with {where}", ""))
            continue
        if close(out, want):
            ok.append(lead)
            continue
        hint = next((h for h, wrong in _mask_variants(a).items() if close(out, wrong)), "") if not lead else ""
        failures.append((lead, f"{name}: wrong values with {where}: max abs error {(out - want).abs().max():.3g}",
                         hint))
    _first_failure(name, failures, ok, seed)

    # accuracy where it matters: a long chunk of strongly decaying float32 log-decays
    g, seed = fresh_generator()
    a = -2 * torch.rand(_LONG_T, generator=g, dtype=torch.float32)
    ref = _decay_mask_solution(a.double())
    reach = f" Over T={_LONG_T} float32 tokens cumsum(a) reaches {float(torch.cumsum(a, 0)[-1]):.0f}"
    fix = (" Build each a_{j+1} + ... + a_i as a sum of its own terms, never as a difference of two long running "
           "sums: down column j each row i adds one term, a_i, so one cumsum down the rows of the right T x T "
           "tensor gives them all; then exponentiate and zero the entries above the diagonal.")
    try:
        out = expect_tensor(name, call_student(name, fn, a), (_LONG_T, _LONG_T), "[T, T]")
    except NotAttempted:
        raise
    except ExerciseError as e:
        extra = ""
        if "NaN or Inf" in str(e):
            extra = (f"{reach}: exp of sums that large underflows or overflows (exp(cumsum_i) / exp(cumsum_j) "
                     f"is 0/0; exp(cumsum_i - cumsum_j) above the diagonal is inf, and inf * 0 is NaN).{fix}")
        raise ExerciseError(f"{e} (on a long float32 sequence, seed {seed}).{extra}") from None
    err = float((out.double() - ref).abs().max())
    if err > _LONG_TOL:
        raise ExerciseError(f"{name}: right on short float64 sequences, but inexact on a long float32 one "
                            f"(seed {seed}): max abs error {err:.2g} against a float64 reference, allowed "
                            f"{_LONG_TOL:g}.{reach}: exp(cumsum_i - cumsum_j) subtracts two large numbers, and "
                            f"the small segment sums near the diagonal (the largest entries of L) lose their "
                            f"digits.{fix}")
    return passed(name)


@checker(forbid=("ssm_scan",))
def check_ssd_quadratic(fn) -> None:
    """Check ``fn(x, a, b, c) -> [..., T, P]`` equals the recurrence through ``((C B^T) o L) x``, with zero, one
    and two leading dims and the lab's (4,)."""

    def typical(x, a, b, c):
        L = _decay_mask_solution(a)
        return {
            " That is B C^T: scores[i, j] = c_i . b_j (token i reads with c_i what token j wrote with b_j).":
                ((b @ c.mT) * L) @ x,
            " Without the decay mask this is plain causal linear attention: multiply the scores by L.":
                torch.tril(c @ b.mT) @ x,
        }

    return _check_sequence_fn("ssd_quadratic", fn, _ssd_quadratic_solution, typical)
