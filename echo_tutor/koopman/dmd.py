"""Dynamic mode decomposition from snapshots, and small linear systems with known spectra to test it on."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._checks import check_int, check_tensor
from ..errors import BadArgumentError

__all__ = ["DMDResult", "dmd", "damped_rotation", "oscillators"]


class DMDResult(NamedTuple):
    operator: torch.Tensor  # [d, d]    A with y ~ A x (rank-truncated when rank is given)
    eigenvalues: torch.Tensor  # [m]    complex, sorted by decreasing modulus
    modes: torch.Tensor  # [d, m]       complex DMD modes (columns), same order



def dmd(X: torch.Tensor, Y: torch.Tensor, eps: float = 0.0, rank: int | None = None) -> DMDResult:
    """Dynamic mode decomposition from snapshot pairs.

    Fits ``y_i ~ A x_i`` by (ridge) least squares: ``A = (sum y x^T)(sum x x^T + eps I)^-1`` — the
    same estimate SKA keeps as ``M G^-1`` — then eigen-decomposes it.

    Args:
        X: ``[N, d]`` snapshots x_i (rows; time runs down the rows).
        Y: ``[N, d]`` their successors y_i (for a trajectory: ``X = Z[:-1], Y = Z[1:]``).
        eps: ridge strength (>= 0).
        rank: keep the leading ``rank`` singular directions of X (exact DMD, Tu et al. 2014); None for all.
    Returns:
        ``DMDResult(operator [d, d], eigenvalues [m], modes [d, m])``, eigenvalues by decreasing modulus.

    Example:
        >>> th, rho = 0.3, 0.9
        >>> R = rho * torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        >>> Z = torch.stack([torch.linalg.matrix_power(R, t) @ torch.tensor([1., 0.]) for t in range(20)])
        >>> dmd(Z[:-1], Z[1:]).eigenvalues      # rho * exp(+-i th)
    """
    check_tensor("X", X, 2, layout="[N, d]")
    check_tensor("Y", Y, 2, layout="[N, d]")
    if X.shape != Y.shape:
        raise BadArgumentError(f"Y must have the same shape as X [N, d], got X {tuple(X.shape)} and Y {tuple(Y.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise BadArgumentError(f"eps must be a number >= 0, got {eps!r}")
    N, d = X.shape
    if rank is not None:
        check_int("rank", rank, min_value=1)
        if rank > min(N, d):
            raise BadArgumentError(f"rank must be <= min(N, d) = {min(N, d)}, got {rank}")
    if rank is None:
        if eps == 0:  # plain least squares, without squaring X's condition number
            A = torch.linalg.lstsq(X, Y).solution.T  # X A^T ~ Y
        else:
            Gx = X.T @ X + eps * torch.eye(d, dtype=X.dtype, device=X.device)  # sum x x^T + eps I
            A = torch.linalg.solve(Gx, X.T @ Y).T  # (sum y x^T) Gx^-1
        ev, modes = torch.linalg.eig(A)
    else:
        # exact DMD: project on the leading singular directions of the snapshot matrix X^T = U S V^T
        U, S, Vh = torch.linalg.svd(X.T, full_matrices=False)
        U, S, V = U[:, :rank], S[:rank], Vh[:rank].T
        Sinv = S / (S**2 + eps)  # ridge-regularised inverse singular values
        A_tilde = U.T @ Y.T @ V * Sinv  # [rank, rank]
        ev, W = torch.linalg.eig(A_tilde)
        cdt = ev.dtype
        modes = (Y.T @ V * Sinv).to(cdt) @ W  # [d, rank]
        A = U @ A_tilde @ U.T
    order = ev.abs().argsort(descending=True)
    return DMDResult(A, ev[order], modes[:, order])



def damped_rotation(theta: float, rho: float, steps: int, noise: float = 0.0, seed: int = 0,
                    x0: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """A 2-D trajectory ``z_{t+1} = rho R(theta) z_t``, observed with Gaussian noise of std ``noise``.

    Returns ``[steps, 2]`` (float64). The true eigenvalues are ``rho exp(+-i theta)``."""
    check_int("steps", steps, min_value=2)
    if not (rho > 0) or noise < 0:
        raise BadArgumentError(f"rho must be > 0 and noise >= 0, got rho={rho}, noise={noise}")
    R = rho * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]], dtype=torch.float64)
    z = [torch.tensor(x0, dtype=torch.float64)]
    for _ in range(steps - 1):
        z.append(R @ z[-1])
    Z = torch.stack(z)
    if noise:
        Z = Z + noise * torch.randn(Z.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Z



def oscillators(thetas: list[float], rhos: list[float], steps: int, dim: int | None = None, noise: float = 0.0,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A sum of decaying oscillators observed through a random linear map.

    Each pair (theta_i, rho_i) is a 2-D damped rotation; together they form a ``2m``-dim linear system,
    observed in ``dim`` (default ``2m``) dimensions as ``y_t = W z_t + noise``. Returns the observations
    ``[steps, dim]`` and the true eigenvalues ``[2m]`` (complex128)."""
    if len(thetas) != len(rhos) or not thetas:
        raise BadArgumentError(f"thetas and rhos must be non-empty lists of equal length, got {len(thetas)} and {len(rhos)}")
    m = len(thetas)
    dim = dim or 2 * m
    check_int("dim", dim, min_value=1)
    g = torch.Generator().manual_seed(seed)
    A = torch.zeros(2 * m, 2 * m, dtype=torch.float64)
    eig = []
    for i, (th, rh) in enumerate(zip(thetas, rhos)):
        A[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = rh * torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        eig += [rh * complex(math.cos(th), math.sin(th)), rh * complex(math.cos(th), -math.sin(th))]
    W = torch.randn(dim, 2 * m, generator=g, dtype=torch.float64)
    z = torch.randn(2 * m, generator=g, dtype=torch.float64)
    Y = []
    for _ in range(steps):
        Y.append(W @ z)
        z = A @ z
    Y = torch.stack(Y)
    if noise:
        Y = Y + noise * torch.randn(Y.shape, generator=g, dtype=torch.float64)
    return Y, torch.tensor(eig, dtype=torch.complex128)

