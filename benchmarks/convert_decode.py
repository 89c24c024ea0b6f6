"""Decode cost of SmolLM2-135M with converted attention layers (CPU): per-token latency and context bytes.

    python benchmarks/convert_decode.py [--contexts 1024 4096 16384] [--steps 12] [--count 30] \
        [--variants window+ska:K1 window+ska:K1:S16]

For each context length T, B=1, one run: the original model decoding against a full KV cache of T tokens, then
for each of ``--variants`` the model with the first ``--count`` layers of the shipped conversion's cost order
converted (30: all of them; W=64 + 4 sinks, r=32, the shipped stage-1 mixers) decoding through a
:class:`~echo_tutor.convert.ConvertedCache`: its converted layers step their fixed state, the others read a KV
cache of T rows. Nothing is prefilled at length T (a 16k-token prefill takes minutes on a CPU and does not
change the cost of a decode step): the KV rows are random, and the converted layers' states are built by
streaming a few hundred random tokens and then set to position T (their size and the work of a step do not
depend on how many tokens they have read). Reports the median milliseconds per token over ``--steps`` steps,
the ratio original/converted, and the bytes the cache holds, measured from its tensors. CPU timings on shared
machines are noisy: quote the ratios, measured in one run.
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
    ap.add_argument("--count", type=int, default=30, help="converted layers, cheapest first (30: all)")
    ap.add_argument("--variants", nargs="+", default=["window+ska:K1"])
    args = ap.parse_args(argv)
    if args.steps < 3 or min(args.contexts) < 512:
        ap.error("--steps must be >= 3 and every context >= 512")
    if not 1 <= args.count <= 30:
        ap.error("--count must be in [1, 30] (SmolLM2 has 30 layers)")

    from transformers.cache_utils import DynamicCache

    from echo_tutor.convert import ConvertedCache
    from echo_tutor.convert.spec import parse_variant
    from echo_tutor.convert.study import converted, shipped_mixers
    from echo_tutor.echokv import load_smollm2
    from echo_tutor.pretrained import results

    try:
        specs = {v: parse_variant(v) for v in args.variants}
    except ValueError as e:
        ap.error(str(e))
    model, _ = load_smollm2()
    model.requires_grad_(False)
    n_layers = len(model.model.layers)
    n_kv, hd = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    layers = sorted(results("convert")["order"][:args.count])
    print(f"SmolLM2-135M float32, torch {torch.__version__}, {torch.get_num_threads()} threads, B=1; converted: "
          f"{len(layers)} of {n_layers} layers {layers}")
    print(f"{'model':<34} {'context':>7} {'decode ms/tok':>14} {'context bytes':>14} {'vs original':>22}")
    g = torch.Generator().manual_seed(0)
    tok = torch.tensor([[42]])

    def decode(cache, T):
        times = []
        with torch.no_grad():
            for s in range(args.steps):
                t0 = time.perf_counter()
                model(tok, cache=cache, use_cache=True, position_ids=torch.tensor([[T + s]]))
                times.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(times)

    def rows(T):
        return torch.randn(1, n_kv, T, hd, generator=g), torch.randn(1, n_kv, T, hd, generator=g)

    for T in args.contexts:
        cache = DynamicCache()
        for i in range(n_layers):
            cache.update(*rows(T), i)
        full_bytes = sum(l.keys.numel() * 4 + l.values.numel() * 4 for l in cache.layers)
        full_ms = decode(cache, T)
        print(f"{'original (KV cache)':<34} {T:>7} {full_ms:>14.2f} {full_bytes:>14,}")
        for v, spec in specs.items():
            mixers = shipped_mixers(model, v, layers)
            with converted(model, mixers), torch.no_grad():
                cache = ConvertedCache(model)
                warm = torch.randint(0, 1000, (1, 2 * spec.window + spec.sinks + spec.sparse + 8), generator=g)
                model(warm, cache=cache, use_cache=True, position_ids=torch.arange(warm.shape[1])[None])
                for i, layer in enumerate(cache.layers):
                    if i in mixers:
                        layer.state.count = T  # a fixed state: only its position moves
                    else:
                        layer.keys, layer.values = rows(T)
                ms, nbytes = decode(cache, T), cache.nbytes
            print(f"{spec.label:<34} {T:>7} {ms:>14.2f} {nbytes:>14,}   x{full_ms / ms:.2f} speed, x{full_bytes / nbytes:.2f} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
