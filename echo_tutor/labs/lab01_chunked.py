"""Lab 01, exercise 4 (open-ended): the checker of ``ssd_chunked(x, a, b, c, chunk)``, Mamba-2's chunked SSD
algorithm (see :mod:`echo_tutor.labs.lab01`, which re-exports it): values against the recurrence on awkward
lengths, the typical chunk-boundary mistakes named, and the algorithm itself, watched through the tensor
operations it makes."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from . import (ExerciseError, NotAttempted, call_student, checker, close, expect_tensor, fresh_generator, leading_dims,
               passed)
from .lab01_common import _LATER_LEADS, _decay_mask_solution, _first_failure, _inputs, _shapes, _ssm_scan_solution

__all__ = ["check_ssd_chunked", "_chunked_variant", "_CHUNK_MISTAKES", "_CHUNK_CASES"]


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
    """Counts the tensor operations made inside it, the numbers held by the tensors they returned (all of them
    together: a measure of the work) and the largest such tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.ops, self.elements, self.largest = 0, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.elements += t.numel()
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
    does), with short chunks no tensor may hold T x T numbers (the quadratic form over the whole sequence), and
    with the chunk fixed, the work (the numbers held by every tensor the function produces) must grow in step
    with T, not as T^2 (each token reading every earlier token through a mask over the prefix, in chunk-sized
    blocks, instead of through the state carried from the chunk before). Honest chunked scans, the lab's loop
    over chunks and the loop-free Mamba-2 form (all chunks at once, the state passed by a small chunk-to-chunk
    decay matrix), grow about 4x and 4.1x from T = 512 to 2,048 at chunk 32; the prefix mask grows about 15x."""
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
    _check_chunked_work(name, fn, g, seed)
    return passed(name)


def _check_chunked_work(name: str, fn, g, seed: int) -> None:
    """The three checks of ``ssd_chunked``'s algorithm (see its checker): no token loop, no T x T tensor, and work
    that grows linearly in T at a fixed chunk."""
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
    # ... nor one computed in chunk-sized blocks: the work must grow linearly in T at a fixed chunk
    work, chunk = {}, 32
    for T in (512, 2048):
        x, a, b, c = _inputs(g, (), T=T, P=2, N=3)
        with _CountOps() as count:
            _call_chunked(name, fn, x, a, b, c, chunk)
        work[T] = count.elements
    if work[2048] > 8 * work[512]:  # T^1.5 between them: a chunked scan grows ~4x, a prefix mask ~16x
        raise ExerciseError(
            f"{name}: right values, but not the chunked algorithm (seed {seed}): in chunks of {chunk}, the tensors it "
            f"produced held {work[512]:,d} numbers in all for T = 512 tokens and {work[2048]:,d} for T = 2,048: four "
            f"times the tokens, {work[2048] / work[512]:.1f} times the work, so the work grows like T^2, not like T. "
            "Each chunk reads every earlier token directly (a decay mask or score block over the whole prefix, "
            "whatever the blocks' size) and no state crosses the chunks. In the chunked algorithm a chunk reads the "
            "earlier chunks only through the state h [..., P, N] that entered it, so each chunk costs the same, "
            "O(chunk^2 + chunk P N), wherever it sits in the sequence.")
