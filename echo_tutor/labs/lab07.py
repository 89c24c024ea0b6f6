"""Lab 07 (Triton fast paths): exercises, checkers and solutions.

Array exercises take any number of leading batch dims ``[...]`` (heads, batch x heads); each checker tries
none, one and two, and the shapes the lab's later cells use.

1. ``chunk_gram(ok [..., T, r], kk [..., T, r], S) -> [..., T/S, r, r]``: each chunk's own Gram term
   ``sum_{s in chunk} ok_s kk_s^T`` (not a running sum), ``T`` a multiple of ``S``: the PyTorch twin of what
   ``echo_kernels.ska.chunk_stats`` computes for G.
2. ``chunk_gram_triton(ok [..., T, r], kk [..., T, r], S) -> [..., ceil(T/S), r, r]``: the same per-chunk
   Gram, computed by the learner's own ``@triton.jit`` kernel and its launcher (grid, strides, masks), for any
   ``T`` (the last chunk may be partial) and any ``r``; ``S`` a power of two >= 16. Checked in Triton's
   interpreter on a CPU and compiled on a GPU, on awkward sizes, NaN-poisoned memory around the inputs and
   strided views; the project's kernels are refused.
3. ``sherman_morrison(Ginv [..., r, r], k [..., r], a) -> [..., r, r]``: the inverse of ``G + a k k^T`` from
   ``G^-1`` (``a`` a float or a tensor of the leading shape), the rank-1 update the decode kernel keeps
   ``G^-1`` with.

This module holds exercise 3. Exercise 1 lives in :mod:`echo_tutor.labs.lab07_gram`, exercise 2 in
:mod:`echo_tutor.labs.lab07_triton`, the later leading shapes and the loop over them that the checkers share in
:mod:`echo_tutor.labs.lab07_common`; all are re-exported here (the lab, the grader and the tests import every
name from ``lab07``).
"""

import torch

from . import (ExerciseError, NotAttempted, call_student, checker, close, expect_tensor, fresh_generator, leading_dims,
               passed)
from .lab07_common import LATER_GRAM_LEADS, LATER_SM_LEADS, _over_leads
from .lab07_gram import _chunk_gram_solution, check_chunk_gram
from .lab07_triton import _chunk_gram_triton_solution, check_chunk_gram_triton

__all__ = ["_chunk_gram_solution", "_chunk_gram_triton_solution", "_sherman_morrison_solution", "check_chunk_gram",
           "check_chunk_gram_triton", "check_sherman_morrison", "LATER_GRAM_LEADS", "LATER_SM_LEADS"]


# ------------------------------------------------------------------------------------------ sherman_morrison
def _sherman_morrison_solution(Ginv, k, a):
    a = torch.as_tensor(a, dtype=Ginv.dtype, device=Ginv.device)       # a float or a tensor [...]
    g = (Ginv @ k[..., None])[..., 0]                                    # G^-1 k   [..., r]
    den = 1.0 + a * (k * g).sum(-1)                                      # 1 + a k^T G^-1 k   [...]
    return Ginv - (a / den)[..., None, None] * g[..., :, None] * g[..., None, :]


def _sm_hint(out, Ginv, k, a) -> str:
    a_ = torch.as_tensor(a, dtype=Ginv.dtype)[..., None, None]
    gk = (Ginv @ k[..., None])[..., 0]
    outer = gk[..., :, None] * gk[..., None, :]
    kg = (k * gk).sum(-1)[..., None, None]
    typical = {
        " Wrong sign: the update subtracts a (G^-1 k)(G^-1 k)^T / (1 + a k^T G^-1 k).":
            Ginv + a_ * outer / (1 + a_ * kg),
        " The denominator 1 + a k^T G^-1 k is missing.": Ginv - a_ * outer,
        " The weight a is missing (that is the inverse of G + k k^T).": Ginv - outer / (1 + kg),
        " The weight a is missing from the denominator: 1 + a k^T G^-1 k.": Ginv - a_ * outer / (1 + kg),
    }
    return next((h for h, w in typical.items() if out.shape == w.shape and close(out, w, 1e-8)), "")


@checker(forbid=("inv", "inv_ex", "inverse", "solve", "solve_ex", "pinv", "lstsq", "cholesky", "cholesky_ex",
                 "cholesky_inverse", "cholesky_solve", "solve_triangular", "decode_step", "decode"))
def check_sherman_morrison(fn) -> None:
    """Check ``fn(Ginv [..., r, r], k [..., r], a) -> (G + a k k^T)^-1`` against an explicit inverse, with zero,
    one and two leading dims (``a`` a float, or a tensor of the leading shape) and the decode cell's [1, 2]."""
    name = "sherman_morrison"
    g, seed = fresh_generator()
    r = 4
    data = {}
    # (lead, a given as a tensor of the leading shape): every leading shape with a float a, then a tensor a
    cases = [(lead, False) for lead in leading_dims(*LATER_SM_LEADS)] + [((2, 3), True)]

    def run_one(case):
        lead, a_tensor = case
        A = torch.randn(*lead, r, r, generator=g, dtype=torch.float64)
        G = A @ A.mT + torch.eye(r, dtype=torch.float64)
        k = torch.randn(*lead, r, generator=g, dtype=torch.float64)
        a_t = 0.3 + torch.rand(lead, generator=g, dtype=torch.float64)
        a = a_t if a_tensor else float(a_t.flatten()[0])
        a_t = torch.as_tensor(a, dtype=torch.float64).expand(lead)
        Ginv = torch.linalg.inv(G)
        where = f"Ginv {tuple(Ginv.shape)}, k {tuple(k.shape)}, a {'a tensor ' + str(lead) if a_tensor else 'a float'}"
        try:
            out = expect_tensor(name, call_student(name, fn, Ginv, k, a), (*lead, r, r), "[..., r, r]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            return False, f"{e} ({where})"
        want = torch.linalg.inv(G + a_t[..., None, None] * k[..., :, None] * k[..., None, :])
        if close(out, want, 1e-8):
            return True, ""
        data[case] = (out, Ginv, k, a)
        return False, f"{name}: not the inverse of G + a k k^T with {where}: max abs error {(out - want).abs().max():.3g}"

    def hint_of(case):
        got = data.get(case)
        hint = _sm_hint(*got) if got else ""
        if not hint and case[1]:
            hint = (" Here a is a tensor of the leading shape [...] (one weight per batch element): broadcast it "
                    "over the last two dims (a[..., None, None]) and over the denominator.")
        return hint

    _over_leads(cases, run_one, hint_of, seed)
    return passed(name)
