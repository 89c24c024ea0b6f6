"""Lab 01: the reference solutions of the four exercises (see :mod:`echo_tutor.labs.lab01`, which re-exports
them), the leading shapes the lab's later cells use, and the input and failure helpers the checkers of
:mod:`echo_tutor.labs.lab01` and :mod:`echo_tutor.labs.lab01_chunked` share."""

from __future__ import annotations

import torch

from . import ExerciseError, batch_dims_hint

__all__ = ["_ssm_scan_solution", "_decay_mask_solution", "_ssd_quadratic_solution", "_ssd_chunked_solution",
           "_LATER_LEADS", "_inputs", "_shapes", "_first_failure"]

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


# ---------------------------------------------------------------------------------------------- checker helpers
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
