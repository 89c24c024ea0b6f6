"""The Koopman operator of an SKA state: ``A = M G^-1``, its whitened twin ``A_w``, its spectrum."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_int
from ..errors import BadArgumentError
from ..ska.linalg import safe_cholesky, whiten
from ..ska.reference import SKAState

__all__ = ["KoopmanOperator", "koopman_operator", "koopman_spectrum", "mode_energies"]


class KoopmanOperator(NamedTuple):
    A: torch.Tensor  # [B, H, r, r]  M G^-1
    A_w: torch.Tensor  # [B, H, r, r]  L^-1 M L^-T, G = L L^T
    L: torch.Tensor  # [B, H, r, r]  Cholesky factor of G



def _check_state(state: object) -> SKAState:
    if not isinstance(state, SKAState):
        raise BadArgumentError(f"state must be an SKAState, got {type(state).__name__}")
    return state



def koopman_operator(state: SKAState) -> KoopmanOperator:
    """The Koopman operator of every head of an SKA state.

    Args:
        state: ``SKAState`` with G, M ``[B, H, r, r]``.
    Returns:
        ``KoopmanOperator(A, A_w, L)``, each ``[B, H, r, r]``, computed in float64.
    """
    st = _check_state(state)
    G, M = st.G.double(), st.M.double()
    L = safe_cholesky(G)
    A = torch.linalg.solve(G, M.transpose(-1, -2)).transpose(-1, -2)  # M G^-1 (G symmetric)
    return KoopmanOperator(A, whiten(M, L), L)



def koopman_spectrum(state: SKAState) -> torch.Tensor:
    """Eigenvalues of every head's Koopman operator: complex ``[B, H, r]``, sorted by decreasing modulus."""
    ev = torch.linalg.eigvals(koopman_operator(state).A_w)
    order = ev.abs().argsort(dim=-1, descending=True)
    return ev.gather(-1, order)



def mode_energies(eigenvalues: torch.Tensor, power_steps: int, gamma: float | torch.Tensor = 1.0,
                  sigma: float | torch.Tensor | None = None) -> torch.Tensor:
    """How much of each Koopman mode survives the power filter: ``(s |lambda|)^K``.

    ``s = gamma / max(1, sigma)`` with ``sigma = sigma_max(A_w)``; when ``sigma`` is None the spectral
    radius (the largest ``|lambda|``, a lower bound of sigma_max) stands in for it. Shapes: eigenvalues
    ``[..., r]`` -> ``[..., r]``; gamma and sigma scalars or ``[...]``."""
    check_int("power_steps", power_steps, min_value=0)
    if not isinstance(eigenvalues, torch.Tensor):
        raise BadArgumentError(f"eigenvalues must be a tensor, got {type(eigenvalues).__name__}")
    mod = eigenvalues.abs().double()
    if sigma is None:
        sigma = mod.amax(-1)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    s = torch.as_tensor(gamma, dtype=torch.float64) / sigma.clamp_min(1.0)
    return (s[..., None] * mod) ** power_steps if s.ndim else (s * mod) ** power_steps

