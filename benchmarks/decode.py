"""Per-token decode latency and inference-state bytes vs context length, per preset.

    python benchmarks/decode.py [--contexts 1024 4096 16384] [--steps 32] [--presets ssm echo attn]

For each preset (synth1m size: d=128, 4 blocks, vocab 128) and context T: prefill T tokens with
``forward`` (chunked), then time ``--steps`` calls of ``model.step`` (one token each, B=1) and report the
median. State bytes are counted from the tensors the state actually holds (``state_nbytes``). CPU
timings on shared machines are noisy: compare the ratios printed at the end, from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from echo_tutor.models import PRESETS, build, state_nbytes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--presets", nargs="+", default=["synth1m-ssm", "synth1m-echo", "synth1m-attn"], choices=list(PRESETS))
    args = ap.parse_args(argv)
    if args.steps < 3 or min(args.contexts) < 1:
        ap.error("--steps must be >= 3 and --contexts >= 1")

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B=1, median of {args.steps} decode steps\n")
    print(f"{'preset':<9} {'context':>8} {'ms/token':>9} {'state bytes':>14}")
    res: dict[tuple[str, int], tuple[float, int]] = {}
    with torch.inference_mode():
        for preset in args.presets:
            model = build(preset, vocab_size=128).eval()
            for T in args.contexts:
                ids = torch.randint(0, 128, (1, T))
                _, state = model(ids)  # prefill
                tok = torch.randint(0, 128, (1,))
                model.step(tok, state)  # warm-up (the state is not kept: every timed step sees context T)
                times = []
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    model.step(tok, state)
                    times.append(time.perf_counter() - t0)
                ms = 1e3 * statistics.median(times)
                res[preset, T] = (ms, state_nbytes(state))
                print(f"{preset:<9} {T:>8} {ms:>9.3f} {state_nbytes(state):>14,d}", flush=True)

    lo, hi = min(args.contexts), max(args.contexts)
    print(f"\nratios (context {hi} vs {lo}):")
    for preset in args.presets:
        print(f"  {preset:<9} latency x{res[preset, hi][0] / res[preset, lo][0]:.2f}   "
              f"state x{res[preset, hi][1] / res[preset, lo][1]:.1f}")
    if "attn" in args.presets:
        for other in ("echo", "ssm"):
            if other in args.presets:
                print(f"  attn state / {other} state at {hi}: x{res['attn', hi][1] / res[other, hi][1]:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
