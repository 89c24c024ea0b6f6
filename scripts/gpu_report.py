"""One prepared GPU report: every GPU number the project asks for, in one run of about 8 minutes.

    python scripts/gpu_report.py [--out gpu-report.md] [--budget-s 480]      (what `make gpu-check` runs)
    python scripts/gpu_report.py --allow-cpu --quick --out /tmp/r.md        (a dry run of the plumbing on a CPU)

Writes ``gpu-report.md`` and ``gpu-report.json`` after every section, so an interrupted run keeps what it
measured. Sections, in order (each gets a share of ``--budget-s``; one that would not fit says so):

1. environment: device, driver, memory, torch / CUDA / Triton versions, whether mamba-ssm and fla import;
2. the GPU tests (``pytest -m gpu``);
3. ``benchmarks/kernels.py``: the Triton paths against the reference and ``torch.compile`` of it, with the
   issue's targets; then ``benchmarks/echokv_read.py``: EchoKV's compressed read by path;
4. ``benchmarks/compile.py``: compiled against eager, a training and a decode step;
5. one training step of every preset (lab and synth1m size), and the peak memory of each;
6. Mamba-2: our chunked scan against mamba-ssm's fused kernel (parity and speed), where mamba-ssm imports;
7. K = 1 against K = 2 at the paper's size: three seeds each, trained for an equal time on the lab recipe;
8. every lab in FULL mode, cell by cell, each within its share of what is left (the heaviest cell named).

Without a CUDA device it stops with a clear message unless ``--allow-cpu`` (then ``--quick`` shrinks every
size: the test suite runs it that way to check the plumbing, not to measure).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
LABS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# (section, seconds it is planned to take on one H100/H200; the last takes what is left)
PLAN = [("environment", 10), ("GPU tests", 60), ("kernels", 150), ("compile", 60), ("preset steps", 30),
        ("mamba-ssm", 15), ("K=1 vs K=2, synth1m size", 100), ("labs in FULL mode", None)]


def _run(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, the output's tail, seconds) of a subprocess in the repository root."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(timeout, 1),
                           env={**os.environ, **(env or {})})
        return p.returncode, (p.stdout + p.stderr)[-6000:], time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return None, out[-6000:], time.perf_counter() - t0


def _block(rc: int | None, out: str, secs: float, budget: float) -> tuple[str, dict]:
    status = f"timed out after {budget:.0f} s" if rc is None else f"exit {rc} in {secs:.0f} s"
    return f"{status}\n\n```\n{out.strip()}\n```\n", {"rc": rc, "seconds": round(secs, 1), "output": out}


def environment(ctx: dict, budget: float) -> tuple[str, dict]:
    import torch

    info: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "device": torch.cuda.get_device_name() if ctx["cuda"] else "cpu (dry run)"}
    for mod in ("triton", "mamba_ssm", "fla"):
        try:
            info[mod] = getattr(__import__(mod), "__version__", "imports")
        except Exception as e:  # noqa: BLE001 - any failure to import is the answer
            info[mod] = f"not available ({type(e).__name__})"
    rc, out, _ = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 10) \
        if ctx["cuda"] else (None, "", 0.0)
    info["nvidia-smi"] = out.strip() if rc == 0 else "not run"
    return "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n", info


def gpu_tests(ctx: dict, budget: float) -> tuple[str, dict]:
    cmd = [sys.executable, "-m", "pytest", "tests", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    if ctx["quick"]:
        cmd = [sys.executable, "-m", "pytest", "tests/test_no_host_sync.py", "-q", "-p", "no:cacheprovider", "-m", "gpu"]
    return _block(*_run(cmd, budget), budget)


def kernels(ctx: dict, budget: float) -> tuple[str, dict]:
    """benchmarks/kernels.py (SKA chunk, profile, fla, decode, EchoKV rebuild), then benchmarks/echokv_read.py."""
    cmd = [sys.executable, "benchmarks/kernels.py", "--T", "2048", "8192", "--ranks", "32", "64", "--reps", "10"]
    t0 = time.perf_counter()
    md, data = _block(*_run(cmd, 0.8 * budget), 0.8 * budget)
    left = budget - (time.perf_counter() - t0)
    read = [sys.executable, "benchmarks/echokv_read.py", "--reps", "3" if ctx["quick"] else "20"]
    if ctx["quick"]:
        read += ["--T", "64"]
    md2, data2 = _block(*_run(read, left), left)
    return md + "\nEchoKV's compressed read by path (`benchmarks/echokv_read.py`):\n\n" + md2, {**data, "echokv_read": data2}


def compile_bench(ctx: dict, budget: float) -> tuple[str, dict]:
    if ctx["quick"]:
        return "skipped (--quick: Inductor's compile takes minutes on a CPU)\n", {"skipped": True}
    cmd = [sys.executable, "benchmarks/compile.py", "--presets", "echo", "synth1m-echo-k1", "--device", "cuda"]
    return _block(*_run(cmd, budget), budget)


def _batch(preset: str, n: int, device):
    from echo_tutor.models.presets import LAB_RECIPE
    from echo_tutor.tasks import make_task

    task = make_task(**{**LAB_RECIPE.task, "gap": [256]})
    return (t.to(device) for t in task.sample(n, 0))


def preset_steps(ctx: dict, budget: float) -> tuple[str, dict]:
    """One training step (batch 16, lab recipe at gap 256) per preset: median time and peak memory."""
    import torch

    from echo_tutor.models.presets import LAB_PRESETS, PRESETS, build
    from echo_tutor.timing import median_seconds
    from echo_tutor.train.loop import make_optimizer, train_step

    dev, rows, data = ctx["device"], ["| preset | ms / step | peak memory MB |", "|---|---|---|"], {}
    for preset in list(LAB_PRESETS) + list(PRESETS):
        kw = dict(d_model=16, ska_rank=6, **({"n_heads": 2, "d_state": 8} if preset in PRESETS else {})) if ctx["quick"] else {}
        model = build(preset, vocab_size=128, **kw).to(dev)
        opt = make_optimizer(model, 3e-3, 0.1)
        x, y = _batch(preset, 2 if ctx["quick"] else 16, dev)

        def step():
            train_step(model, model, opt, x, y)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reps = 2 if ctx["quick"] else 10
        s = median_seconds(step, reps, dev, warmup=1)
        peak = torch.cuda.max_memory_allocated() / 1e6 if dev.type == "cuda" else float("nan")
        data[preset] = {"ms": s * 1e3, "peak_mb": peak, "tokens": list(x.shape)}
        rows.append(f"| {preset} | {s * 1e3:.1f} | {peak:.0f} |")
    return (f"batch {list(x.shape)} (lab recipe, gap 256), median of {reps} after one warm-up\n\n" + "\n".join(rows)
            + "\n", data)


def mamba(ctx: dict, budget: float) -> tuple[str, dict]:
    import torch

    from echo_tutor.backends import mamba_ssm_available
    from echo_tutor.ssm import Mamba2
    from echo_tutor.timing import median_seconds

    if not (ctx["cuda"] and mamba_ssm_available()):
        return "mamba-ssm is not available here: nothing compared\n", {"available": False}
    torch.manual_seed(0)
    ref = Mamba2(128, d_state=16, headdim=64, backend="reference").cuda()
    fast = Mamba2(128, d_state=16, headdim=64, backend="mamba_ssm").cuda()
    fast.load_state_dict(ref.state_dict())
    u = torch.randn(4, 2048, 128, device="cuda")
    with torch.no_grad():
        err = ((ref(u)[0] - fast(u)[0]).norm() / ref(u)[0].norm()).item()
        tr, tf = (median_seconds(lambda m=m: m(u), 10, ctx["device"], warmup=1) for m in (ref, fast))
    return (f"B=4, T=2048, d=128: relative difference {err:.2e}; ours {tr * 1e3:.2f} ms, mamba-ssm {tf * 1e3:.2f} ms "
            f"(x{tr / tf:.2f})\n", {"rel_err": err, "ours_ms": tr * 1e3, "mamba_ssm_ms": tf * 1e3})


def k_runs(ctx: dict, budget: float) -> tuple[str, dict]:
    """synth1m-echo-k1 against synth1m-echo (K=2), 3 seeds each, equal wall-clock budgets on the lab recipe."""
    import torch

    from echo_tutor.experiments.stats import mean_ci
    from echo_tutor.models.presets import LAB_RECIPE, build
    from echo_tutor.tasks import make_task
    from echo_tutor.train import TrainConfig, evaluate, train

    seeds, presets = (0, 1, 2), ("synth1m-echo-k1", "synth1m-echo")
    each = budget / (len(seeds) * len(presets)) * 0.8  # evaluation and start-up take the rest
    task = make_task(**LAB_RECIPE.task)
    probe = make_task(**{**LAB_RECIPE.task, "num_kv_pairs": 8, "gap": [256]})
    n_eval = 16 if ctx["quick"] else 512
    data: dict = {}
    for preset in presets:
        data[preset] = []
        for seed in seeds:
            torch.manual_seed(seed)
            kw = dict(d_model=16, ska_rank=6, n_heads=2, d_state=8) if ctx["quick"] else {}
            model = build(preset, vocab_size=128, **kw)
            cfg = TrainConfig(steps=2 if ctx["quick"] else 20_000, batch_size=16, lr=3e-3, seed=seed, eval_every=10_000,
                              eval_examples=n_eval // 8, time_budget_s=each)
            res = train(model, task, cfg, device=ctx["device"], progress=False)
            acc = evaluate(model, probe, n_eval, device=ctx["device"])
            data[preset].append({"seed": seed, "steps": res.steps_done, "seconds": res.time_s, "acc_8pairs_gap256": acc})
    lines = [f"{len(seeds)} seeds each, {each:.0f} s of training per run (lab recipe, batch 16, lr 3e-3); accuracy at "
             f"8 pairs, gap 256 ({n_eval} examples); mean [95% t interval over "
             "seeds: the labs' rule below 10 seeds]", "",
             "| preset | steps (per seed) | accuracy | per seed |", "|---|---|---|---|"]
    for preset, runs in data.items():
        accs = [r["acc_8pairs_gap256"] for r in runs]
        mean, lo, hi = mean_ci(accs)
        lines.append(f"| {preset} | {', '.join(str(r['steps']) for r in runs)} | {mean:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{', '.join(f'{a:.3f}' for a in accs)} |")
    return "\n".join(lines) + "\n", data


def _lab_full(path: pathlib.Path, budget: float) -> dict:
    """Run one lab cell by cell in FULL mode until it ends or ``budget`` seconds pass."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=max(int(budget), 1), kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}})
    times, error, t0 = [], None, time.perf_counter()
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if time.perf_counter() - t0 > budget:
                error = f"stopped before cell {i}: budget spent"
                break
            c0 = time.perf_counter()
            try:
                client.execute_cell(cell, i)
            except Exception as e:  # noqa: BLE001 - a lab that fails is reported, the report goes on
                error = f"cell {i}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                times.append((i, time.perf_counter() - c0))
                break
            times.append((i, time.perf_counter() - c0))
    heavy = max(times, key=lambda t: t[1]) if times else (None, 0.0)
    return {"seconds": time.perf_counter() - t0, "finished": error is None, "error": error,
            "heaviest_cell": heavy[0], "heaviest_seconds": heavy[1]}


def labs_full(ctx: dict, budget: float) -> tuple[str, dict]:
    if ctx["quick"]:
        return "skipped (--quick)\n", {"skipped": True}
    os.environ.update(ECHO_TUTOR_FAST="0", ECHO_TUTOR_SOLUTIONS="1")
    rows, data, end = ["| lab | FULL time | heaviest cell | note |", "|---|---|---|---|"], {}, time.perf_counter() + budget
    for j, lab in enumerate(LABS):
        share = (end - time.perf_counter()) / (len(LABS) - j)
        r = data[lab.stem] = _lab_full(lab, share)
        t = f"{r['seconds']:.0f} s" if r["finished"] else f"> {r['seconds']:.0f} s (not finished)"
        rows.append(f"| {lab.stem} | {t} | cell {r['heaviest_cell']}: {r['heaviest_seconds']:.0f} s | {r['error'] or ''} |")
    return "\n".join(rows) + "\n", data


SECTIONS = dict(zip([n for n, _ in PLAN], [environment, gpu_tests, kernels, compile_bench, preset_steps, mamba, k_runs,
                                            labs_full]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-report.md")
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--allow-cpu", action="store_true", help="run without CUDA (a dry run of the plumbing)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes everywhere (with --allow-cpu, for the tests)")
    args = ap.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_report: no CUDA device here (torch.cuda.is_available() is False): nothing to measure. Run it on a "
              "GPU machine (`make gpu-check`), or pass --allow-cpu --quick for a dry run.", file=sys.stderr)
        return 2
    ctx = {"cuda": cuda, "quick": args.quick, "device": torch.device("cuda" if cuda else "cpu")}
    out, start = pathlib.Path(args.out), time.perf_counter()
    md = [f"# GPU report ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
          f"`python scripts/gpu_report.py --budget-s {args.budget_s:.0f}`{' --quick (a dry run)' if args.quick else ''}\n"]
    report: dict = {"budget_s": args.budget_s, "quick": args.quick, "sections": {}}
    planned_rest = sum(s or 0 for _, s in PLAN)
    for name, planned in PLAN:
        left = args.budget_s - (time.perf_counter() - start)
        planned_rest -= planned or 0
        budget = left - planned_rest if planned is None else min(planned, max(left - planned_rest, planned * 0.5))
        t0 = time.perf_counter()
        if budget <= 0:
            text, data = f"skipped: {left:.0f} s left of the budget\n", {"skipped": True}
        else:
            try:
                text, data = SECTIONS[name](ctx, budget)
            except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
                text, data = f"failed: {type(e).__name__}: {e}\n", {"error": f"{type(e).__name__}: {e}"}
        data = {**data, "section_seconds": round(time.perf_counter() - t0, 1)} if isinstance(data, dict) else data
        md.append(f"## {name} ({time.perf_counter() - t0:.0f} s)\n\n{text}")
        report["sections"][name] = data
        out.write_text("\n".join(md))
        out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
        print(f"[gpu_report] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"[gpu_report] wrote {out} and {out.with_suffix('.json')} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
