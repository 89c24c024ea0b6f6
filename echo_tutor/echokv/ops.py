"""The EchoKV-lite rebuild as one op, the PyTorch twin of ``echo_kernels.echokv.forward``.

:func:`rebuild_heads` takes the retained heads a layer's discarded heads are rebuilt from (keys as
cached, i.e. after RoPE), undoes RoPE, applies every discarded head's linear map, adds the bias and
re-applies RoPE: the whole read path of a compressed layer for one kind, for a block of tokens.
"""

from __future__ import annotations

import torch

from .._checks import check_choice, check_tensor
from ..errors import BadArgumentError
from .capture import apply_rope, undo_rope


def check_rebuild_args(x, cos, sin, W, b) -> None:
    """Shape checks shared by :func:`rebuild_heads` and ``echo_kernels.echokv.forward``."""
    check_tensor("x", x, 4, layout="[B, J, T, D]", finite=False)
    B, J, T, D = x.shape
    if D % 2:
        raise BadArgumentError(f"x's head size D must be even (RoPE pairs dims i and i + D/2), got shape {tuple(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t, 2, layout="[T, D]", finite=False)
        if tuple(t.shape) != (T, D):
            raise BadArgumentError(f"{name} must have shape [T, D] = {(T, D)} to match x, got {tuple(t.shape)}")
    check_tensor("W", W, 4, layout="[O, J, D, D]", finite=False)
    if tuple(W.shape[1:]) != (J, D, D):
        raise BadArgumentError(f"W must have shape [O, J={J}, D={D}, D={D}] to match x, got {tuple(W.shape)}")
    check_tensor("b", b, 2, layout="[O, D]", finite=False)
    if tuple(b.shape) != (W.shape[0], D):
        raise BadArgumentError(f"b must have shape [O, D] = {(W.shape[0], D)}, got {tuple(b.shape)}")


def rebuild_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
                  rope: bool = True) -> torch.Tensor:
    """Rebuild ``O`` discarded heads from ``J`` retained ones.

    Args:
        x: ``[B, J, T, D]`` retained heads (keys post-RoPE when ``rope``).
        cos, sin: ``[T, D]`` RoPE tables of the T positions.
        W: ``[O, J, D, D]`` the maps (input head j's D dims -> output D dims); b: ``[O, D]``.
        rope: True for keys (undo RoPE on the inputs, re-apply it on the outputs), False for values.
    Returns:
        ``[B, O, T, D]`` in x's dtype.
    """
    check_rebuild_args(x, cos, sin, W, b)
    xf = x.float()
    if rope:
        xf = undo_rope(xf, cos[None].float(), sin[None].float())
    y = torch.einsum("bjtd,ojde->bote", xf, W.float()) + b.float()[None, :, None, :]
    if rope:
        y = apply_rope(y, cos[None].float(), sin[None].float())
    return y.to(x.dtype)


def rebuild_scores(q: torch.Tensor, xk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, Wk: torch.Tensor,
                   bk: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention scores of queries against rebuilt keys (the twin of ``echo_kernels.echokv.attend.scores``).

    Args:
        q: ``[B, O, G, D]`` the G query heads that read each discarded key head (RoPE applied).
        xk: ``[B, J, T, D]`` retained keys (post-RoPE); cos, sin ``[T, D]``; Wk ``[O, J, D, D]``; bk ``[O, D]``.
        scale: the softmax scale (``1 / sqrt(D)`` in Llama).
    Returns:
        ``[B, O, G, T]`` float32 scaled scores.
    """
    k = rebuild_heads(xk, cos, sin, Wk, bk, True).float()
    return torch.einsum("bogd,botd->bogt", q.float(), k) * scale


def rebuild_attend(q, xk, xv, cos, sin, Wk, bk, Wv, bv, scale: float | None = None, *, values: str = "after",
                   scores=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of discarded heads over T past tokens, from the retained heads.

    Args:
        q: ``[B, O, G, D]``; xk, xv: ``[B, J, T, D]`` retained keys (post-RoPE) and values; cos, sin ``[T, D]``;
        Wk, Wv: ``[O, J, D, D]``; bk, bv: ``[O, D]``; scale: softmax scale (default ``1 / sqrt(D)``).
        values: ``"rebuilt"`` rebuilds every past value row and then averages them (what the cache's read
            path does); ``"after"`` averages the *retained* values with the attention weights and applies
            the linear value maps once: ``sum_t p_t (sum_j x_jt W_j + b) = sum_j (sum_t p_t x_jt) W_j + b``
            (the weights sum to 1), so no value row is rebuilt. Same result to rounding.
        scores: the op that scores queries against rebuilt keys (:func:`rebuild_scores`, or the Triton
            ``echo_kernels.echokv.attend.scores``, which never writes a rebuilt key).
    Returns:
        ``(out [B, O, G, D], lse [B, O, G])`` float32; the log-sum-exp lets attention over further tokens
        (the current ones, exact) be merged in exactly.
    """
    check_rebuild_args(xk, cos, sin, Wk, bk)
    check_rebuild_args(xv, cos, sin, Wv, bv)
    check_choice("values", values, ("after", "rebuilt"))
    check_tensor("q", q, 4, layout="[B, O, G, D]", finite=False)
    B, J, T, D = xk.shape
    if tuple(xv.shape) != (B, J, T, D) or (q.shape[0], q.shape[1], q.shape[3]) != (B, Wk.shape[0], D):
        raise BadArgumentError(f"q {tuple(q.shape)}, xk {tuple(xk.shape)} and xv {tuple(xv.shape)} must be "
                               f"[B, O, G, D], [B, J, T, D] and [B, J, T, D] with O = {Wk.shape[0]} maps")
    scale = D ** -0.5 if scale is None else float(scale)
    s = (scores or rebuild_scores)(q, xk, cos, sin, Wk, bk, scale)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None])
    if values == "rebuilt":
        v = rebuild_heads(xv, cos, sin, Wv, bv, False).float()
        return torch.einsum("bogt,botd->bogd", p, v), lse
    O, G = q.shape[1], q.shape[2]
    a = torch.matmul(p.reshape(B, 1, O * G, T), xv.float()).reshape(B, J, O, G, D).permute(0, 2, 3, 1, 4)
    return torch.einsum("bogjd,ojde->boge", a, Wv.float()) + bv.float()[None, :, None, :], lse
