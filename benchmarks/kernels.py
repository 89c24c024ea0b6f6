"""Triton kernels vs the PyTorch references, on a GPU.

    python benchmarks/kernels.py [--T 2048 8192 32768] [--ranks 32 64] [--reps 10]

Measures, with CUDA events (median of --reps after warm-up), on the device it names:

1. SKA chunk mode forward and forward+backward: the fused kernels (``echo_kernels.ska.forward``, each
   on-chip solver: chol, gj, ns) and the three unfused kernels vs ``echo_tutor.ska.ska_chunked`` and
   ``torch.compile`` of it, at each T, B*H = 32 (B=4, H=8), r in --ranks, P = 64, S = 64, against the
   issue's targets (met, or missed by how much); each solver's error against the float64 reference; a
   profile of the fused path (1c); then fla's MesaNet chunk kernel (the anchor) where ``fla`` imports.
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


TARGETS = {"fwd vs ref": 3.0, "fwd vs compiled": 1.5, "f+b vs ref": 2.0, "decode vs ref": 5.0, "rebuild of peak": 0.5}


def _verdict(got: float, target: float) -> str:
    return "met" if got >= target else f"missed by x{target / got:.2f}"


def chunk_section(args, kska) -> None:
    """SKA chunk forward and forward + backward: reference, torch.compile of the reference, the unfused
    kernels (three kernels + PyTorch's Cholesky), and the fused kernels with each on-chip solver."""
    from echo_tutor.ska import ska_chunked
    from echo_tutor.ska.ops import ska_chunked_ops

    B, H, P, S = 4, 8, 64, 64
    compiled = torch.compile(ska_chunked, fullgraph=True, dynamic=False)
    paths = {"ref": ska_chunked, "compiled": compiled,
             "unfused": lambda *a, **k: ska_chunked_ops(*a, ops=kska, **k),
             **{f"fused {s}": (lambda s: lambda *a, **k: kska.forward(*a, solver=s, **k))(s) for s in kska.SOLVERS}}
    print(f"\n1. SKA chunk mode, B*H={B * H}, P={P}, S={S}, K=2, spectral norm on; ms, and x = reference / path")
    for T in args.T:
        for r in args.ranks:
            q, k, v = _inputs(B, T, H, r, P)
            kw = dict(mode="chunk", chunk_size=S, spectral_norm=True)

            def fb(fn):
                def run():
                    y, _ = fn(q, k, v, **kw)
                    y.sum().backward()
                return run

            with torch.no_grad():
                fwd = {n: _time(lambda f=f: f(q, k, v, **kw), args.reps) for n, f in paths.items()}
            both = {n: _time(fb(paths[n]), args.reps) for n in ("ref", "compiled", "fused chol")}
            print(f"  T={T} r={r} forward: " + ", ".join(f"{n} {t * 1e3:.2f}" + ("" if n == "ref" else f" (x{fwd['ref'] / t:.2f})")
                                                        for n, t in fwd.items()))
            print(f"  T={T} r={r} fwd+bwd: " + ", ".join(f"{n} {t * 1e3:.2f}" + ("" if n == "ref" else f" (x{both['ref'] / t:.2f})")
                                                        for n, t in both.items()))
            best = fwd["fused chol"]    # the default solver: Newton-Schulz may be faster and less accurate
            print(f"  targets (fused chol): fwd vs ref x{fwd['ref'] / best:.2f} "
                  f"({_verdict(fwd['ref'] / best, TARGETS['fwd vs ref'])}), "
                  f"fwd vs compiled x{fwd['compiled'] / best:.2f} ({_verdict(fwd['compiled'] / best, TARGETS['fwd vs compiled'])}), "
                  f"f+b vs ref x{both['ref'] / both['fused chol']:.2f} "
                  f"({_verdict(both['ref'] / both['fused chol'], TARGETS['f+b vs ref'])})", flush=True)
            print("  accuracy: " + accuracy_line(kska, q.detach(), k.detach(), v.detach(), S), flush=True)


def accuracy_line(kska, q, k, v, S: int, ns_iters=(15, 30)) -> str:
    """Relative RMS error of each fused solver's y against the float64 reference (same inputs)."""
    from echo_tutor.ska import ska_chunked

    kw = dict(mode="chunk", chunk_size=S, spectral_norm=True)
    with torch.no_grad():
        want = ska_chunked(q.double(), k.double(), v.double(), **kw)[0]
        err = lambda y: float((y.double() - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())  # noqa: E731
        out = [f"float32 reference {err(ska_chunked(q, k, v, **kw)[0]):.1e}"]
        out += [f"fused {s} {err(kska.forward(q, k, v, solver=s, **kw)[0]):.1e}" for s in ("chol", "gj")]
        out += [f"fused ns/{n} {err(kska.forward(q, k, v, solver='ns', ns_iters=n, **kw)[0]):.1e}" for n in ns_iters]
    return "rel-RMS error vs float64: " + ", ".join(out)


def accuracy_only(args) -> int:
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")   # before the first import of the kernels
    import echo_kernels.ska as kska

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"fused solvers against the float64 reference, B=1, H=2, T=256, P=64, S=64, K=2, spectral norm on ({dev})")
    for r in args.ranks:
        g = torch.Generator().manual_seed(r)         # each rank's inputs do not depend on the others run
        q = torch.randn(1, 256, 2, r, generator=g)
        k = torch.nn.functional.normalize(torch.randn(1, 256, 2, r, generator=g), dim=-1)
        v = torch.randn(1, 256, 2, 64, generator=g)
        print(f"  r={r}: " + accuracy_line(kska, q.to(dev), k.to(dev), v.to(dev), 64), flush=True)
    return 0


def profile_section(args, kska) -> None:
    """Where the fused path's time goes (one forward + backward at the largest T and rank)."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = _inputs(4, max(args.T), 8, max(args.ranks), 64)
    kw = dict(mode="chunk", chunk_size=64, spectral_norm=True)
    for _ in range(2):
        kska.forward(q, k, v, **kw)[0].sum().backward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        kska.forward(q, k, v, **kw)[0].sum().backward()
        torch.cuda.synchronize()
    print(f"\n1c. profile of the fused path, forward + backward, T={max(args.T)}, r={max(args.ranks)} (top CUDA kernels)")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=48), flush=True)


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
              f"without spectral norm x{tr0 / tt0:.2f}; target x{TARGETS['decode vs ref']:.0f}: "
              f"{_verdict(tr / tt, TARGETS['decode vs ref'])}", flush=True)


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
                  f"PyTorch op x{tref / t:.2f} slower; target {TARGETS['rebuild of peak']:.0%}: "
                  f"{_verdict(gbps / peak, TARGETS['rebuild of peak'])}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, nargs="+", default=[2048, 8192, 32768])
    ap.add_argument("--ranks", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--accuracy-only", action="store_true",
                    help="only each fused solver's error against float64 (B=1, H=2, T=256, r in --ranks); on a CPU "
                         "in Triton's interpreter (set here), where it measures what a GPU run would")
    args = ap.parse_args(argv)
    if args.accuracy_only:
        return accuracy_only(args)
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
    profile_section(args, kska)
    fla_section(args)
    decode_section(args, kska)
    rebuild_section(args, kecho, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
