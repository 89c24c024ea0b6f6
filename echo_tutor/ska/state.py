"""SKA's state (:class:`SKAState`: the O(r^2) sufficient statistics of the key/value history) and the two ways
it grows: one token at a time (:func:`write_token`, decoding and the token-loop reference) and every prefix of a
sequence at once (:func:`token_statistics`, :func:`prefix_statistics`). Symbols as in ``reference.py``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int, check_positive, check_same, check_tensor

__all__ = ["SKAState", "prefix_statistics", "token_statistics", "write_token"]


# --------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------
@dataclass
class SKAState:
    """The constant-size state of SKA: sufficient statistics of the whole key/value history.

    Attributes:
        G: ``[B, H, r, r]`` ridge Gram matrix, ``eps*I`` included.
        M: ``[B, H, r, r]`` lag-one cross moment ``sum beta_t w_t w_{t-1} k_t k_{t-1}^T``.
        C: ``[B, H, P, r]`` value-key moment.
        k_prev: ``[B, H, r]`` the last key times its mask weight, ``w_{t-1} k_{t-1}`` (for M's next term).
        count: number of tokens absorbed so far (a Python int; aligns chunks across calls).
        key_scale: ``[B, H]`` or None: the running largest key norm, kept only by layers that use
            ``key_norm="seqmax"`` (the "optional scalar" of the paper's state).
        G_inv: ``[B, H, r, r]`` or None: ``G^-1``, kept only by the Triton decode path
            (``echo_kernels.ska.decode``, Sherman-Morrison updates); the references ignore and drop it.

    Its size is ``(2 r^2 + P r + r) * H`` floats per sequence whatever the number of tokens read; a KV
    cache for the same heads holds ``T (r + P) H`` floats.
    """

    G: torch.Tensor
    M: torch.Tensor
    C: torch.Tensor
    k_prev: torch.Tensor
    count: int = 0
    key_scale: torch.Tensor | None = None
    G_inv: torch.Tensor | None = None

    @classmethod
    def zeros(
        cls,
        batch: int,
        n_heads: int,
        rank: int,
        head_dim: int,
        *,
        eps: float = 1e-3,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "SKAState":
        """A fresh state: ``G = eps*I``, everything else zero."""
        check_int("batch", batch, min_value=1)
        check_int("n_heads", n_heads, min_value=1)
        check_int("rank", rank, min_value=1)
        check_int("head_dim", head_dim, min_value=1)
        check_positive("eps", eps)
        eye = torch.eye(rank, dtype=dtype, device=device)
        return cls(
            G=(eps * eye).expand(batch, n_heads, rank, rank).clone(),
            M=torch.zeros(batch, n_heads, rank, rank, dtype=dtype, device=device),
            C=torch.zeros(batch, n_heads, head_dim, rank, dtype=dtype, device=device),
            k_prev=torch.zeros(batch, n_heads, rank, dtype=dtype, device=device),
            count=0,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the state's tensors (independent of how many tokens were read)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, H, r, P)``."""
        B, H, P, r = self.C.shape
        return B, H, r, P

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.G, self.M, self.C, self.k_prev, self.key_scale, self.G_inv) if t is not None]

    def _map(self, fn) -> "SKAState":
        """The same state with ``fn`` applied to each tensor. Built field by field, not with
        ``dataclasses.replace``, which torch.compile cannot trace at the torch floor (Dynamo 2.4)."""
        opt = lambda t: None if t is None else fn(t)  # noqa: E731
        return SKAState(G=fn(self.G), M=fn(self.M), C=fn(self.C), k_prev=fn(self.k_prev), count=self.count,
                        key_scale=opt(self.key_scale), G_inv=opt(self.G_inv))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "SKAState":
        return self._map(lambda t: t.to(dtype=dtype, device=device))

    def detach(self) -> "SKAState":
        return self._map(torch.Tensor.detach)


def write_token(state: SKAState, k: torch.Tensor, v: torch.Tensor, omega: torch.Tensor | float = 1.0,
                w: torch.Tensor | float = 1.0) -> SKAState:
    """The state after writing one token: rank-1 updates of (G, M, C) and the new lagged key.

    Args:
        k: ``[B, H, r]`` key, v: ``[B, H, P]`` value (used as given).
        omega: ``beta_t w_t``, the write weight of the three terms: a float or ``[B, H]``.
        w: the mask weight ``w_t`` that the next token's M term sees this key with: a float or ``[B, H]``.
    Returns a new :class:`SKAState` (``count`` + 1); ``state`` is not changed.
    """
    a = omega[..., None, None] if isinstance(omega, torch.Tensor) else omega
    G = state.G + a * torch.einsum("bhi,bhj->bhij", k, k)
    M = state.M + a * torch.einsum("bhi,bhj->bhij", k, state.k_prev)  # k_prev = w_{t-1} k_{t-1}
    C = state.C + a * torch.einsum("bhp,bhj->bhpj", v, k)
    k_prev = (w[..., None] if isinstance(w, torch.Tensor) else w) * k
    return SKAState(G, M, C, k_prev, state.count + 1, state.key_scale)


def prefix_statistics(G, M, C, ok, kk, k_lag, ov):
    """Inclusive prefix sums of the rank-1 terms (written once: :func:`token_statistics` and the token mode of
    :func:`~echo_tutor.ska.reference.ska_chunked` call it) over the token axis (1) of ``ok, kk, k_lag`` ``[B, S, H, r]``
    and ``ov`` ``[B, S, H, P]``, added to the statistics ``G, M`` ``[B, H, r, r]``, ``C`` ``[B, H, P, r]``:
    every token's own statistics, ``[B, S, H, r, r]`` twice and ``[B, S, H, P, r]``."""
    Gt = G[:, None] + torch.einsum("bshi,bshj->bshij", ok, kk).cumsum(1)
    Mt = M[:, None] + torch.einsum("bshi,bshj->bshij", ok, k_lag).cumsum(1)
    Ct = C[:, None] + torch.einsum("bshp,bshj->bshpj", ov, kk).cumsum(1)
    return Gt, Mt, Ct


def token_statistics(k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None = None, *,
                     eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The statistics every token of a fresh sequence reads in ``mode="token"``: those over tokens ``<= t``.

    Args:
        k: ``[B, T, H, r]`` keys, v: ``[B, T, H, P]`` values (used as given; float32 or float64).
        weights: ``[B, T, H]`` mask weights ``w_t`` (G and C get ``w_t``, M gets ``w_t w_{t-1}``), or None for 1.
    Returns:
        ``G, M`` ``[B, T, H, r, r]`` and ``C`` ``[B, T, H, P, r]`` (``G`` includes ``eps I``). Memory is
        ``O(T H r^2)``: for long sequences :func:`ska_chunked` computes the same readout block by block.
    """
    check_tensor("k", k, 4, layout="[B, T, H, r]")
    check_tensor("v", v, 4, layout="[B, T, H, P]")
    check_same("v", v, (0, 1, 2), tuple(k.shape[:3]), "[B, T, H, P]")
    check_positive("eps", eps)
    B, T, H, r = k.shape
    w = torch.ones(B, T, H, dtype=k.dtype, device=k.device) if weights is None else weights.to(k.dtype)
    st = SKAState.zeros(B, H, r, v.shape[-1], eps=eps, dtype=k.dtype, device=k.device)
    kw = w[..., None] * k
    k_lag = torch.cat([st.k_prev[:, None], kw[:, :-1]], dim=1)
    return prefix_statistics(st.G, st.M, st.C, kw, k, k_lag, w[..., None] * v)
