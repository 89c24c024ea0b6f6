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
import statistics
import sys
import time

import torch


def _timer(cuda: bool):
    def run(fn, reps: int) -> float:
        for _ in range(3):
            fn()
        out = []
        for _ in range(reps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)
    return run


def _case(T: int, J: int, O: int, G: int, D: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(T)
    xk, xv = (torch.randn(1, J, T, D, generator=g).to(device, dtype) for _ in range(2))
    ang = torch.arange(T)[:, None] * torch.logspace(0, -4, D // 2)[None]
    ang = torch.cat([ang, ang], -1)
    Wk, Wv = (torch.randn(O, J, D, D, generator=g).div(D**0.5 * J**0.5).to(device) for _ in range(2))
    bk, bv = (torch.randn(O, D, generator=g).to(device) for _ in range(2))
    q = torch.randn(1, O, G, D, generator=g).to(device, dtype)
    return q, xk, xv, ang.cos().to(device), ang.sin().to(device), Wk, bk, Wv, bv


def paths(device: str):
    from echo_tutor.echokv.ops import rebuild_attend, rebuild_heads

    def attend(q, k, v):
        s = torch.einsum("bogd,botd->bogt", q.float(), k.float()) * q.shape[-1] ** -0.5
        return torch.softmax(s, -1) @ v.float()

    def make_full(case):
        q, xk, xv, cos, sin, Wk, bk, Wv, bv = case
        k, v = rebuild_heads(xk, cos, sin, Wk, bk, True), rebuild_heads(xv, cos, sin, Wv, bv, False)  # stored
        return lambda: attend(q, k, v)

    out = {"full": make_full,
           "rebuild K+V": lambda c: lambda: attend(c[0], rebuild_heads(c[1], *c[3:7], True),
                                                   rebuild_heads(c[2], c[3], c[4], c[7], c[8], False)),
           "values after": lambda c: lambda: rebuild_attend(*c, values="after")[0]}
    if device == "cuda":
        import echo_kernels.echokv as kecho
        out["triton rebuild K+V"] = lambda c: lambda: attend(c[0], kecho.forward(c[1], *c[3:7], True),
                                                             kecho.forward(c[2], c[3], c[4], c[7], c[8], False))
        out["triton scores + values after"] = lambda c: lambda: rebuild_attend(*c, scores=kecho.scores)[0]
        tf32 = lambda *a: kecho.scores(*a, precision="tf32")  # noqa: E731
        out["same, tf32 products"] = lambda c: lambda: rebuild_attend(*c, scores=tf32)[0]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--J", type=int, default=8)
    ap.add_argument("--O", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args(argv)
    if min(args.T) < 1 or args.J < 1 or args.O < 1 or args.reps < 1:
        ap.error("--T, --J, --O and --reps must be >= 1")
    cuda = torch.cuda.is_available()
    device, dtype, D, G = ("cuda", torch.float16, 64, 3) if cuda else ("cpu", torch.float32, 64, 3)
    time_it = _timer(cuda)
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, torch {torch.__version__}, {str(dtype)[6:]} cache, J={args.J} inputs, O={args.O} discarded heads, "
          f"G={G}, D={D}; median of {args.reps}; x = path time / full time")
    esize = torch.finfo(dtype).bits // 8
    flops_k = 2 * args.J * D * D
    print(f"per past token and discarded head: rebuilding K costs {flops_k:,} FLOPs (+ as much for V), the full cache "
          f"reads {2 * D * esize} bytes of K and V: {flops_k / (2 * D * esize):.0f} FLOPs of rebuild per byte not "
          "stored (K alone)")
    ps = paths(device)
    with torch.inference_mode():
        for T in args.T:
            case = _case(T, args.J, args.O, G, D, device, dtype)
            fns = {n: make(case) for n, make in ps.items()}
            ref = fns["full"]()
            for n, fn in fns.items():
                err = float((fn().float() - ref).norm() / ref.norm())
                assert err < 1e-2, f"{n}: rel. error {err:.1e} against the full read"
            t = {n: time_it(fn, args.reps) for n, fn in fns.items()}
            print(f"T={T:>6}: " + ", ".join(f"{n} {v * 1e3:.3f} ms" + ("" if n == "full" else f" (x{v / t['full']:.1f})")
                                           for n, v in t.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
