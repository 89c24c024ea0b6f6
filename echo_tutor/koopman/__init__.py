"""Koopman tools: the operator and spectrum held in an SKA state, and DMD from snapshots.

``A = M G^-1`` is the least-squares one-step predictor of the keys (``k_t ~ A k_{t-1}``): dynamic mode
decomposition (DMD) with ridge ``eps``, fitted on the key sequence. One difference from textbook DMD on
the pairs (k_{t-1}, k_t): SKA's ``G`` also counts the last key ``k_{T-1} k_{T-1}^T`` (it serves the ridge
readout too), a rank-1 term whose effect fades as ``1/T``. Its eigenvalues are the Koopman
spectrum. The whitened ``A_w = L^-1 M L^-T`` (``G = L L^T``) is similar to ``A`` (``A = L A_w L^-1``), so
it has the same eigenvalues. ``G^-1 M = G^-1 A G`` is similar to ``A`` too (same spectrum), but it is not
the predictor: applied to ``k_{t-1}`` it does not give ``k_t``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._checks import check_int, check_tensor
from ..ska.reference import SKAState, safe_cholesky

__all__ = [
    "readout_weights", "offset_profile",
    "KoopmanOperator", "DMDResult", "koopman_operator", "koopman_spectrum", "dmd",
    "damped_rotation", "oscillators", "model_spectra", "mode_energies",
]


class KoopmanOperator(NamedTuple):
    A: torch.Tensor  # [B, H, r, r]  M G^-1
    A_w: torch.Tensor  # [B, H, r, r]  L^-1 M L^-T, G = L L^T
    L: torch.Tensor  # [B, H, r, r]  Cholesky factor of G


class DMDResult(NamedTuple):
    operator: torch.Tensor  # [d, d]    A with y ~ A x (rank-truncated when rank is given)
    eigenvalues: torch.Tensor  # [m]    complex, sorted by decreasing modulus
    modes: torch.Tensor  # [d, m]       complex DMD modes (columns), same order


def _check_state(state: object) -> SKAState:
    if not isinstance(state, SKAState):
        raise ValueError(f"state must be an SKAState, got {type(state).__name__}")
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
    Lm = torch.linalg.solve_triangular(L, M, upper=False)  # L^-1 M
    A_w = torch.linalg.solve_triangular(L, Lm.transpose(-1, -2), upper=False).transpose(-1, -2)  # L^-1 M L^-T
    return KoopmanOperator(A, A_w, L)


def koopman_spectrum(state: SKAState) -> torch.Tensor:
    """Eigenvalues of every head's Koopman operator: complex ``[B, H, r]``, sorted by decreasing modulus."""
    ev = torch.linalg.eigvals(koopman_operator(state).A_w)
    order = ev.abs().argsort(dim=-1, descending=True)
    return ev.gather(-1, order)


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
        raise ValueError(f"Y must have the same shape as X [N, d], got X {tuple(X.shape)} and Y {tuple(Y.shape)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    N, d = X.shape
    if rank is not None:
        check_int("rank", rank, min_value=1)
        if rank > min(N, d):
            raise ValueError(f"rank must be <= min(N, d) = {min(N, d)}, got {rank}")
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


# ------------------------------------------------------------------------------------- known systems
def damped_rotation(theta: float, rho: float, steps: int, noise: float = 0.0, seed: int = 0,
                    x0: tuple[float, float] = (1.0, 0.0)) -> torch.Tensor:
    """A 2-D trajectory ``z_{t+1} = rho R(theta) z_t``, observed with Gaussian noise of std ``noise``.

    Returns ``[steps, 2]`` (float64). The true eigenvalues are ``rho exp(+-i theta)``."""
    check_int("steps", steps, min_value=2)
    if not (rho > 0) or noise < 0:
        raise ValueError(f"rho must be > 0 and noise >= 0, got rho={rho}, noise={noise}")
    import math

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
        raise ValueError(f"thetas and rhos must be non-empty lists of equal length, got {len(thetas)} and {len(rhos)}")
    import math

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


# --------------------------------------------------------------------------------- trained models
@torch.no_grad()
def model_spectra(model: torch.nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Feed a prompt through a ``HybridLM`` and return every SKA layer's Koopman spectrum.

    Args:
        model: a model whose blocks hold ``SpectralKoopmanAttention`` mixers.
        ids: ``[T]`` or ``[1, T]`` token ids.
    Returns:
        ``{block index: eigenvalues [H, r] (complex128, by decreasing modulus)}``.
    """
    from ..ska import SpectralKoopmanAttention

    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or (ids.ndim == 2 and ids.shape[0] != 1):
        raise ValueError(f"ids must be a tensor of shape [T] or [1, T], got {getattr(ids, 'shape', type(ids).__name__)}")
    ids = ids.reshape(1, -1)
    _, states = model(ids)
    out = {i: koopman_spectrum(st)[0] for i, st in enumerate(states)
           if isinstance(getattr(model.blocks[i], "mixer", None), SpectralKoopmanAttention)}
    if not out:
        raise ValueError("model: no SKA mixer found (use a preset with 'ska' in its layout, e.g. 'echo')")
    return out


def mode_energies(eigenvalues: torch.Tensor, power_steps: int, gamma: float | torch.Tensor = 1.0,
                  sigma: float | torch.Tensor | None = None) -> torch.Tensor:
    """How much of each Koopman mode survives the power filter: ``(s |lambda|)^K``.

    ``s = gamma / max(1, sigma)`` with ``sigma = sigma_max(A_w)``; when ``sigma`` is None the spectral
    radius (the largest ``|lambda|``, a lower bound of sigma_max) stands in for it. Shapes: eigenvalues
    ``[..., r]`` -> ``[..., r]``; gamma and sigma scalars or ``[...]``."""
    check_int("power_steps", power_steps, min_value=0)
    if not isinstance(eigenvalues, torch.Tensor):
        raise ValueError(f"eigenvalues must be a tensor, got {type(eigenvalues).__name__}")
    mod = eigenvalues.abs().double()
    if sigma is None:
        sigma = mod.amax(-1)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    s = torch.as_tensor(gamma, dtype=torch.float64) / sigma.clamp_min(1.0)
    return (s[..., None] * mod) ** power_steps if s.ndim else (s * mod) ** power_steps


@torch.no_grad()
def readout_weights(model: torch.nn.Module, ids: torch.Tensor, n_context: int) -> dict[int, torch.Tensor]:
    """Which written token each query reads, for every SKA block of a ``HybridLM``.

    SKA's output is a weighted sum of the values it stored: ``C G^-1 A^K q = sum_t a_t v_t`` with
    ``a_t = beta_t k_t . G^-1 (M G^-1)^K q``. This returns those weights for the statistics of the first
    ``n_context`` tokens of ``ids`` (the context, read in token order) and the queries at every later
    position (the spectral scalar ``s^K`` and ``eta`` are left out: they rescale, they do not redirect).

    Args:
        model: a model whose blocks hold ``SpectralKoopmanAttention`` mixers (``key_norm="l2"``).
        ids: ``[T]`` or ``[1, T]`` token ids.
        n_context: how many leading tokens write the statistics (``1 <= n_context < T``).
    Returns:
        ``{block index: a [H, T - n_context, n_context]}``.
    """
    from ..ska import SpectralKoopmanAttention

    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or (ids.ndim == 2 and ids.shape[0] != 1):
        raise ValueError(f"ids must be a tensor of shape [T] or [1, T], got {getattr(ids, 'shape', type(ids).__name__)}")
    ids = ids.reshape(1, -1)
    check_int("n_context", n_context, min_value=1)
    if n_context >= ids.shape[1]:
        raise ValueError(f"n_context must be < T = {ids.shape[1]} (queries follow the context), got {n_context}")
    mixers = {i: b.mixer for i, b in enumerate(getattr(model, "blocks", []))
              if isinstance(b.mixer, SpectralKoopmanAttention)}
    if not mixers:
        raise ValueError("model: no SKA mixer found (use a preset with 'ska' in its layout, e.g. 'echo')")
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0])) for i, m in mixers.items()]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    n = n_context
    for i, mix in mixers.items():
        if mix.key_norm != "l2":
            raise ValueError(f"readout_weights supports key_norm='l2' only (block {i} uses {mix.key_norm!r})")
        q, k, _v, beta = mix._project(seen[i])  # [1, T, H, r], beta [1, T, H] | None
        q, k = torch.nn.functional.normalize(q, dim=-1)[0], torch.nn.functional.normalize(k, dim=-1)[0]
        b = beta[0] if beta is not None else torch.ones(k.shape[:2], dtype=k.dtype)
        kc, bc = k[:n], b[:n]  # [n, H, r], [n, H]
        r = kc.shape[-1]
        G = mix.eps * torch.eye(r, dtype=k.dtype) + torch.einsum("th,thi,thj->hij", bc, kc, kc)
        M = torch.einsum("th,thi,thj->hij", bc[1:], kc[1:], kc[:-1])
        Ginv = torch.linalg.inv(G)
        z = q[n:].permute(1, 2, 0)  # [H, r, Tq]
        for _ in range(mix.power_steps):
            z = M @ (Ginv @ z)
        z = Ginv @ z
        out[i] = torch.einsum("th,thr,hrq->hqt", bc, kc, z)  # [H, Tq, n]
    return out


def offset_profile(weights: torch.Tensor, context_ids: torch.Tensor, query_ids: torch.Tensor,
                   offsets: range = range(-2, 4)) -> dict[int, float]:
    """Share of a readout's weight at each offset from the queried key's position in the context.

    weights ``[H, Tq, n]`` (from :func:`readout_weights`, one block), context_ids ``[n]``, query_ids ``[Tq]``.
    For every query whose token occurs once in the context at position ``p``, the weights' absolute values
    (summed over heads, normalised over the context) at ``p + offset``. Returns ``{offset: mean share}``.
    ``+1`` is the token after the key (MQAR's value), ``+2`` the next binding's key."""
    check_tensor("weights", weights, 3, layout="[H, Tq, n]")
    H, Tq, n = weights.shape
    for name, ids, want in (("context_ids", context_ids, n), ("query_ids", query_ids, Tq)):
        if not isinstance(ids, torch.Tensor) or ids.ndim != 1 or ids.shape[0] != want:
            raise ValueError(f"{name} must be a 1-D tensor of length {want} (from weights [H, Tq, n]), "
                             f"got {getattr(ids, 'shape', type(ids).__name__)}")
    mag = weights.abs().sum(0)  # [Tq, n]
    mag = mag / mag.sum(-1, keepdim=True).clamp_min(1e-12)
    ctx = context_ids.tolist()
    shares: dict[int, list[float]] = {o: [] for o in offsets}
    for j, tok in enumerate(query_ids.tolist()):
        if ctx.count(tok) != 1:
            continue
        p = ctx.index(tok)
        for o in offsets:
            if 0 <= p + o < len(ctx):
                shares[o].append(float(mag[j, p + o]))
    return {o: (sum(v) / len(v) if v else float("nan")) for o, v in shares.items()}
