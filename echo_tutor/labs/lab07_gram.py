"""Lab 07, exercise 1: ``chunk_gram(ok, kk, S)``, each chunk's own Gram term in PyTorch: its solution, the typical
mistakes its checker names (:func:`_gram_hint`, which exercise 2's checker uses too) and its checker (see
:mod:`echo_tutor.labs.lab07`, which re-exports them)."""

import torch

from . import (ExerciseError, NotAttempted, call_student, checker, close, expect_tensor, fresh_generator, leading_dims,
               passed)
from .lab07_common import LATER_GRAM_LEADS, _over_leads

__all__ = ["_chunk_gram_solution", "_gram_hint", "check_chunk_gram"]


# ---------------------------------------------------------------------------------------------- chunk_gram
def _chunk_gram_solution(ok, kk, S):
    *lead, T, r = ok.shape
    ch = lambda x: x.reshape(*lead, T // S, S, x.shape[-1])  # noqa: E731  [..., nc, S, r]: chunk-major
    return torch.einsum("...csi,...csj->...cij", ch(ok), ch(kk))  # sum over the chunk's own tokens


def _gram_hint(out: torch.Tensor, ok: torch.Tensor, kk: torch.Tensor, S: int) -> str:
    want = _chunk_gram_solution(ok, kk, S)
    *lead, T, r = ok.shape
    nc = T // S
    interleaved = torch.einsum("...sci,...scj->...cij", ok.reshape(*lead, S, nc, r), kk.reshape(*lead, S, nc, r))
    typical = {
        " You return a running (inclusive) sum over chunks: each chunk's own term is wanted; the prefix is a "
        "separate step (b).": want.cumsum(-3),
        " Transposed: the term is ok_s kk_s^T (rows from ok), i.e. einsum '...si,...sj->...ij'.": want.mT,
        " That is the exclusive prefix (what chunk c reads), not the per-chunk term.":
            want.cumsum(-3) - want,
        " Your chunks are interleaved (token t went to chunk t % nc): split T as (nc, S), chunk-major, so that "
        "chunk c holds tokens c S ... c S + S - 1.": interleaved,
        " Every chunk holds the Gram of the whole sequence: sum over each chunk's S tokens only.":
            want.sum(-3, keepdim=True).expand_as(want),
    }
    if out.shape == want.shape:
        return next((h for h, w in typical.items() if close(out, w)), "")
    return ""


@checker(forbid=("chunk_stats", "_chunk_stats_kernel", "ska_chunked", "ska_chunked_ops", "stats_prefix",
                 "exclusive_prefix"))
def check_chunk_gram(fn) -> None:
    """Check ``fn(ok [..., T, r], kk [..., T, r], S) -> [..., T/S, r, r]`` with zero, one and two leading dims
    and the shapes the lab uses later."""
    name = "chunk_gram"
    g, seed = fresh_generator()
    S, nc, r = 4, 3, 3
    data = {}

    def run_one(case):
        lead = case[0]
        ok = torch.randn(*lead, nc * S, r, generator=g, dtype=torch.float64)
        kk = torch.randn(*lead, nc * S, r, generator=g, dtype=torch.float64)
        data[lead] = (ok, kk)
        where = f"ok, kk {tuple(ok.shape)}, S = {S}"
        try:
            out = expect_tensor(name, call_student(name, fn, ok, kk, S), (*lead, nc, r, r), "[..., T/S, r, r]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            return False, f"{e} ({where})"
        want = _chunk_gram_solution(ok, kk, S)
        if close(out, want):
            return True, ""
        data[lead] = (ok, kk, out)
        return False, f"{name}: wrong values with {where}: max abs error {(out - want).abs().max():.3g}"

    def hint_of(case):
        got = data.get(case[0], ())
        return _gram_hint(got[2], got[0], got[1], S) if len(got) == 3 else ""

    _over_leads([(lead, None) for lead in leading_dims(*LATER_GRAM_LEADS)], run_one, hint_of, seed)
    return passed(name)
