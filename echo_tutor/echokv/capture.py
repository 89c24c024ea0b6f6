"""Capture pre-RoPE keys and values per (layer, KV head) with forward hooks, and RoPE helpers.

A *slot* is one (layer, KV head) of one kind, K or V; slots of a kind are numbered layer-major,
``s = layer * n_kv_heads + head``. Keys are captured at the output of ``k_proj``, i.e. *before* RoPE:
that is the space where a linear map between heads can be position-invariant.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from ..attention.rope import rotate
from ..errors import BadArgumentError
from .model import AttentionLayout, attention_layout, cache_dir


def rope_cos_sin(model, positions: torch.Tensor, dtype: torch.dtype = torch.float32):
    """cos, sin of the model's own rotary embedding at ``positions`` (int64 [T] or [B, T]):
    each [B or 1, T, D]."""
    if positions.ndim == 1:
        positions = positions[None]
    probe = torch.empty(0, dtype=dtype, device=positions.device)
    cos, sin = model.model.rotary_emb(probe, positions)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] (or [B, T, D]) by the angles in cos/sin [B, T, D]."""
    if x.ndim == 4:
        cos, sin = cos[:, None], sin[:, None]
    return rotate(x, cos, sin)


def undo_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rope` (a rotation by the opposite angles)."""
    if x.ndim == 4:
        cos, sin = cos[:, None], sin[:, None]
    return rotate(x, cos, sin, inverse=True)


@dataclass
class KVCapture:
    """Pre-RoPE keys and values of every (layer, KV head) on a batch of windows.

    keys, values: float32 [L, H, W, T, D] (layers, KV heads, windows, tokens per window, head size).
    """

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def layout(self) -> tuple[int, int, int, int, int]:
        return tuple(self.keys.shape)  # type: ignore[return-value]

    def slots(self, kind: str) -> torch.Tensor:
        """All slots of one kind as [S, N, D] (S = L*H slots, N = W*T tokens)."""
        x = self.keys if kind == "K" else self.values
        L, H, W, T, D = x.shape
        return x.reshape(L * H, W * T, D)

    def split(self, frac: float = 0.75) -> tuple["KVCapture", "KVCapture"]:
        """Split by window into a fitting part and a held-out part."""
        W = self.keys.shape[2]
        n = max(1, min(W - 1, int(round(W * frac))))
        return (KVCapture(self.keys[:, :, :n], self.values[:, :, :n]),
                KVCapture(self.keys[:, :, n:], self.values[:, :, n:]))


@torch.no_grad()
def capture_kv(model, ids: torch.Tensor, *, batch_size: int = 4, cache: bool = True, progress: bool = False) -> KVCapture:
    """Run ``model`` on ``ids`` (int64 [W, T] windows) and record the pre-RoPE keys and values.

    Returns a :class:`KVCapture` with float32 [L, H, W, T, D] tensors. With ``cache=True`` the result
    is stored under :func:`~echo_tutor.echokv.model.cache_dir` (float16 on disk), keyed by the token
    ids and a fingerprint of the model's K/V weights, so a rerun loads it in a second.
    """
    layout = attention_layout(model)
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype != torch.int64:
        raise BadArgumentError(f"ids must be an int64 tensor [W, T] of token windows, got {getattr(ids, 'shape', ids)!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadArgumentError(f"batch_size must be an int >= 1, got {batch_size!r}")
    path = None
    if cache:
        path = cache_dir() / f"kv-{_fingerprint(model, ids)}.pt"
        if path.exists():
            blob = torch.load(path, map_location="cpu")
            return KVCapture(blob["keys"].float(), blob["values"].float())
    keys, values = _run_hooks(model, layout, ids, batch_size, progress)
    out = KVCapture(keys, values)
    if path is not None:  # written whole, then renamed: a reader in another process never sees half a file
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        torch.save({"keys": keys.half(), "values": values.half()}, tmp)
        os.replace(tmp, path)
        out = KVCapture(keys.half().float(), values.half().float())  # identical to a cached reload
    return out


def _run_hooks(model, layout: AttentionLayout, ids: torch.Tensor, batch_size: int, progress: bool):
    L, H, D = layout.n_layers, layout.n_kv_heads, layout.head_dim
    W, T = ids.shape
    keys = torch.empty(L, H, W, T, D)
    values = torch.empty(L, H, W, T, D)
    current: dict[tuple[int, str], torch.Tensor] = {}

    def hook(layer: int, kind: str):
        def fn(_mod, _inp, out):
            current[(layer, kind)] = out.detach().float()
        return fn

    handles = []
    for i, layer in enumerate(model.model.layers):
        handles.append(layer.self_attn.k_proj.register_forward_hook(hook(i, "K")))
        handles.append(layer.self_attn.v_proj.register_forward_hook(hook(i, "V")))
    try:
        starts = range(0, W, batch_size)
        if progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc="capture K/V", unit="batch")
        device = next(model.parameters()).device
        for s in starts:
            chunk = ids[s : s + batch_size].to(device)
            current.clear()
            model(chunk, use_cache=False)
            for i in range(L):
                b = chunk.shape[0]
                k = current[(i, "K")].view(b, T, H, D).permute(2, 0, 1, 3).cpu()
                v = current[(i, "V")].view(b, T, H, D).permute(2, 0, 1, 3).cpu()
                keys[i, :, s : s + b] = k
                values[i, :, s : s + b] = v
    finally:
        for h in handles:
            h.remove()
    return keys, values


def _fingerprint(model, ids: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update(ids.numpy().tobytes())
    h.update(str(tuple(ids.shape)).encode())
    for layer in model.model.layers:
        for proj in (layer.self_attn.k_proj, layer.self_attn.v_proj):
            w = proj.weight.detach().float()
            h.update(f"{w.sum().item():.6e},{w.abs().sum().item():.6e},{w[0, :8].tolist()}".encode())
    return h.hexdigest()[:20]
