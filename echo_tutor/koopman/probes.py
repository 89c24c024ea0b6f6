"""The Koopman view of trained models: spectra of their SKA states, and which token each query reads."""

from __future__ import annotations

import torch

from .._checks import check_int, check_tensor
from ..errors import BadArgumentError
from ..ska import SpectralKoopmanAttention
from ..ska.linalg import safe_cholesky
from .operator import koopman_spectrum

__all__ = ["model_spectra", "readout_weights", "offset_profile"]


@torch.no_grad()
def model_spectra(model: torch.nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Feed a prompt through a ``HybridLM`` and return every SKA layer's Koopman spectrum.

    Args:
        model: a model whose blocks hold ``SpectralKoopmanAttention`` mixers.
        ids: ``[T]`` or ``[1, T]`` token ids.
    Returns:
        ``{block index: eigenvalues [H, r] (complex128, by decreasing modulus)}``.
    """

    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or (ids.ndim == 2 and ids.shape[0] != 1):
        raise BadArgumentError(f"ids must be a tensor of shape [T] or [1, T], got {getattr(ids, 'shape', type(ids).__name__)}")
    ids = ids.reshape(1, -1)
    _, states = model(ids)
    out = {i: koopman_spectrum(st)[0] for i, st in enumerate(states)
           if isinstance(getattr(model.blocks[i], "mixer", None), SpectralKoopmanAttention)}
    if not out:
        raise BadArgumentError("model: no SKA mixer found (use a preset with 'ska' in its layout, e.g. 'echo')")
    return out



@torch.no_grad()
def readout_weights(model: torch.nn.Module, ids: torch.Tensor, n_context: int) -> dict[int, torch.Tensor]:
    """Which written token each query reads, for every SKA block of a ``HybridLM``.

    SKA's output is a weighted sum of the values it stored: ``C G^-1 A^K q = sum_t a_t v_t`` with
    ``a_t = beta_t k_t . G^-1 (M G^-1)^K q``. This returns those weights for the statistics of the first
    ``n_context`` tokens of ``ids`` (the context, read in token order) and the queries at every later
    position (the spectral scalar ``s^K`` and ``eta`` are left out: they rescale, they do not redirect).
    ``G`` and ``M`` are the mixer's own state after the context; the per-token keys, queries and gates come
    from its :meth:`~echo_tutor.ska.SpectralKoopmanAttention.project`.

    Args:
        model: a model whose blocks hold ``SpectralKoopmanAttention`` mixers (``key_norm="l2"``).
        ids: ``[T]`` or ``[1, T]`` token ids.
        n_context: how many leading tokens write the statistics (``1 <= n_context < T``).
    Returns:
        ``{block index: a [H, T - n_context, n_context]}``.
    """

    if not isinstance(ids, torch.Tensor) or ids.ndim not in (1, 2) or (ids.ndim == 2 and ids.shape[0] != 1):
        raise BadArgumentError(f"ids must be a tensor of shape [T] or [1, T], got {getattr(ids, 'shape', type(ids).__name__)}")
    ids = ids.reshape(1, -1)
    check_int("n_context", n_context, min_value=1)
    if n_context >= ids.shape[1]:
        raise BadArgumentError(f"n_context must be < T = {ids.shape[1]} (queries follow the context), got {n_context}")
    mixers = {i: b.mixer for i, b in enumerate(getattr(model, "blocks", []))
              if isinstance(b.mixer, SpectralKoopmanAttention)}
    if not mixers:
        raise BadArgumentError("model: no SKA mixer found (use a preset with 'ska' in its layout, e.g. 'echo')")
    for i, mix in mixers.items():
        if mix.key_norm != "l2":
            raise BadArgumentError(f"readout_weights supports key_norm='l2' only (block {i} uses {mix.key_norm!r})")
    seen: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0])) for i, m in mixers.items()]
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    n = n_context
    out = {}
    for i, mix in mixers.items():
        x = seen[i]  # [1, T, d]: the mixer's input
        q, k, _v, beta = mix.project(x)  # [1, T, H, r] (normalised as the layer reads them), beta [1, T, H] | None
        _, st = mix(x[:, :n])  # the statistics of the context, as the layer keeps them
        G, M = st.G[0].to(q.dtype), st.M[0].to(q.dtype)  # [H, r, r]
        L = safe_cholesky(G)
        b = beta[0] if beta is not None else torch.ones(k.shape[1:3], dtype=k.dtype)  # [T, H]
        z = q[0, n:].permute(1, 2, 0)  # [H, r, Tq]
        for _ in range(mix.power_steps):
            z = M @ torch.cholesky_solve(z, L)  # A = M G^-1
        z = torch.cholesky_solve(z, L)  # G^-1 A^K q
        out[i] = torch.einsum("th,thr,hrq->hqt", b[:n], k[0, :n], z)  # [H, Tq, n]
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
            raise BadArgumentError(f"{name} must be a 1-D tensor of length {want} (from weights [H, Tq, n]), "
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

