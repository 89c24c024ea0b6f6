"""torch.compile against eager: one training step and one decode step per preset, in one run.

    python benchmarks/compile.py [--presets echo synth1m-echo] [--steps 20] [--threads 1] [--device cpu]

Training step: batch 16 of the lab recipe's mqar_gap (the lab scale) or 16 x 256-token MQAR (synth1m size):
``echo_tutor.train.loop.train_step``, the step ``train`` runs (forward, backward, AdamW).
Decode: ``model.step`` at B=1 after a 256-token prefill.
The compiled versions use ``torch.compile(..., fullgraph=True)`` (Inductor); the first call's time is the
compile time (reported separately), then the median of ``--steps`` calls is compared with eager's median
from the same run. CPU timings on shared machines are noisy: read the ratios.
"""

from __future__ import annotations

import pathlib
import sys

# this folder holds kernels.py, which would shadow any package named `kernels` imported on the way
sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != pathlib.Path(__file__).resolve().parent]

import argparse  # noqa: E402

import torch  # noqa: E402

from echo_tutor.models import build  # noqa: E402
from echo_tutor.models.presets import LAB_PRESETS, LAB_RECIPE, PRESETS  # noqa: E402
from echo_tutor.tasks import make_task  # noqa: E402
from echo_tutor.timing import first_and_median_seconds  # noqa: E402
from echo_tutor.train.loop import make_optimizer, train_step  # noqa: E402


def _task(preset: str):
    if preset in LAB_PRESETS:
        return make_task(**{**LAB_RECIPE.task, "gap": [256]})
    return make_task("mqar", vocab_size=128, num_kv_pairs=8, seq_len=256)


def train_step_fn(preset: str, compiled: bool, device: torch.device):
    """A closure running one training step of a fresh ``preset`` model on a fixed batch."""
    torch.manual_seed(0)
    model = build(preset, vocab_size=128).to(device).train()
    fwd = torch.compile(model, fullgraph=True) if compiled else model
    opt = make_optimizer(model, 3e-3, 0.1)
    x, y = (t.to(device) for t in _task(preset).sample(16, 0))
    return (lambda: train_step(model, fwd, opt, x, y)), tuple(x.shape)


def decode_step_fn(preset: str, compiled: bool, device: torch.device):
    torch.manual_seed(0)
    model = build(preset, vocab_size=128).to(device).eval()
    ids = torch.randint(0, 128, (1, 256), device=device)
    with torch.no_grad():
        _, state = model(ids)
    step = torch.compile(model.step, fullgraph=True) if compiled else model.step
    tok = ids[:, -1]

    def one():
        with torch.no_grad():
            step(tok, state)  # the same state each call: times one step at a fixed context
    return one


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["echo", "synth1m-echo"], choices=list(LAB_PRESETS) + list(PRESETS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.steps < 3 or args.threads < 1:
        ap.error("--steps must be >= 3 and --threads >= 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s), median of {args.steps}\n")
    print("| preset | what | eager s | compiled s | compiled / eager speed | compile s |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets:
        for what in ("train step", "decode step"):
            res = {}
            for compiled in (False, True):
                torch._dynamo.reset()
                if what == "train step":
                    fn, shape = train_step_fn(preset, compiled, device)
                    label = f"train step {shape[0]} x {shape[1]}"
                else:
                    fn, label = decode_step_fn(preset, compiled, device), "decode step (B=1, 256 in context)"
                res[compiled] = first_and_median_seconds(fn, args.steps, device)
            (_, e), (first, c) = res[False], res[True]
            print(f"| {preset} | {label} | {e:.4f} | {c:.4f} | x{e / c:.2f} | {first - c:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
