"""Triton kernels vs the PyTorch references, on a GPU.

    python benchmarks/kernels.py [--T 2048 8192 32768] [--ranks 32 64] [--reps 10]

Measures, with CUDA events (median of --reps after warm-up), on the device it names:

1. SKA chunk mode forward and forward+backward: ``echo_kernels.ska.forward`` vs
   ``echo_tutor.ska.ska_chunked`` and ``torch.compile`` of it, at each T, B*H = 32 (B=4, H=8), r in --ranks,
   P = 64, S = 64; then fla's MesaNet chunk kernel (the anchor) where ``fla`` imports.
   (The kernel path's backward recomputes through the reference: see echo_kernels/ska/__init__.py.)
2. The decode step: ``echo_kernels.ska.decode`` vs ``ska_recurrent`` on one token, B*H = 32.
3. EchoKV's fused rebuild (``echo_kernels.echokv.forward``): achieved bandwidth (bytes read + written per
   second) as a fraction of the card's peak (a table of known cards, else a measured device copy).

Prints ratios measured in this one run. Without a CUDA device it says so and exits: the CPU
interpreter runs the kernels for correctness only, and its timings mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

PEAK_GBPS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H100 NVL": 3900, "H200": 4800,
             "A100-SXM4-80GB": 2039, "A100 80GB PCIe": 1935, "A100-SXM4-40GB": 1555, "L4": 300, "A10G": 600}


def _time(fn, reps: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / 1e3)
    return statistics.median(out)


def _peak_gbps(name: str) -> tuple[float, str]:
    for key, val in PEAK_GBPS.items():
        if key.lower() in name.lower():
            return float(val), f"spec sheet ({key})"
    x = torch.empty(2**28, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = _time(lambda: y.copy_(x), 10)
    return 2 * x.numel() / t / 1e9, "measured device copy (unknown card)"


def _inputs(B: int, T: int, H: int, r: int, P: int):
    q = torch.randn(B, T, H, r, device="cuda", requires_grad=True)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, r, device="cuda"), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, P, device="cuda", requires_grad=True)
    return q, k, v


def chunk_section(args, kska) -> None:
    """SKA chunk forward and forward + backward: reference, torch.compile of the reference, the Triton path."""
    from echo_tutor.ska import ska_chunked

    B, H, P, S = 4, 8, 64, 64
    compiled = torch.compile(ska_chunked, fullgraph=True, dynamic=False)
    print(f"\n1. SKA chunk mode, B*H={B * H}, P={P}, S={S}, K=2, spectral norm on (ms; x = reference / that)")
    print(f"{'T':>6} {'r':>3} {'fwd ref':>8} {'compiled':>9} {'x':>5} {'triton':>8} {'x':>5} {'x vs comp':>9} "
          f"{'f+b ref':>8} {'f+b comp':>9} {'x':>5} {'f+b trit':>9} {'x':>5}")
    for T in args.T:
        for r in args.ranks:
            q, k, v = _inputs(B, T, H, r, P)
            kw = dict(mode="chunk", chunk_size=S, spectral_norm=True)

            def fwd(fn):
                return lambda: fn(q, k, v, **kw)

            def fb(fn):
                def run():
                    y, _ = fn(q, k, v, **kw)
                    y.sum().backward()
                return run

            with torch.no_grad():
                fr, fc, ft = (_time(fwd(f), args.reps) for f in (ska_chunked, compiled, kska.forward))
            br, bc, bt = (_time(fb(f), args.reps) for f in (ska_chunked, compiled, kska.forward))
            print(f"{T:>6} {r:>3} {fr * 1e3:>8.2f} {fc * 1e3:>9.2f} {fr / fc:>5.2f} {ft * 1e3:>8.2f} {fr / ft:>5.2f} "
                  f"{fc / ft:>9.2f} {br * 1e3:>8.2f} {bc * 1e3:>9.2f} {br / bc:>5.2f} {bt * 1e3:>9.2f} {br / bt:>5.2f}",
                  flush=True)


def fla_section(args) -> None:
    """fla's MesaNet chunk kernel (the same ridge readout as K = 0, with a conjugate-gradient solve), r = P = 64."""
    try:
        from fla.ops.mesa_net import chunk_mesa_net
    except Exception as e:  # noqa: BLE001 - not installed, or built for another torch
        print(f"\n1b. fla's MesaNet: not timed (fla does not import here: {type(e).__name__})")
        return
    B, H, D = 4, 8, 64
    print(f"\n1b. fla's MesaNet chunk forward (B*H={B * H}, r=P={D}, no decay, beta 1, 30 CG steps), bfloat16 q/k/v")
    for T in args.T:
        q, k, v = (t.detach().to(torch.bfloat16) for t in _inputs(B, T, H, D, D))
        g = torch.zeros(B, T, H, device="cuda")
        beta = torch.ones(B, T, H, device="cuda")
        lamb = torch.full((H, D), 0.25, device="cuda")
        with torch.no_grad():
            t = _time(lambda: chunk_mesa_net(q=q, k=k, v=v, g=g, beta=beta, lamb=lamb, max_CG_iteration=30), args.reps)
        print(f"  T={T:>6}: {t * 1e3:.2f} ms", flush=True)


def decode_section(args, kska) -> None:
    from echo_tutor.ska import SKAState, ska_recurrent

    B, H, P = 4, 8, 64
    print(f"\n2. decode step (one token), B*H={B * H}, P={P}")
    for r in args.ranks:
        st = SKAState.zeros(B, H, r, P, device="cuda")
        q, k, v = (torch.randn(B, 1, H, d, device="cuda") for d in (r, r, P))
        g_inv = torch.linalg.inv(st.G)
        with torch.no_grad():
            tr = _time(lambda: ska_recurrent(q, k, v, state=st, spectral_norm=True), args.reps * 5)
            tt = _time(lambda: kska.decode(q, k, v, None, st, g_inv, spectral_norm=True), args.reps * 5)
            tt0 = _time(lambda: kska.decode(q, k, v, None, st, g_inv, spectral_norm=False), args.reps * 5)
            tr0 = _time(lambda: ska_recurrent(q, k, v, state=st, spectral_norm=False), args.reps * 5)
        print(f"  r={r}: reference {tr * 1e6:.0f} us, triton {tt * 1e6:.0f} us (x{tr / tt:.2f}); "
              f"without spectral norm x{tr0 / tt0:.2f}", flush=True)


def rebuild_section(args, kecho, name: str) -> None:
    from echo_tutor.echokv.ops import rebuild_heads

    peak, src = _peak_gbps(name)
    print(f"\n3. EchoKV fused rebuild (peak bandwidth {peak:.0f} GB/s, {src})")
    for T in (2048, 8192, 32768):
        for dtype in (torch.float16, torch.bfloat16):
            J, O, D, Bb = 9, 2, 64, 8
            x = torch.randn(Bb, J, T, D, device="cuda", dtype=dtype)
            ang = torch.rand(T, D // 2, device="cuda") * 100
            ang = torch.cat([ang, ang], -1)
            cos, sin = ang.cos(), ang.sin()
            W, b = torch.randn(O, J, D, D, device="cuda") / 8, torch.randn(O, D, device="cuda")
            t = _time(lambda: kecho.forward(x, cos, sin, W, b, True), args.reps)
            tref = _time(lambda: rebuild_heads(x, cos, sin, W, b, True), args.reps)
            moved = x.numel() * x.element_size() + Bb * O * T * D * x.element_size() + 2 * cos.numel() * 4 + W.numel() * 4
            gbps = moved / t / 1e9
            print(f"  T={T:>6} {str(dtype)[6:]:>8}: {t * 1e6:8.0f} us, {gbps:7.0f} GB/s = {gbps / peak:5.1%} of peak; "
                  f"PyTorch op x{tref / t:.2f} slower", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--ranks", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU and found none: nothing measured.\n"
              "On CPU the Triton kernels run only under TRITON_INTERPRET=1 (tests/test_kernels.py), which checks\n"
              "correctness; interpreter timings say nothing about GPU speed.")
        return 0
    try:
        import echo_kernels.echokv as kecho
        import echo_kernels.ska as kska
    except Exception as e:  # pragma: no cover
        print(f"could not import the Triton kernels: {e}")
        return 1
    name = torch.cuda.get_device_name()
    print(f"device: {name}, torch {torch.__version__}, median of {args.reps}")
    torch.manual_seed(0)
    chunk_section(args, kska)
    fla_section(args)
    decode_section(args, kska)
    rebuild_section(args, kecho, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
