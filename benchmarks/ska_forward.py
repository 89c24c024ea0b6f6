"""SKA forward: chunked vs token-recurrent reference, and SKA state bytes vs KV-cache bytes.

    python benchmarks/ska_forward.py [--lengths 256 1024 4096] [--repeats 3]

Times are medians of ``--repeats`` runs in this one process (CPU timings on shared machines are noisy:
compare the ratios, not the absolute numbers). B=4, H=4, r=32, P=32, chunk_size=64, K=2, float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from echo_tutor.ska import ska_chunked, ska_recurrent


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-lengths", type=int, nargs="+", default=[1024, 16384, 131072])
    args = ap.parse_args(argv)
    if args.repeats < 1 or min(args.lengths) < 1:
        ap.error("--repeats and --lengths must be >= 1")

    B, H, r, P = 4, 4, 32, 32
    g = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B={B} H={H} r={r} P={P} K=2 S=64 float32")
    print(f"median of {args.repeats} runs\n")
    print(f"{'mode':<6} {'T':>6} {'recurrent s':>12} {'chunked s':>10} {'speed-up':>9}")
    with torch.no_grad():
        for mode in ("chunk", "token"):
            for T in args.lengths:
                q = torch.nn.functional.normalize(torch.randn(B, T, H, r, generator=g), dim=-1)
                k = torch.nn.functional.normalize(torch.randn(B, T, H, r, generator=g), dim=-1)
                v = torch.randn(B, T, H, P, generator=g)
                beta = torch.rand(B, T, H, generator=g)
                kw = dict(power_steps=2, mode=mode, chunk_size=64, spectral_norm=True)
                t_rec = median_time(lambda: ska_recurrent(q, k, v, beta, **kw), args.repeats)
                t_chk = median_time(lambda: ska_chunked(q, k, v, beta, **kw), args.repeats)
                print(f"{mode:<6} {T:>6} {t_rec:>12.3f} {t_chk:>10.4f} {t_rec / t_chk:>8.1f}x", flush=True)

    print(f"\nstate bytes, one layer, B=1, H={H}, r={r}, P={P}, float32 (measured from the tensors held)")
    print(f"{'T':>8} {'SKA state':>12} {'KV cache':>14} {'KV / SKA':>10}")
    with torch.no_grad():
        for T in args.kv_lengths:
            k = torch.randn(1, T, H, r, generator=g)
            v = torch.randn(1, T, H, P, generator=g)
            _, st = ska_chunked(k, k, v, mode="chunk", chunk_size=1024, power_steps=0)
            kv = k.numel() * k.element_size() + v.numel() * v.element_size()
            print(f"{T:>8} {st.nbytes:>12,d} {kv:>14,d} {kv / st.nbytes:>9.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
