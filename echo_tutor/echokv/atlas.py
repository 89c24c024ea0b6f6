"""The similarity atlas: how well one (layer, KV head) predicts another.

For one kind (K or V), every pair of slots (i, j) gets three numbers:

* ``r2[i, j]``: held-out R^2 of a ridge map (with intercept) fitted to predict slot j from slot i
  (fitted on the first part of the windows, scored on the rest). Not symmetric.
* ``cosine[i, j]``: mean over tokens of the cosine between the two head vectors (basis-dependent:
  two heads can be perfectly predictable from each other and still have cosine 0).
* ``cka[i, j]``: linear CKA, ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F): basis-free similarity.

Slots are numbered layer-major (``s = layer * H + head``); the diagonal H x H blocks are the
intra-layer atlas, the off-diagonal blocks the inter-layer one (:func:`layer_summary`).
"""

from __future__ import annotations

import torch

from ..errors import BadArgumentError
from .capture import KVCapture
from .slots import SlotMoments


def _check_kind(kind: str) -> str:
    if kind not in ("K", "V"):
        raise BadArgumentError(f"kind must be 'K' or 'V', got {kind!r}")
    return kind


def pairwise_r2(capture: KVCapture | None = None, kind: str = "K", *, lam: float = 1e-3,
                fit_frac: float = 0.75, moments=None) -> torch.Tensor:
    """Held-out ridge R^2 of predicting slot j from slot i: float32 [S, S] (row = source).

    Fitted on the first ``fit_frac`` of the windows, scored on the rest, all from the second moments
    of :class:`~echo_tutor.echokv.slots.SlotMoments` (pass ``moments`` to reuse them)."""

    _check_kind(kind)
    mom = moments if moments is not None else SlotMoments(capture, kind, lam=lam, fit_frac=fit_frac)
    S, D = mom.n_slots, mom.D
    Gf, Gh = mom.G_fit, mom.G_held
    yy = Gh.diagonal().view(S, D).sum(1)                                 # held-out sum of squares
    out = torch.empty(S, S, dtype=torch.float64)
    for i in range(S):
        sl = slice(i * D, (i + 1) * D)
        A = Gf[sl, sl]
        reg = mom.lam * A.diagonal().mean().clamp_min(1e-12)
        Wt = torch.linalg.solve(A + reg * torch.eye(D, dtype=A.dtype), Gf[sl])   # [D, S*D]
        cross = (Wt * Gh[sl]).view(D, S, D).sum((0, 2))                  # tr(W^T X^T Y) per target
        quad = (Wt * (Gh[sl, sl] @ Wt)).view(D, S, D).sum((0, 2))        # tr(W^T X^T X W)
        out[i] = 1.0 - (yy - 2 * cross + quad) / mom.sst.clamp_min(1e-12)
    return out.float()


def pairwise_cosine(capture: KVCapture, kind: str = "K") -> torch.Tensor:
    """Mean per-token cosine between the vectors of slots i and j: float32 [S, S]."""
    _check_kind(kind)
    X = torch.nn.functional.normalize(capture.slots(kind).float(), dim=-1)   # [S, N, D]
    return torch.einsum("snd,tnd->st", X, X) / X.shape[1]


def pairwise_cka(capture: KVCapture | None = None, kind: str = "K", *, moments=None) -> torch.Tensor:
    """Linear CKA between slots (on the fit part of the windows): float32 [S, S], symmetric, 1 on
    the diagonal."""

    _check_kind(kind)
    mom = moments if moments is not None else SlotMoments(capture, kind)
    S, D = mom.n_slots, mom.D
    C = mom.G_fit.view(S, D, S, D)                                       # cross-covariances
    hsic = (C**2).sum((1, 3))                                            # ||Xi^T Xj||_F^2
    norm = hsic.diagonal().sqrt()
    return (hsic / (norm[:, None] * norm[None, :]).clamp_min(1e-30)).float()


def similarity_atlas(capture: KVCapture, kind: str = "K", *, lam: float = 1e-3, moments=None) -> dict[str, torch.Tensor]:
    """All three [S, S] matrices for one kind: ``{"r2", "cosine", "cka"}``."""

    _check_kind(kind)
    mom = moments if moments is not None else SlotMoments(capture, kind, lam=lam)
    return {
        "r2": pairwise_r2(kind=kind, moments=mom),
        "cosine": pairwise_cosine(capture, kind),
        "cka": pairwise_cka(kind=kind, moments=mom),
    }


def layer_summary(mat: torch.Tensor, n_heads: int, reduce: str = "max") -> torch.Tensor:
    """Collapse an [S, S] slot matrix to [L, L] over the H x H blocks (``reduce`` = "max" or "mean";
    on the diagonal blocks the trivial i == j entries are left out)."""
    if reduce not in ("max", "mean"):
        raise BadArgumentError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    S = mat.shape[0]
    if mat.ndim != 2 or mat.shape[1] != S or S % n_heads:
        raise BadArgumentError(f"mat must be [S, S] with S divisible by n_heads={n_heads}, got {tuple(mat.shape)}")
    L = S // n_heads
    m = mat.clone().float()
    eye = torch.eye(S, dtype=torch.bool)
    blocks = m.view(L, n_heads, L, n_heads).permute(0, 2, 1, 3)         # [L, L, H, H]
    mask = ~eye.view(L, n_heads, L, n_heads).permute(0, 2, 1, 3)
    if reduce == "max":
        return blocks.masked_fill(~mask, float("-inf")).amax((2, 3)).nan_to_num(neginf=float("nan"))
    return (blocks * mask).sum((2, 3)) / mask.sum((2, 3)).clamp_min(1)
