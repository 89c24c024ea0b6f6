"""Decode cost of SmolLM2-135M with converted attention layers (CPU): per-token latency and context bytes.

    python benchmarks/convert_decode.py [--contexts 1024 4096 16384] [--steps 12] [--variant window+ska:K1]

For each context length T, B=1, one run: the original model decoding against a full KV cache of T tokens
and the model with **all 30 layers** converted (``--variant``, W=64 + 4 sinks, r=32) decoding through its
fixed state. Neither is prefilled (a 16k-token prefill takes minutes on a CPU and does not change the cost of
a decode step): the original's cache is filled with random keys and values of length T, the converted
layers' states are built by streaming a few hundred random tokens and then set to position T (their size
and the work of a step do not depend on how many tokens they have read). Reports the median milliseconds per
token over ``--steps`` steps, the ratio original/converted, and the bytes each keeps for its context,
measured from the tensors held. CPU timings on shared machines are noisy: quote the ratios.
"""

from __future__ import annotations

import pathlib
import sys

# this folder holds kernels.py, which would shadow the `kernels` package transformers looks for on import
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]

import argparse
import statistics
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--variant", default="window+ska:K1")
    args = ap.parse_args(argv)
    if args.steps < 3 or min(args.contexts) < 128:
        ap.error("--steps must be >= 3 and every context >= 128")

    from transformers.cache_utils import DynamicCache

    from echo_tutor.convert.study import converted, new_mixer, parse_variant
    from echo_tutor.echokv import load_smollm2

    model, _ = load_smollm2()
    model.requires_grad_(False)
    n_layers = len(model.model.layers)
    n_kv, hd = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    spec = parse_variant(args.variant)
    mixers = {i: new_mixer(model, i, spec) for i in range(n_layers)}
    print(f"SmolLM2-135M float32, torch {torch.__version__}, {torch.get_num_threads()} threads, B=1; converted: all "
          f"{n_layers} layers, {spec.label}")
    print(f"{'model':<28} {'context':>7} {'decode ms/tok':>14} {'context bytes':>14}")
    g = torch.Generator().manual_seed(0)
    tok = torch.tensor([[42]])
    for T in args.contexts:
        # the original: a full cache of T random rows per layer
        cache = DynamicCache()
        for i in range(n_layers):
            cache.update(torch.randn(1, n_kv, T, hd, generator=g), torch.randn(1, n_kv, T, hd, generator=g), i)
        times = []
        with torch.no_grad():
            for s in range(args.steps):
                t0 = time.perf_counter()
                model(tok, cache=cache, use_cache=True, position_ids=torch.tensor([[T + s]]))
                times.append(time.perf_counter() - t0)
        kv_bytes = sum(l.keys.numel() * 4 + l.values.numel() * 4 for l in cache.layers)
        full_ms = 1e3 * statistics.median(times)
        print(f"{'original (KV cache)':<28} {T:>7} {full_ms:>14.2f} {kv_bytes:>14,}")
        # converted: states after streaming a few hundred random tokens (their size no longer changes)
        with converted(model, mixers), torch.no_grad():
            cache = DynamicCache()
            warm = torch.randint(0, 1000, (1, 2 * spec.window + spec.sinks + 8), generator=g)
            model(warm, cache=cache, use_cache=True, position_ids=torch.arange(warm.shape[1])[None])
            times = []
            for s in range(args.steps):
                t0 = time.perf_counter()
                model(tok, cache=cache, use_cache=True, position_ids=torch.tensor([[T + s]]))
                times.append(time.perf_counter() - t0)
            st_bytes = sum(m._stream.nbytes for m in mixers.values())
        conv_ms = 1e3 * statistics.median(times)
        print(f"{'converted (' + spec.variant + ')':<28} {T:>7} {conv_ms:>14.2f} {st_bytes:>14,}")
        print(f"{'':<28} {'ratio':>7} {full_ms / conv_ms:>13.2f}x {kv_bytes / st_bytes:>13.1f}x   (original / converted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
