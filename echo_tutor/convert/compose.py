"""Compositions measured at equal bytes: methods that shrink the cache in different ways, stacked.

* :class:`KiviContext` -- a full-attention layer whose context keys and values are stored KIVI-style
  (``bits`` each, keys per channel in groups of tokens, values per token in groups of channels) while the
  scored continuation reads its own rows at full precision, exactly as lab 06's KIVI baseline reads a
  quantised prefill cache. Placed beside converted layers, it gives "converted layers + a 4-bit cache for the
  others" in one forward pass.
* :func:`then` -- two of lab 06's cache methods applied one after the other (e.g. KIVI 4-bit on the cache,
  then EchoKV-lite rebuilding the discarded heads from the quantised kept ones); the bytes multiply.

Bytes in this module are relative to a **16-bit** cache (KIVI's convention): the state of a converted layer
is counted at 16 bits too, so every method sits on one axis.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_int
from ..errors import BadArgumentError
from ..echokv import baselines as B
from ..echokv.baselines import Method, kivi_fraction, kivi_quantize
from ..echokv.capture import apply_rope, capture_kv
from ..echokv.evaluate import perplexity
from ..echokv.fit import fit_reconstructor
from ..echokv.slots import KINDS, SlotMoments, light_keys
from .layers import check_layer, converted, llama_layout
from .probe import window_nll

__all__ = ["KiviContext", "kivi_fraction", "kivi_layers", "then", "converted_with_kivi_nll", "echokv_with_kivi",
           "equal_bytes_points"]


class KiviContext(nn.Module):
    """Causal softmax attention of a Llama layer ``attn`` as a cache would serve it after a ``ctx_len``-token
    prefill stored KIVI-style: the first ``ctx_len`` queries attend at full precision (the prefill), every
    later query reads the context's post-RoPE keys and values quantised to ``bits`` (keys per channel over
    groups of ``group`` tokens, values per token over groups of ``group`` channels) and the later tokens'
    own rows exactly.

    Shapes: ``hidden_states`` [B, T, d] (after the layer's input norm), ``position_embeddings`` (cos, sin)
    [B or 1, T, D] -> (output [B, T, d], None). It keeps no decode cache: it scores whole windows (T > 1).
    """

    def __init__(self, attn: nn.Module, *, bits: int, ctx_len: int, n_q_heads: int, n_kv_heads: int, head_dim: int,
                 group: int = 32) -> None:
        super().__init__()
        if bits not in (2, 3, 4, 8):
            raise BadArgumentError(f"bits must be one of 2, 3, 4, 8, got {bits!r}")
        self.ctx_len = check_int("ctx_len", ctx_len, min_value=0)
        self.group = check_int("group", group, min_value=1)
        self.bits, self.n_q, self.n_kv, self.head_dim = bits, n_q_heads, n_kv_heads, head_dim
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        self.scaling = head_dim ** -0.5

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, **kwargs):
        if position_embeddings is None:
            raise BadArgumentError("position_embeddings must be the (cos, sin) pair the decoder layer passes")
        cos, sin = position_embeddings
        B, T, _ = hidden_states.shape
        if T == 1:  # (a cache the model creates on its own is ignored: nothing is ever read back from it)
            raise BadArgumentError("KiviContext scores whole windows, it cannot decode one token at a time")
        split = lambda x, h: x.view(B, T, h, self.head_dim).transpose(1, 2)
        q = apply_rope(split(self.q_proj(hidden_states), self.n_q), cos, sin)
        k = apply_rope(split(self.k_proj(hidden_states), self.n_kv), cos, sin)
        v = split(self.v_proj(hidden_states), self.n_kv)
        c = min(self.ctx_len, T)
        rep = self.n_q // self.n_kv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        # the context's own queries attend at full precision (a prefill computes them before the cache is
        # stored); the later queries read the stored, quantised context rows and their own exact rows
        y = F.scaled_dot_product_attention(q[:, :, :c], k[:, :, :c], v[:, :, :c], is_causal=True, scale=self.scaling)
        if c < T:
            kq = torch.cat([kivi_quantize(k[:, :, :c], self.bits, dim=-2, group=self.group), k[:, :, c:]], 2) if c else k
            vq = torch.cat([kivi_quantize(v[:, :, :c], self.bits, dim=-1, group=self.group), v[:, :, c:]], 2) if c else v
            t = torch.arange(T, device=q.device)
            allowed = t[None, :] <= t[c:, None]  # [T - c, T]
            y2 = F.scaled_dot_product_attention(q[:, :, c:], kq, vq, attn_mask=allowed, scale=self.scaling)
            y = torch.cat([y, y2], 2)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_q * self.head_dim)), None


@contextlib.contextmanager
def kivi_layers(model, layers: list[int], *, bits: int, ctx_len: int, group: int = 32):
    """Within the block, ``model``'s attention ``layers`` read a KIVI-quantised context (see
    :class:`KiviContext`); restored after. Combine with :func:`~echo_tutor.convert.layers.converted` for the
    other layers."""
    _, n_q, n_kv, hd = llama_layout(model)
    blocks = model.model.layers
    old = {}
    try:
        for i in layers:
            check_layer(model, i)
            old[i] = blocks[i].self_attn
            blocks[i].self_attn = KiviContext(old[i], bits=bits, ctx_len=ctx_len, n_q_heads=n_q, n_kv_heads=n_kv,
                                              head_dim=hd, group=group)
        yield model
    finally:
        for i, a in old.items():
            blocks[i].self_attn = a


def then(first, second, name: str):
    """Lab 06's cache method ``first`` then ``second`` (each an ``echokv.baselines.Method``): the cache
    ``first`` returns is what ``second`` compresses; the kept fraction is the product."""
    def apply(keys, values, cos, sin):
        k1, v1, keep1 = first.apply(keys, values, cos, sin)
        k2, v2, keep2 = second.apply(k1, v1, cos, sin)
        if keep1 is not None and keep2 is not None:
            raise BadArgumentError("then: at most one of the two methods may mask tokens out")
        return k2, v2, keep1 if keep2 is None else keep2

    return Method(name, first.fraction * second.fraction, apply, overhead_bytes=first.overhead_bytes + second.overhead_bytes,
                  info={"first": first.name, "second": second.name})


# --------------------------------------------------------------------------------------------------
# What the study's composition cells measure, and the points of the equal-bytes figure
# --------------------------------------------------------------------------------------------------
def converted_with_kivi_nll(model, mixers: dict, bits: int, ids: torch.Tensor, ctx_len: int) -> list[float]:
    """Held-out NLL per window (:func:`~echo_tutor.convert.probe.window_nll`) with the layers of ``mixers``
    converted and every other layer's context stored KIVI-style at ``bits`` (:func:`kivi_layers`)."""
    others = [i for i in range(len(model.model.layers)) if i not in mixers]
    with converted(model, mixers), kivi_layers(model, others, bits=bits, ctx_len=ctx_len):
        return window_nll(model, ids, ctx_len)


def echokv_with_kivi(model, cal_ids: torch.Tensor, ids: torch.Tensor, ctx_len: int, ratios: list[float], bits: int,
                     *, cache: bool = True) -> dict[str, dict]:
    """Lab 06's EchoKV-lite (ridge maps, greedy slots, window 2), fitted on the K/V of ``cal_ids`` at each of
    ``ratios``, with and without its kept heads stored KIVI-style at ``bits`` (:func:`then`), and KIVI alone:
    ``{name: {"fraction", "window_nll"}}`` on the windows ``ids`` (context ``ctx_len``), the full cache's row
    included. ``cache``: keep the K/V capture on disk (``capture_kv``)."""
    cap = capture_kv(model, cal_ids, cache=cache)
    moments = {k: SlotMoments(cap, k) for k in KINDS}
    methods = [B.kivi(bits)]
    for r in ratios:
        rec = fit_reconstructor(cap, r, method="greedy", key_ratio=light_keys(r), layer_window=2, moments=moments)
        e = B.echokv_method(rec, f"echokv-lite ridge, greedy @{r}")
        methods += [e, then(B.kivi(bits), e, f"echokv-lite ridge, greedy @{r} + KIVI {bits}-bit")]
    table = perplexity(model, ids, ctx_len, methods)
    return {name: {"fraction": t["fraction"], "window_nll": t["window_nll"]} for name, t in table.items()}


def equal_bytes_points(result: dict, tokens: int) -> list[dict]:
    """Every measured configuration of a conversion study's result (``echo_tutor.experiments.convert``) as a point
    ``{"name", "family", "mb", "nll"}``: megabytes kept for a ``tokens``-token context at 16 bits (batch 1)
    and the per-window NLL on the study's held-out windows (for paired intervals against ``"full"``).

    Families: ``full``, ``converted`` (stage 1 sweep), ``converted, stage 2``, ``converted + KIVI``,
    ``EchoKV-lite``, ``EchoKV-lite + KIVI``, ``KIVI``.
    """
    check_int("tokens", tokens, min_value=1)
    L = len(result["cost_nll"])
    kv16 = result["layer_kv_bytes_per_token"] * tokens / 2  # one layer's 16-bit cache
    state16 = {v: b / 2 for v, b in result["mixer_state_bytes"].items()}
    label = result["labels"]
    pts = [{"name": "full attention", "family": "full", "mb": L * kv16 / 1e6, "nll": result["full_window_nll"]}]
    for v, by_n in result["sweep_window_nll"].items():
        for n, nll in by_n.items():
            pts.append({"name": f"{label[v]}, {n} layers", "family": "converted", "variant": v,
                        "mb": ((L - int(n)) * kv16 + int(n) * state16[v]) / 1e6, "nll": nll})
    for v, by_n in result.get("stage2", {}).items():
        for n, r in by_n.items():
            pts.append({"name": f"{label[v]}, {n} layers, stage 2", "family": "converted, stage 2", "variant": v,
                        "mb": ((L - int(n)) * kv16 + int(n) * state16[v]) / 1e6, "nll": r["window_nll"]})
    comp = result.get("compose") or {}
    frac = kivi_fraction(comp.get("bits", 4))
    for v, by_n in comp.get("converted_kivi", {}).items():
        for n, nll in by_n.items():
            pts.append({"name": f"{label[v]}, {n} layers + KIVI {comp['bits']}-bit", "family": "converted + KIVI",
                        "variant": v, "mb": ((L - int(n)) * kv16 * frac + int(n) * state16[v]) / 1e6, "nll": nll})
    for name, r in comp.get("echokv", {}).items():
        if name == "full":
            continue
        fam = "KIVI" if name.startswith("KIVI") else "EchoKV-lite + KIVI" if "+ KIVI" in name else "EchoKV-lite"
        pts.append({"name": name, "family": fam, "mb": L * kv16 * r["fraction"] / 1e6, "nll": r["window_nll"]})
    return pts
