"""The SSD scan of Mamba-2, twice: a token loop (the ground truth) and the chunked SSD algorithm.

Legend (Dao & Gu 2024, "Transformers are SSMs"; the minimal SSD listing's argument convention):

    x  [B, T, H, P]   inputs per head (already multiplied by dt in Mamba-2)
    a  [B, T, H]      per-step log decay, A * dt  (<= 0)
    b  [B, T, H, N]   input matrix B_t  (written into the state)
    c  [B, T, H, N]   output matrix C_t (reads the state)
    h  [B, H, P, N]   the state:  h_t = exp(a_t) h_{t-1} + x_t b_t^T,   y_t = h_t c_t

Unrolled, ``y_t = sum_{s<=t} exp(a_{s+1} + ... + a_t) (c_t . b_s) x_s``: attention with a decaying causal
mask, which is what the chunked algorithm computes block by block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_int, check_same, check_tensor
from ..errors import BadArgumentError

__all__ = ["ssd_recurrent", "ssd_chunked", "segsum"]


def _check(x, a, b, c, initial_state):
    check_tensor("x", x, 4, layout="[B, T, H, P]")
    check_tensor("a", a, 3, layout="[B, T, H]")
    check_tensor("b", b, 4, layout="[B, T, H, N]")
    check_tensor("c", c, 4, layout="[B, T, H, N]")
    Bn, T, H, P = x.shape
    if T < 1:
        raise BadArgumentError(f"x must hold at least one token (T >= 1), got shape {tuple(x.shape)}")
    check_same("a", a, (0, 1, 2), (Bn, T, H), "[B, T, H]")
    check_same("b", b, (0, 1, 2), (Bn, T, H), "[B, T, H, N]")
    check_same("c", c, (0, 1, 2, 3), tuple(b.shape), "[B, T, H, N] (same as b)")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 4, layout="[B, H, P, N]")
        check_same("initial_state", initial_state, (0, 1, 2, 3), (Bn, H, P, b.shape[-1]), "[B, H, P, N]")


def ssd_recurrent(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SSM recurrence, one token at a time.

    Args:
        x ``[B, T, H, P]``, a ``[B, T, H]``, b, c ``[B, T, H, N]``, initial_state ``[B, H, P, N]`` or None.
    Returns:
        y ``[B, T, H, P]`` and the final state ``[B, H, P, N]``.
    """
    _check(x, a, b, c, initial_state)
    Bn, T, H, P = x.shape
    h = x.new_zeros(Bn, H, P, b.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(T):
        h = torch.exp(a[:, t])[..., None, None] * h + torch.einsum("bhp,bhn->bhpn", x[:, t], b[:, t])
        ys.append(torch.einsum("bhpn,bhn->bhp", h, c[:, t]))
    return torch.stack(ys, dim=1), h


def segsum(a: torch.Tensor) -> torch.Tensor:
    """``[..., S] -> [..., S, S]`` with ``out[i, j] = a[j+1] + ... + a[i]`` for ``i >= j`` and ``-inf`` above
    the diagonal, so ``exp(segsum(a))`` is the decaying causal mask. Built from masked cumulative sums
    (not a difference of two cumsums), which keeps it exact for long, strongly decaying chunks."""
    S = a.shape[-1]
    rep = a[..., None, :].expand(*a.shape, S).transpose(-1, -2)  # rep[..., i, j] = a[i]
    strict = torch.tril(torch.ones(S, S, dtype=torch.bool, device=a.device), diagonal=-1)
    out = torch.cumsum(rep.masked_fill(~strict, 0), dim=-2)  # sum_{k in (j, i]} a[k]
    keep = torch.tril(torch.ones(S, S, dtype=torch.bool, device=a.device))
    return out.masked_fill(~keep, float("-inf"))


def ssd_chunked(
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    chunk_size: int = 64,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked SSD algorithm: quadratic (attention-like) inside chunks, recurrent across them.

    Same arguments and results as :func:`ssd_recurrent`, plus ``chunk_size``. Shapes:
    x ``[B, T, H, P]``, a ``[B, T, H]``, b, c ``[B, T, H, N]`` -> y ``[B, T, H, P]``, state ``[B, H, P, N]``.
    """
    _check(x, a, b, c, initial_state)
    check_int("chunk_size", chunk_size, min_value=1)
    Bn, T, H, P = x.shape
    N = b.shape[-1]
    S = chunk_size
    pad = (-T) % S
    if pad:  # padded steps: no input (x = b = 0) and no decay (a = 0), so the final state is unchanged
        x, b, c = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, b, c))
        a = F.pad(a, (0, 0, 0, pad))
    nc = (T + pad) // S
    x, b, c = (t.reshape(Bn, nc, S, H, -1) for t in (x, b, c))  # [B, nc, S, H, .]
    a = a.reshape(Bn, nc, S, H).permute(0, 3, 1, 2)  # [B, H, nc, S]
    a_cum = torch.cumsum(a, dim=-1)  # [B, H, nc, S]

    # (1) inside each chunk: y = (C B^T o L) x with the decaying causal mask L = exp(segsum(a))
    L = torch.exp(segsum(a))  # [B, H, nc, S, S]
    y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", c, b, L, x)

    # (2) each chunk's own contribution to the state at its end
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [B, H, nc, S]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", b, decay_to_end, x)  # [B, nc, H, P, N]

    # (3) the recurrence across chunks, on the nc chunk states only
    h0 = x.new_zeros(Bn, H, P, N) if initial_state is None else initial_state
    chunk_states = torch.cat([h0[:, None], chunk_states], dim=1)  # [B, nc+1, H, P, N]
    decay_chunk = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # [B, H, nc+1, nc+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, chunk_states)  # state entering chunk z (z = nc: final)
    entering, final = states[:, :-1], states[:, -1]

    # (4) what the state entering each chunk adds to its outputs
    decay_in = torch.exp(a_cum)  # [B, H, nc, S]
    y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", c, entering, decay_in)

    y = (y_diag + y_off).reshape(Bn, nc * S, H, P)[:, :T]
    return y, final
