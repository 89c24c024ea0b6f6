"""The conversion study's summary: perplexity ratios with paired intervals over the held-out windows, the
layer budgets, the verdicts between mixers and between stage 1 and stage 2 (``summarize``), and its Markdown
(``format_summary``, the ``convert.md`` of ``echo-tutor convert``)."""

from __future__ import annotations

import math

from .stats import paired_ci, verdict

__all__ = ["format_summary", "summarize"]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def summarize(result: dict) -> dict:
    """Perplexities, intervals and the verdict from a conversion study's result (:func:`echo_tutor.experiments.convert.run`).

    Returns ``{"full_ppl", "rows": [{variant, label, n, ppl, ratio, lo, hi}], "budget": {variant: {"5%": n,
    "20%": n}}, "versus": [{a, b, n, dnll, lo, hi, verdict}], "stage2": [{variant, label, n, ppl, ratio, lo, hi,
    stage1_ratio, dnll, dlo, dhi, verdict, kl_before, kl_after}]}``. ``ratio`` is the perplexity over the original
    model's on the same windows, ``lo``/``hi`` its paired 95% interval over windows (``paired_ci``'s rule: the
    percentile bootstrap, ``stats.N_BOOT`` resamples, from 10 windows, as over the study's 24; Student's t below
    10); the budget is the largest swept number of converted layers whose ratio stays within 1.05 (1.20);
    ``versus`` compares each SKA variant with the window alone and with window + linear at every count (mean
    NLL difference over the same windows, negative = the SKA variant is better). ``stage2`` rows compare stage 2
    with stage 1 of the same variant and layers (``dnll`` = stage 2 minus stage 1, negative = stage 2 helped).
    """
    full = result["full_window_nll"]
    rows, budget, versus = [], {}, []
    sweep = result["sweep_window_nll"]
    for v, by_n in sweep.items():
        budget[v] = {"5%": 0, "20%": 0}
        for n, nll in sorted(by_n.items(), key=lambda x: int(x[0])):
            d, lo, hi = paired_ci(nll, full)
            ratio = math.exp(d)
            rows.append({"variant": v, "label": result["labels"][v], "n": int(n), "ppl": math.exp(_mean(nll)),
                         "ratio": ratio, "lo": math.exp(lo), "hi": math.exp(hi)})
            for key, lim in (("5%", 1.05), ("20%", 1.20)):
                if ratio <= lim:
                    budget[v][key] = max(budget[v][key], int(n))
    for a in sweep:
        if "ska" not in a:
            continue
        for b in sweep:
            if b == a or "ska" in b:
                continue
            for n in sweep[a]:
                if n in sweep[b]:
                    d, lo, hi = paired_ci(sweep[a][n], sweep[b][n])
                    versus.append({"a": a, "b": b, "n": int(n), "dnll": d, "lo": lo, "hi": hi,
                                   "verdict": verdict(-hi, -lo)})
    stage2 = []
    for v, by_n in result.get("stage2", {}).items():
        for n, r in sorted(by_n.items(), key=lambda x: int(x[0])):
            d, lo, hi = paired_ci(r["window_nll"], full)
            row = {"variant": v, "label": result["labels"][v], "n": int(n), "ppl": math.exp(_mean(r["window_nll"])),
                   "ratio": math.exp(d), "lo": math.exp(lo), "hi": math.exp(hi), "kl_before": r["kl_before"],
                   "kl_after": r["kl_after"]}
            if n in sweep.get(v, {}):
                d1, _, _ = paired_ci(sweep[v][n], full)
                dd, dlo, dhi = paired_ci(r["window_nll"], sweep[v][n])
                row.update(stage1_ratio=math.exp(d1), dnll=dd, dlo=dlo, dhi=dhi, verdict=verdict(-dhi, -dlo))
            stage2.append(row)
    return {"full_ppl": math.exp(_mean(full)), "rows": rows, "budget": budget, "versus": versus, "stage2": stage2}


def format_summary(result: dict) -> str:
    """Markdown: perplexity against converted layers per variant, the budgets, the needle probe."""
    s = summarize(result)
    lines = [f"original model: perplexity {s['full_ppl']:.3f} on {len(result['full_window_nll'])} held-out windows", "",
             "| mixer | converted layers | perplexity | x original [95% CI] |", "|---|---|---|---|"]
    for r in s["rows"]:
        lines.append(f"| {r['label']} | {r['n']} | {r['ppl']:.3f} | {r['ratio']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] |")
    lines += ["", "| mixer | layers within +5% | within +20% |", "|---|---|---|"]
    for v, b in s["budget"].items():
        lines.append(f"| {result['labels'][v]} | {b['5%']} | {b['20%']} |")
    if s["stage2"]:
        head = ("| mixer | converted layers | stage 1: x original | stage 2: x original [95% CI] | held-out KL "
                "(nats/token) before -> after | stage 2 - stage 1 (NLL) [95% CI] |")
        lines += ["", head, "|---|---|---|---|---|---|"]
        for r in s["stage2"]:
            lines.append(f"| {r['label']} | {r['n']} | {r.get('stage1_ratio', float('nan')):.3f} | {r['ratio']:.3f} "
                         f"[{r['lo']:.3f}, {r['hi']:.3f}] | {r['kl_before']:.4f} -> {r['kl_after']:.4f} | "
                         f"{r.get('dnll', float('nan')):+.4f} [{r.get('dlo', float('nan')):+.4f}, {r.get('dhi', float('nan')):+.4f}] |")
    if result.get("needle"):
        dists = list(next(iter(result["needle"].values())).keys())
        lines += ["", f"pass key retrieved ({len(result['needle_layers'])} layers converted: {result['needle_layers']})", "",
                  "| model | " + " | ".join(f"{d} tokens" for d in dists) + " |", "|---" * (len(dists) + 1) + "|"]
        for v, r in result["needle"].items():
            name = "original" if v == "full" else result["labels"].get(v, v)
            lines.append(f"| {name} | " + " | ".join(f"{r[d]['correct']}/{r[d]['trials']}" for d in dists) + " |")
        for v, r in result.get("needle_stage2", {}).items():
            lines.append(f"| {result['labels'].get(v, v)}, stage 2 | "
                         + " | ".join(f"{r[d]['correct']}/{r[d]['trials']}" for d in dists) + " |")
    return "\n".join(lines)
