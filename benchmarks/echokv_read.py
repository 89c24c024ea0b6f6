"""EchoKV's compressed decode read, one layer, by path: why rebuilding every past token per step is slow,
and what fusing it can and cannot win.

    python benchmarks/echokv_read.py [--T 512 2048 8192] [--J 8] [--O 2] [--reps 30]

One decode query step of one layer at SmolLM2-135M's sizes (D = 64, G = 3 query heads per KV head), the
discarded heads only (the retained heads are read as in a full cache either way): O discarded KV heads,
each rebuilt from J retained inputs (at kept fraction 0.5, SmolLM2's fixed selection has J = 7-8 and O = 1-2).
Paths, each returning the same attention output (checked):

* ``full``: the heads are stored; softmax attention over their K and V (the full cache's read).
* ``rebuild K+V``: what ``EchoKVCache`` does today: rebuild every past K and V row, then attend.
* ``values after``: rebuild K only; apply the linear value maps after the softmax average of the
  retained values (exact, ``echo_tutor.echokv.ops.rebuild_attend(values="after")``).
* on a GPU also ``triton rebuild K+V`` (``echo_kernels.echokv.forward`` then attention) and ``triton
  scores + values after`` (``echo_kernels.echokv.scores``: keys rebuilt in registers, never written),
  with float32 ("ieee") and tensor-core ("tf32") products.

Prints the median time of each path and its ratio to ``full`` from this one run, and the work per past
token: FLOPs added by the rebuild against the bytes a full cache would have read. CPU timings on shared
machines are noisy: quote the ratios.
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--J", type=int, default=8)
    ap.add_argument("--O", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    if min(args.T) < 1 or args.J < 1 or args.O < 1 or args.reps < 1:
        ap.error("--T, --J, --O and --reps must be >= 1")
    from echo_tutor.echokv.readpath import read_case, read_paths
    from echo_tutor.timing import median_seconds

    cuda = torch.cuda.is_available()
    device, dtype, D, G = ("cuda", torch.float16, 64, 3) if cuda else ("cpu", torch.float32, 64, 3)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {str(dtype)[6:]} cache, J={args.J} inputs, O={args.O} discarded heads, "
          f"G={G}, D={D}; median of {args.reps}; x = path time / full time")
    esize = torch.finfo(dtype).bits // 8
    flops_k = 2 * args.J * D * D
    print(f"per past token and discarded head: rebuilding the key costs {flops_k:,} FLOPs (the value as much again), "
          f"against {2 * D * esize} bytes of K and V a full cache reads: {flops_k / (2 * D * esize):.0f} FLOPs of key "
          "rebuild per byte not stored")
    ps = read_paths(device)
    with torch.inference_mode():
        for T in args.T:
            case = read_case(T, args.J, args.O, G, D, device, dtype)
            fns = {n: make(case) for n, make in ps.items()}
            ref = fns["full"]()
            for n, fn in fns.items():
                err = float((fn().float() - ref).norm() / ref.norm())
                assert err < 1e-2, f"{n}: rel. error {err:.1e} against the full read"
            t = {n: median_seconds(fn, args.reps, device) for n, fn in fns.items()}
            print(f"T={T:>6}: " + ", ".join(f"{n} {v * 1e3:.3f} ms" + ("" if n == "full" else f" (x{v / t['full']:.1f})")
                                           for n, v in t.items()), flush=True)
            moved = 2 * args.O * T * D * esize
            print(f"          full read {moved / t['full'] / 1e9:.1f} GB/s; rebuild K+V "
                  f"{2 * args.O * T * flops_k / t['rebuild K+V'] / 1e9:.1f} GFLOP/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
