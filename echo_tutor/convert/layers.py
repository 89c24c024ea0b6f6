"""Converting layers one at a time: capture a layer's inputs, stage 1 (attention transfer), swap converted
layers into a model, and count the bytes a (partly) converted model keeps for its context."""

from __future__ import annotations

import contextlib
import time

import torch

from ..errors import BadArgumentError
from .mixer import ConvertedAttention
from .spec import MixerSpec

__all__ = [
    "capture_inputs", "causal_mask", "converted", "fit_layer", "kv_bytes", "layer_inputs", "load_mixer",
    "mixer_bytes", "mixer_params", "new_mixer", "original_attention", "relative_error", "state_bytes",
]


def maybe_bar(it, enabled: bool, desc: str):
    if not enabled:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return it
    return tqdm(it, desc=desc, leave=False)


def llama_layout(model) -> tuple[int, int, int, int]:
    c = model.config
    n_q, n_kv = int(c.num_attention_heads), int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_q)
    return len(model.model.layers), n_q, n_kv, head_dim


def check_layer(model, layer: object) -> int:
    n = len(model.model.layers)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise BadArgumentError(f"layer must be an int in [0, {n - 1}] (the model has {n} layers), got {layer!r}")
    return layer


def new_mixer(model, layer: int, spec: MixerSpec) -> ConvertedAttention:
    """A fresh converted layer initialised from ``model``'s layer ``layer`` (its own projections)."""
    check_layer(model, layer)
    _, n_q, n_kv, hd = llama_layout(model)
    attn = model.model.layers[layer].self_attn
    if isinstance(attn, ConvertedAttention):
        raise BadArgumentError(f"layer {layer} is already converted; fit on the original model")
    return ConvertedAttention(attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)


# --------------------------------------------------------------------------------------------------
# Capture, stage 1
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def capture_inputs(model, ids: torch.Tensor, layers: list[int] | None = None, *, batch_size: int = 4) -> dict[int, torch.Tensor]:
    """The inputs of each attention layer (after the layer's input norm) on ``ids`` [N, T]:
    ``{layer: float16 [N, T, d]}`` (float16 halves the memory; stage 1 upcasts)."""
    layers = list(range(len(model.model.layers))) if layers is None else [check_layer(model, i) for i in layers]
    store: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = []
    for i in layers:
        def pre(mod, args, kwargs, i=i):
            h = kwargs.get("hidden_states", args[0] if args else None)
            store[i].append(h.detach().to("cpu", torch.float16))
        hooks.append(model.model.layers[i].self_attn.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        dev = next(model.parameters()).device
        for s in range(0, ids.shape[0], batch_size):
            model(ids[s:s + batch_size].to(dev))
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(v) for i, v in store.items()}


def layer_inputs(model, T: int, device=None):
    """``(cos, sin)`` [1, T, D] of ``model``'s RoPE at positions 0..T-1."""
    dev = device or next(model.parameters()).device
    probe = torch.empty(0, device=dev)
    return model.model.rotary_emb(probe, torch.arange(T, device=dev)[None])


def causal_mask(T: int, device=None) -> torch.Tensor:
    """An additive causal mask ``[1, 1, T, T]`` (0 on and below the diagonal, -inf above), for calling an
    attention layer directly (eager attention is not causal without one)."""
    return torch.full((T, T), float("-inf"), device=device).triu(1)[None, None]


def original_attention(attn, x: torch.Tensor, rope) -> torch.Tensor:
    """The original layer's attention output on inputs ``x`` [B, T, d] (causal)."""
    return attn(x, position_embeddings=rope, attention_mask=causal_mask(x.shape[1], x.device))[0]


def relative_error(mixer: ConvertedAttention, attn, x: torch.Tensor, rope, batch_size: int = 2) -> float:
    """``mean ||mixer(x) - attn(x)||^2 / mean ||attn(x)||^2`` over the windows of ``x`` [N, T, d]."""
    num = den = 0.0
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s:s + batch_size].float()
            tgt = original_attention(attn, xb, rope)
            y = mixer(xb, position_embeddings=rope)[0]
            num += float((y - tgt).square().sum())
            den += float(tgt.square().sum())
    return num / den


def fit_layer(model, layer: int, spec: MixerSpec, x: torch.Tensor, *, steps: int = 40, batch: int = 2,
              lr: float = 1e-2, heldout: torch.Tensor | None = None, seed: int = 0, progress: bool = False) -> tuple[ConvertedAttention, dict]:
    """Stage 1 ("attention transfer"): fit a converted layer to reproduce the layer's attention output.

    Args:
        x: the layer's captured inputs ``[N, T, d]`` (calibration text); ``heldout`` likewise, for the error
            before and after (defaults to the last quarter of ``x``, which is then not trained on).
    Returns:
        the mixer and ``{"rel_err_before", "rel_err_after", "losses", "seconds"}`` (relative errors on the
        held-out inputs; the original projections stay frozen, only the mixer's own parameters move).
    """
    mixer = new_mixer(model, layer, spec)
    attn = model.model.layers[layer].self_attn
    if heldout is None:
        n_held = max(1, x.shape[0] // 4)
        x, heldout = x[:-n_held], x[-n_held:]
    rope = layer_inputs(model, x.shape[1], "cpu")
    t0 = time.time()
    before = relative_error(mixer, attn, heldout, rope)
    params = [p for p in mixer.parameters() if p.requires_grad]
    losses: list[float] = []
    if params and steps > 0 and spec.variant != "window":
        opt = torch.optim.Adam(params, lr=lr)
        g = torch.Generator().manual_seed(seed)
        for _ in maybe_bar(range(steps), progress, f"stage 1, layer {layer}"):
            idx = torch.randint(0, x.shape[0], (batch,), generator=g)
            xb = x[idx].float()
            with torch.no_grad():
                tgt = original_attention(attn, xb, rope)
            y = mixer(xb, position_embeddings=rope)[0]
            loss = (y - tgt).square().mean() / tgt.square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    after = relative_error(mixer, attn, heldout, rope)
    return mixer, {"rel_err_before": before, "rel_err_after": after, "losses": losses, "seconds": time.time() - t0}


def mixer_params(mixer: ConvertedAttention) -> dict[str, torch.Tensor]:
    """The mixer's own (trainable) parameters, float16, for shipping."""
    return {n: p.detach().to(torch.float16).clone() for n, p in mixer.named_parameters() if p.requires_grad}


def load_mixer(model, layer: int, spec: MixerSpec, params: dict[str, torch.Tensor]) -> ConvertedAttention:
    """A converted layer with parameters from :func:`mixer_params`."""
    m = new_mixer(model, layer, spec)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.copy_(params[n].float())
    return m


@contextlib.contextmanager
def converted(model, mixers: dict[int, ConvertedAttention]):
    """Within the block, ``model``'s layers in ``mixers`` use the converted attention; restored after. To decode
    with a cache, make a :class:`~echo_tutor.convert.cache.ConvertedCache` inside the block."""
    layers = model.model.layers
    old = {}
    try:
        for i, m in mixers.items():
            check_layer(model, i)
            old[i] = layers[i].self_attn
            layers[i].self_attn = m
        yield model
    finally:
        for i, a in old.items():
            layers[i].self_attn = a


# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------
def kv_bytes(model, tokens: int, bytes_per: int = 4) -> int:
    """Bytes of one full-attention layer's KV cache at ``tokens`` tokens (batch 1): ``2 T Hkv D``."""
    _, _, n_kv, hd = llama_layout(model)
    return 2 * tokens * n_kv * hd * bytes_per


def mixer_bytes(model, spec: MixerSpec, bytes_per: int = 4) -> int:
    """Bytes of one converted layer's decode state (batch 1), whatever the context length."""
    _, _, n_kv, hd = llama_layout(model)
    return ConvertedAttention.state_nbytes_for(spec, n_kv, hd, 1, {2: torch.float16, 4: torch.float32}[bytes_per])


def state_bytes(model, spec: MixerSpec | None, n_converted: int, tokens: int, bytes_per: int = 4) -> int:
    """Bytes the whole model keeps for its context at ``tokens`` tokens when ``n_converted`` layers are
    converted to ``spec``: full KV rows for the others, the fixed state for the converted ones."""
    n_layers = llama_layout(model)[0]
    if spec is None or n_converted == 0:
        return n_layers * kv_bytes(model, tokens, bytes_per)
    conv = mixer_bytes(model, spec, bytes_per)
    if spec.has_window and tokens < spec.window:  # a window that is not full yet
        conv = min(conv, kv_bytes(model, tokens, bytes_per) + conv - kv_bytes(model, spec.window, bytes_per))
    return (n_layers - n_converted) * kv_bytes(model, tokens, bytes_per) + n_converted * conv
