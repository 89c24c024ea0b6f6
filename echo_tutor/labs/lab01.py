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
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from . import (ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, close, expect_tensor,
               fresh_generator, leading_dims, passed)

__all__ = [
    "_ssm_scan_solution", "_decay_mask_solution", "_ssd_quadratic_solution", "_ssd_chunked_solution",
    "check_ssm_scan", "check_decay_mask", "check_ssd_quadratic", "check_ssd_chunked",
]

# The leading dims the lab's later cells call the exercises with, beyond (), (3,), (2, 3): section 2c times
# ssm_scan and ssd_chunked on 4 heads of one long sequence, [4, T, P].
_LATER_LEADS: tuple[tuple[int, ...], ...] = ((4,),)


# ---------------------------------------------------------------------------------------------- solutions
def _ssm_scan_solution(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])  # [..., P, N]
    ys = []
    for t in range(x.shape[-2]):
        # decay the old state, then write x_t b_t^T (an outer product per leading index)
        h = torch.exp(a[..., t, None, None]) * h + x[..., t, :, None] * b[..., t, None, :]
        ys.append((h @ c[..., t, :, None])[..., 0])  # read after writing: y_t sees x_t   [..., P]
    return torch.stack(ys, dim=-2)  # [..., T, P]


def _decay_mask_solution(a: torch.Tensor) -> torch.Tensor:
    T = a.shape[-1]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)  # i > j
    terms = a[..., :, None].expand(*a.shape, T).masked_fill(~below, 0)  # terms[..., i, j] = a_i where i > j
    seg = torch.cumsum(terms, dim=-2)  # seg[..., i, j] = a_{j+1} + ... + a_i (i >= j): no difference of large sums
    return torch.tril(torch.exp(seg))  # 0 above the diagonal


def _ssd_quadratic_solution(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((c @ b.mT) * _decay_mask_solution(a)) @ x


def _ssd_chunked_solution(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                          chunk: int) -> torch.Tensor:
    T = x.shape[-2]
    h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])  # the state entering the chunk   [..., P, N]
    ys = []
    for s in range(0, T, chunk):  # the loop runs over chunks only: ceil(T / chunk) steps
        xs, as_, bs, cs = x[..., s:s + chunk, :], a[..., s:s + chunk], b[..., s:s + chunk, :], c[..., s:s + chunk, :]
        L = _decay_mask_solution(as_)  # [..., S, S]: decay between the chunk's own tokens
        # (1) inside the chunk: the quadratic form, O(S^2) per chunk
        y = ((cs @ bs.mT) * L) @ xs  # [..., S, P]
        # (2) what the entering state adds: token l reads h decayed by a_s + ... + a_{s+l} (its own a included)
        y = y + torch.exp(torch.cumsum(as_, dim=-1))[..., None] * (cs @ h.mT)
        # (3) the state leaving the chunk: h decayed by the whole chunk, plus each token's write decayed by the
        #     a's after it, which is the last row of L: L[S-1, l] = exp(a_{l+1} + ... + a_{S-1})
        total = torch.exp(as_.sum(-1))[..., None, None]
        h = total * h + (xs * L[..., -1, :, None]).mT @ bs
        ys.append(y)
    return torch.cat(ys, dim=-2)  # [..., T, P]


# ---------------------------------------------------------------------------------------------- checkers
def _inputs(g: torch.Generator, lead=(), T=9, P=3, N=4, dtype=torch.float64):
    x = torch.randn(*lead, T, P, generator=g, dtype=dtype)
    a = -torch.rand(*lead, T, generator=g, dtype=dtype)
    b = torch.randn(*lead, T, N, generator=g, dtype=dtype)
    c = torch.randn(*lead, T, N, generator=g, dtype=dtype)
    return x, a, b, c


def _shapes(x, a, b, c) -> str:
    return f"x {tuple(x.shape)}, a {tuple(a.shape)}, b and c {tuple(b.shape)}"


def _first_failure(name: str, failures: list, ok: list, seed: int) -> None:
    """Raise the first lead's failure, with the batch-dims hint when other leads passed (a function right for
    some numbers of leading dims only)."""
    if not failures:
        return
    lead, message, typical_hint = failures[0]
    hint = batch_dims_hint(lead, ok) or typical_hint
    raise ExerciseError(f"{message} (seed {seed}).{hint}")


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


# ------------------------------------------------------------------------------------------- ssd_chunked
def _chunked_variant(x, a, b, c, chunk, *, carry=True, decay_carry=True, read_shift=0, end_off_by_one=False):
    """The chunked algorithm with one typical mistake (see ``_CHUNK_MISTAKES``)."""
    T = x.shape[-2]
    h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])
    ys = []
    for s in range(0, T, chunk):
        xs, as_, bs, cs = x[..., s:s + chunk, :], a[..., s:s + chunk], b[..., s:s + chunk, :], c[..., s:s + chunk, :]
        L = _decay_mask_solution(as_)
        y = ((cs @ bs.mT) * L) @ xs
        if carry:
            read = torch.cumsum(as_, dim=-1) + read_shift * as_[..., :1]
            y = y + torch.exp(read)[..., None] * (cs @ h.mT)
        to_end = L[..., -1, :] * (torch.exp(as_) if end_off_by_one else 1.0)
        total = torch.exp(as_.sum(-1))[..., None, None] if decay_carry else 1.0
        h = total * h + (xs * to_end[..., None]).mT @ bs
        ys.append(y)
    return torch.cat(ys, dim=-2)


_CHUNK_MISTAKES = {
    " The state is not carried across chunks: every chunk starts from zero, so a token never reads the tokens "
    "of earlier chunks. Keep a state h [..., P, N]: chunk k's outputs add what h (left by chunks 0..k-1, decayed "
    "to each token) contributes, and chunk k then updates h for the next chunk.":
        dict(carry=False),
    " The carried state does not fade across a chunk: the state leaving a chunk is exp(a_s + ... + a_e) times "
    "the state that entered it (every token of the chunk decays it once), plus what the chunk wrote.":
        dict(decay_carry=False),
    " Off by one at the chunk boundary, one decay too few: the token at position l of a chunk reads the entering "
    "state decayed by a_s + ... + a_(s+l), its own a included (in the recurrence h_t = exp(a_t) h_(t-1) + ..., "
    "token t decays the old state before reading it): an inclusive cumsum over the chunk, not an exclusive one.":
        dict(read_shift=-1),
    " One decay too many at the chunk boundary: the entering state is decayed by the chunk's first a twice (once "
    "before the chunk and once again through the cumsum). Token l of the chunk reads it decayed by "
    "a_s + ... + a_(s+l), each a once.":
        dict(read_shift=1),
    " Off by one in the decay to the chunk's end: what token t writes fades by a_(t+1) + ... + a_e, the a's of "
    "the tokens after it (exclusive of a_t, which fades only what was written before t), so the last token's "
    "write leaves the chunk undecayed. That is the last row of the chunk's decay mask.":
        dict(end_off_by_one=True),
}

# (T, chunk) cases, the first with every typical mistake showing (three chunks, the last one short); then a
# multiple, chunk = 1 (one chunk per token), chunk = T, chunk > T, and a single token.
_CHUNK_CASES = ((11, 4), (12, 3), (7, 1), (6, 6), (5, 9), (1, 4))


class _CountOps(TorchFunctionMode):
    """Counts the tensor operations made inside it and records the largest tensor one of them returned."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.largest = 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _call_chunked(name, fn, *args):
    """``call_student``, with a word on a refused call to a lab solution standing in for an unfinished
    exercise (the learner's own ``decay_mask`` or ``ssd_quadratic`` that has not passed yet)."""
    try:
        return call_student(name, fn, *args)
    except NotAttempted:
        raise
    except ExerciseError as e:
        if "_decay_mask_solution" in str(e) or "_ssd_quadratic_solution" in str(e):
            raise ExerciseError(f"{e} Here that is the reference solution standing in for your own `decay_mask` or "
                                "`ssd_quadratic`, which has not passed its checker yet: finish that exercise first, "
                                "or write the within-chunk product here.") from None
        raise


@checker(forbid=("ssm_scan",))
def check_ssd_chunked(fn) -> None:
    """Check ``fn(x [..., T, P], a [..., T], b [..., T, N], c [..., T, N], chunk) -> [..., T, P]``, the chunked SSD
    algorithm: equal to the recurrence (the lab's ``_ssm_scan_solution``) in float64 with zero, one and two
    leading dims and the lab's (4,), for T not a multiple of the chunk, chunk = 1, chunk = T, chunk > T and T = 1;
    the typical chunk-boundary mistakes are named. Then two checks of the algorithm itself: with the number of
    chunks fixed, doubling the chunk's length must not grow the number of tensor operations (a loop over tokens
    does), and with short chunks no tensor may hold T x T numbers (the quadratic form over the whole sequence)."""
    name = "ssd_chunked"
    g, seed = fresh_generator()
    ok, failures = [], []
    for lead in leading_dims(*_LATER_LEADS):
        for T, chunk in _CHUNK_CASES:
            x, a, b, c = _inputs(g, lead, T=T)
            where = f"{_shapes(x, a, b, c)}, chunk={chunk}"
            try:
                out = expect_tensor(name, _call_chunked(name, fn, x, a, b, c, chunk), (*lead, T, x.shape[-1]),
                                    "y [..., T, P]")
            except NotAttempted:
                raise
            except ExerciseError as e:
                failures.append((lead, f"{e} (with {where})", ""))
                break
            if out.dtype != x.dtype:
                failures.append((lead, f"{name}: returns {out.dtype} for {x.dtype} inputs (with {where})",
                                 " Keep the inputs' dtype: create the state with x.new_zeros(...)."))
                break
            want = _ssm_scan_solution(x, a, b, c)
            if not close(out, want):
                hint = ""
                if not lead:
                    hint = next((h for h, kw in _CHUNK_MISTAKES.items()
                                 if close(out, _chunked_variant(x, a, b, c, chunk, **kw))), "")
                    if not hint and close(out[..., :chunk, :], want[..., :chunk, :]):
                        hint = (" The first chunk is right and a later one is not: look at what crosses the chunk "
                                "boundary (the state, and how much it has decayed).")
                failures.append((lead, f"{name}: differs from the recurrence with {where}: max abs error "
                                       f"{(out - want).abs().max():.3g}", hint))
                break
        else:
            ok.append(lead)
    _first_failure(name, failures, ok, seed)

    # the algorithm: a loop over chunks, not over tokens ...
    counts = []
    for T, chunk in ((256, 64), (512, 128)):  # 4 chunks each, twice the tokens per chunk
        x, a, b, c = _inputs(g, (), T=T, P=2, N=3)
        with _CountOps() as count:
            _call_chunked(name, fn, x, a, b, c, chunk)
        counts.append(count.ops)
    if counts[1] > 1.5 * counts[0] + 32:
        raise ExerciseError(
            f"{name}: right values, but not the chunked algorithm (seed {seed}): with 4 chunks of 64 tokens it made "
            f"{counts[0]:,d} tensor operations, with 4 chunks of 128 tokens {counts[1]:,d}. The work grows with the tokens per "
            "chunk, so something loops over tokens (the recurrence, or a mask built row by row). Loop over the "
            "chunks only: inside a chunk, one masked matrix product (section 2's quadratic form) does every token "
            "at once.")
    # ... and no quadratic form over the whole sequence
    T, chunk = 256, 8
    x, a, b, c = _inputs(g, (), T=T, P=2, N=3)
    with _CountOps() as count:
        _call_chunked(name, fn, x, a, b, c, chunk)
    if count.largest >= T * T // 2:
        raise ExerciseError(
            f"{name}: right values, but not the chunked algorithm (seed {seed}): for T = {T} tokens in chunks of {chunk} it built a "
            f"tensor of {count.largest:,d} numbers, a T x T matrix (a decay mask or score matrix over the whole "
            f"sequence, T^2 = {T * T:,d}). The chunked algorithm never builds more than chunk x chunk per chunk: "
            "that is what makes it O(T chunk) instead of O(T^2).")
    return passed(name)
