"""Compression methods compared at equal cache bytes, as transforms of a prefilled cache.

Every method is a :class:`Method`: ``apply(keys, values, cos, sin)`` takes the full per-layer cache
(keys post-RoPE, each [B, H, T, D]) and returns what attention will read instead, plus an optional
``keep`` mask [B, T] (StreamingLLM drops tokens); ``fraction`` is the bytes kept per token relative to
the full cache in the same dtype (fixed per-model overheads -- bases, reconstructor weights -- are
listed in ``overhead_bytes`` and not amortised).

* :func:`echokv_method` -- EchoKV-lite (any fitted :class:`~echo_tutor.echokv.reconstructor.Reconstructor`).
* :func:`random_drop` -- random slots kept, the rest filled with their calibration mean (or zeros).
* :func:`per_head_svd` -- Palu-like: a rank-r PCA basis per (layer, head, kind), pre-RoPE keys.
* :func:`cross_layer_svd` -- xKV-like: one PCA basis shared by the heads of adjacent layer pairs.
* :func:`kivi` -- KIVI-style asymmetric quantisation: keys per channel, values per token.
* :func:`streaming_llm` -- attention sinks + a recent window; the rest is masked out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import BadArgumentError
from .cache import simulate
from .capture import KVCapture, apply_rope, undo_rope
from .reconstructor import Reconstructor, ReconstructorSpec
from .slots import check_ratio, select_slots

Transform = Callable[[list, list, torch.Tensor, torch.Tensor], tuple[list, list, "torch.Tensor | None"]]


@dataclass
class Method:
    name: str
    fraction: float
    apply: Transform
    overhead_bytes: int = 0
    info: dict = field(default_factory=dict)


def full_method() -> Method:
    return Method("full", 1.0, lambda k, v, c, s: (k, v, None))


def echokv_method(rec: Reconstructor, name: str = "echokv-lite") -> Method:
    """EchoKV-lite through :func:`~echo_tutor.echokv.cache.simulate` (same numbers as the compressed
    cache reading a compressed context)."""
    n_params = sum(p.numel() for p in rec.parameters())
    return Method(name, rec.fraction_kept(), lambda k, v, c, s: (*simulate(rec, k, v, c, s), None),
                  overhead_bytes=2 * n_params, info={"kept": rec.kept})


def random_drop(capture: KVCapture, ratio: float, *, fill: str = "mean", seed: int = 0) -> Method:
    """Keep a random ``ratio`` of the slots (K and V alike); fill the others with the slot's
    calibration mean (pre-RoPE, then rotated) or zeros."""

    if fill not in ("mean", "zeros"):
        raise BadArgumentError(f"fill must be 'mean' or 'zeros', got {fill!r}")
    kept = select_slots(capture, ratio, method="random", seed=seed)
    L, H, W, T, D = capture.keys.shape
    rec = Reconstructor(ReconstructorSpec(L, H, D, kept, layer_window=-1))  # -1: no inputs at all
    with torch.no_grad():
        for kind in ("K", "V"):
            means = capture.slots(kind).mean(1)
            for s in rec.spec.inputs[kind]:
                rec.maps[f"{kind}{s}"].bias.copy_(means[s] if fill == "mean" else torch.zeros(D))
    m = echokv_method(rec, f"random-drop ({fill})")
    m.overhead_bytes = 0
    return m


def _pca_basis(x: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, F] -> (mean [F], basis [F, rank]) of the top principal directions."""
    mu = x.mean(0)
    xc = (x - mu).double()
    evals, evecs = torch.linalg.eigh(xc.T @ xc)
    return mu, evecs[:, -rank:].flip(-1).float()


def per_head_svd(capture: KVCapture, ratio: float) -> Method:
    """Palu-like low rank: per (layer, head, kind) a PCA basis of rank round(ratio * D) fitted on
    calibration data (keys pre-RoPE, re-rotated after projection). Per-token bytes: rank / D."""
    ratio = check_ratio("ratio", ratio)
    L, H, W, T, D = capture.keys.shape
    rank = max(1, round(ratio * D))
    bases = {}
    for kind in ("K", "V"):
        X = capture.slots(kind)
        for s in range(L * H):
            bases[(kind, s)] = _pca_basis(X[s], rank)

    def apply(keys, values, cos, sin):
        nk, nv = [], []
        for l in range(L):
            outs = []
            for kind, src in (("K", keys[l]), ("V", values[l])):
                x = undo_rope(src, cos, sin) if kind == "K" else src
                heads = []
                for h in range(H):
                    mu, U = (t.to(x.device) for t in bases[(kind, l * H + h)])
                    xh = x[:, h].float()
                    heads.append(((xh - mu) @ U @ U.T + mu).to(src.dtype))
                y = torch.stack(heads, 1)
                outs.append(apply_rope(y, cos, sin) if kind == "K" else y)
            nk.append(outs[0])
            nv.append(outs[1])
        return nk, nv, None

    return Method(f"per-head SVD (r={rank})", rank / D, apply, overhead_bytes=2 * L * H * 2 * D * (rank + 1),
                  info={"rank": rank})


def cross_layer_svd(capture: KVCapture, ratio: float, group: int = 2) -> Method:
    """xKV-like: the heads of ``group`` adjacent layers share one PCA basis of rank
    round(ratio * group * H * D) per kind (calibration-fitted; keys pre-RoPE)."""
    ratio = check_ratio("ratio", ratio)
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise BadArgumentError(f"group must be an int >= 1 (layers sharing a basis), got {group!r}")
    L, H, W, T, D = capture.keys.shape
    groups = [list(range(i, min(L, i + group))) for i in range(0, L, group)]
    bases = {}
    for kind in ("K", "V"):
        x = capture.keys if kind == "K" else capture.values   # [L, H, W, T, D]
        for gi, ls in enumerate(groups):
            F = len(ls) * H * D
            feats = x[ls].permute(2, 3, 0, 1, 4).reshape(W * T, F)
            bases[(kind, gi)] = _pca_basis(feats, max(1, round(ratio * F)))

    def apply(keys, values, cos, sin):
        nk, nv = list(keys), list(values)
        for kind, src, dst in (("K", keys, nk), ("V", values, nv)):
            for gi, ls in enumerate(groups):
                xs = [undo_rope(src[l], cos, sin) if kind == "K" else src[l] for l in ls]
                B, _, T_, _ = xs[0].shape
                feats = torch.stack(xs, 0).permute(1, 3, 0, 2, 4).reshape(B, T_, -1).float()  # [B, T, F]
                mu, U = (t.to(feats.device) for t in bases[(kind, gi)])
                rec = ((feats - mu) @ U @ U.T + mu).view(B, T_, len(ls), H, D).permute(2, 0, 3, 1, 4)
                for j, l in enumerate(ls):
                    y = rec[j].to(src[l].dtype)
                    dst[l] = apply_rope(y, cos, sin) if kind == "K" else y
        return nk, nv, None

    rank = max(1, round(ratio * group * H * D))
    return Method(f"cross-layer SVD (x{group}, r={rank})", rank / (group * H * D), apply,
                  overhead_bytes=2 * 2 * L // group * (group * H * D) * (rank + 1), info={"rank": rank})


def kivi_fraction(bits: int, group: int = 32, ref_bits: int = 16) -> float:
    """Bytes of a KIVI cache over a ``ref_bits`` (16) cache: ``bits`` per element plus a float16 scale and
    zero point per group of ``group`` (the residual tokens kept in full precision not counted)."""
    return (bits + 2 * 16 / group) / ref_bits


def kivi_quantize(x: torch.Tensor, bits: int, dim: int, group: int) -> torch.Tensor:
    """KIVI's quantiser: asymmetric min/max in groups of ``group`` along ``dim`` (keys: the token dim, per
    channel; values: the channel dim, per token); returns the dequantised tensor, same shape and dtype."""
    n = x.shape[dim]
    pad = (-n) % group
    xt = x.movedim(dim, -1).float()
    if pad:
        xt = torch.cat([xt, xt[..., -1:].expand(*xt.shape[:-1], pad)], -1)
    g = xt.reshape(*xt.shape[:-1], -1, group)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    q = ((g - lo) / scale).round().clamp(0, 2**bits - 1)
    out = (q * scale + lo).reshape(*xt.shape)[..., :n]
    return out.movedim(-1, dim).to(x.dtype)


def kivi(bits: int = 2, group: int = 32, residual: int = 0, *, ref_bits: int = 16) -> Method:
    """KIVI-style: keys quantised per channel (groups of ``group`` tokens), values per token (groups
    of ``group`` channels), ``bits`` each, with a float16 scale and zero point per group; the last
    ``residual`` tokens stay in full precision. ``fraction`` assumes a ``ref_bits`` (16) cache and
    T >> residual: (bits + 32 / group) / ref_bits."""
    if bits not in (1, 2, 3, 4, 8):
        raise BadArgumentError(f"bits must be one of 1, 2, 3, 4, 8, got {bits!r}")
    for name, val, lo in (("group", group, 1), ("residual", residual, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise BadArgumentError(f"{name} must be an int >= {lo}, got {val!r}")

    def apply(keys, values, cos, sin):
        nk, nv = [], []
        for k, v in zip(keys, values):
            T = k.shape[-2]
            cut = max(0, T - residual)
            qk = kivi_quantize(k[..., :cut, :], bits, dim=-2, group=group) if cut else k[..., :0, :]
            qv = kivi_quantize(v[..., :cut, :], bits, dim=-1, group=group) if cut else v[..., :0, :]
            nk.append(torch.cat([qk, k[..., cut:, :]], -2))
            nv.append(torch.cat([qv, v[..., cut:, :]], -2))
        return nk, nv, None

    return Method(f"KIVI {bits}-bit (g={group})", kivi_fraction(bits, group, ref_bits), apply,
                  info={"bits": bits, "residual": residual})


def streaming_llm(ctx_len: int, ratio: float, sinks: int = 4) -> Method:
    """StreamingLLM: keep ``sinks`` first tokens and the most recent ones, ``ratio * ctx_len`` in
    all; the others are masked out of attention."""
    ratio = check_ratio("ratio", ratio)
    for name, val, lo in (("ctx_len", ctx_len, 1), ("sinks", sinks, 0)):
        if isinstance(val, bool) or not isinstance(val, int) or val < lo:
            raise BadArgumentError(f"{name} must be an int >= {lo}, got {val!r}")
    keep_n = max(sinks + 1, round(ratio * ctx_len))
    window = keep_n - sinks

    def apply(keys, values, cos, sin):
        T = keys[0].shape[-2]
        keep = torch.zeros(keys[0].shape[0], T, dtype=torch.long, device=keys[0].device)
        keep[:, :sinks] = 1
        keep[:, max(0, T - window):] = 1
        return keys, values, keep

    return Method(f"StreamingLLM ({sinks} sinks + {window})", keep_n / ctx_len, apply)
