"""The linear algebra SKA's references, its kernel twins and the Koopman tools share: written once.

* :func:`safe_cholesky` -- ``G = L L^T`` with a jitter fallback for the rare rounding failure.
* :func:`whiten` -- the whitened Koopman operator ``A_w = L^-1 M L^-T`` (similar to ``A = M G^-1``).
* :func:`sigma_max` -- the largest singular value by detached power iterations (the spectral norm).
* :func:`exclusive_prefix` -- what chunk ``c`` reads in chunk mode: the state plus every chunk before ``c``.
"""

from __future__ import annotations

import torch

from .._checks import reads_on_host

__all__ = ["safe_cholesky", "whiten", "sigma_max", "exclusive_prefix"]


def safe_cholesky(G: torch.Tensor, max_tries: int = 8) -> torch.Tensor:
    """Cholesky factor ``L`` of ``G [..., r, r]`` (``G = L L^T``), with a jitter fallback.

    ``G`` is positive definite in exact arithmetic (``eps > 0``), but with a tiny ``eps`` and fewer keys
    than ``r`` rounding can make it fail. Only the failing matrices get jitter, growing tenfold per try
    from ``sqrt(machine eps) * mean(diag G)``. Where the host may not read ``info``
    (:func:`echo_tutor._checks.reads_on_host`: CUDA tensors, torch.compile) one fixed retry replaces the loop.
    """
    L, info = torch.linalg.cholesky_ex(G)
    host = reads_on_host(info)
    if host and not bool((info != 0).any()):
        return L  # the common case on CPU: nothing more to compute
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    scale = G.detach().diagonal(dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1.0)[..., None, None]
    base = torch.finfo(G.dtype).eps ** 0.5
    if not host:
        # No host read (CUDA, torch.compile): one retry for every matrix, its result kept only where the first
        # factorisation failed, with the jitter of the third eager try. About 6% of a chunk-mode forward on CPU.
        bad = (info != 0)[..., None, None]
        L2, _ = torch.linalg.cholesky_ex(torch.where(bad, G + base * 100.0 * scale * eye, G))
        return torch.where(bad, L2, L)
    Gj = G
    for i in range(max_tries):
        bad = (info != 0)[..., None, None]
        Gj = torch.where(bad, Gj + base * (10.0**i) * scale * eye, Gj)
        L, info = torch.linalg.cholesky_ex(Gj)
        if not bool((info != 0).any()):
            return L
    raise FloatingPointError("SKA: could not factorise the Gram matrix even with jitter (are the keys finite?)")


def whiten(M: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """The whitened Koopman operator ``A_w = L^-1 M L^-T`` from ``M`` and the Cholesky factor ``L`` of ``G``.

    ``A_w`` is similar to the one-step key predictor ``A = M G^-1`` (``A = L A_w L^-1``): same eigenvalues,
    and ``L A_w^K L^-1 = A^K``. Shapes: M, L ``[..., r, r]`` -> ``[..., r, r]``."""
    Lm = torch.linalg.solve_triangular(L, M, upper=False)  # L^-1 M
    return torch.linalg.solve_triangular(L, Lm.transpose(-1, -2), upper=False).transpose(-1, -2)  # L^-1 M L^-T


def sigma_max(A: torch.Tensor, iters: int | None = 6) -> torch.Tensor:
    """Largest singular value of ``A [..., r, r]`` -> ``[...]``, by ``iters`` power iterations on
    ``A^T A`` from a fixed start (deterministic), or exactly (SVD) when ``iters is None``. Detached:
    the paper normalises by a stop-gradient estimate."""
    A = A.detach()
    if iters is None:
        return torch.linalg.matrix_norm(A, ord=2)
    x = torch.ones(A.shape[:-1], dtype=A.dtype, device=A.device)  # [..., r]
    x = x / x.norm(dim=-1, keepdim=True)
    for _ in range(iters):
        x = torch.einsum("...ji,...j->...i", A, torch.einsum("...ij,...j->...i", A, x))  # A^T A x
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return torch.einsum("...ij,...j->...i", A, x).norm(dim=-1)



def exclusive_prefix(X0: torch.Tensor, Xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``X0`` plus the exclusive cumulative sum of ``Xc`` over chunks (dim 1).

    Shapes: X0 ``[N, *E]`` (what the state already holds), Xc ``[N, nc, *E]`` (per-chunk sums). Returns
    (prefix ``[N, nc, *E]``: what chunk c reads, the state plus chunks ``< c``; total ``X0 + sum_c Xc``
    ``[N, *E]``: the state after the last chunk)."""
    csum = Xc.cumsum(1)
    prefix = X0[:, None] + torch.cat([torch.zeros_like(Xc[:, :1]), csum[:, :-1]], 1)
    return prefix, X0 + csum[:, -1]
