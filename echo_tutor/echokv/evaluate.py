"""Evaluating compressed caches: perplexity at equal bytes, reconstruction error by position, and
stage 2 (distillation of the reconstructors against the full cache).

Protocol ("compressed context"): each window of ``ctx_len + n_eval`` tokens is prefilled for its first
``ctx_len`` tokens with the full cache; a :class:`~echo_tutor.echokv.baselines.Method` then turns that
cache into what attention will read; the last ``n_eval`` tokens are run against it and scored
(next-token NLL of tokens ``ctx_len+1 ..``). The evaluated tokens attend to each other exactly, as
they would in a compressed cache during a prefill.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..errors import BadArgumentError
from ..stats import paired_ci
from .baselines import Method, full_method
from .cache import simulate
from .capture import KVCapture, apply_rope, rope_cos_sin
from .fit import fit_reconstructor
from .model import attention_layout
from .reconstructor import Reconstructor


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_windows(ids: object, ctx_len: int) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.dtype != torch.int64:
        raise BadArgumentError(f"ids must be an int64 tensor [W, T] of token windows, got {getattr(ids, 'shape', ids)!r}")
    if isinstance(ctx_len, bool) or not isinstance(ctx_len, int) or not 0 < ctx_len < ids.shape[1] - 1:
        raise BadArgumentError(f"ctx_len must be an int in [1, T-2] with T={ids.shape[1]}, got {ctx_len!r}")
    return ids


@torch.no_grad()
def prefill(model, ctx: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Full-cache prefill of ``ctx`` [B, C]: per-layer keys (post-RoPE) and values, [B, H, C, D]."""
    from transformers.cache_utils import (
        DynamicCache,  # the optional echokv extra: imported on use
    )

    cache = DynamicCache()
    model(ctx.to(_device(model)), cache=cache, use_cache=True)
    return [l.keys for l in cache.layers], [l.values for l in cache.layers]


def continuation_logits(model, keys, values, cont: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``cont`` [B, E] against a given context cache (per-layer [B, H, C, D]); ``keep`` [B, C]
    masks context tokens out. Returns logits [B, E, vocab]."""
    from transformers.cache_utils import (
        DynamicCache,  # the optional echokv extra: imported on use
    )

    C = keys[0].shape[-2]
    cont = cont.to(keys[0].device)
    cache = DynamicCache()
    for i, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, i)
    B, E = cont.shape
    pos = torch.arange(C, C + E, device=cont.device)[None].expand(B, E)
    mask = None
    if keep is not None:
        mask = torch.cat([keep.to(cont.device), torch.ones(B, E, dtype=keep.dtype, device=cont.device)], 1)
    return model(cont, cache=cache, use_cache=True, position_ids=pos, attention_mask=mask).logits


@torch.no_grad()
def perplexity(
    model,
    ids: torch.Tensor,
    ctx_len: int,
    methods: list[Method],
    *,
    batch_size: int = 4,
    progress: bool = False,
) -> dict[str, dict]:
    """Perplexity of the last ``T - ctx_len`` tokens of each window under every method.

    Returns ``{name: {"fraction", "ppl", "nll", "delta_ppl", "window_nll"}}`` (delta against the method
    named "full", which is added if missing; ``window_nll`` = mean NLL per window, for paired
    comparisons, see :func:`paired_difference`). One full prefill per batch serves all methods.
    """
    _check_windows(ids, ctx_len)

    if not any(m.name == "full" for m in methods):
        methods = [full_method(), *methods]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise BadArgumentError(f"method names must be unique, got {names}")
    totals = {m.name: 0.0 for m in methods}
    per_window: dict[str, list[float]] = {m.name: [] for m in methods}
    count = 0
    dev = _device(model)
    cos, sin = rope_cos_sin(model, torch.arange(ctx_len, device=dev))
    starts = range(0, ids.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="perplexity", unit="batch")
    for s in starts:
        chunk = ids[s : s + batch_size].to(dev)
        ctx, cont = chunk[:, :ctx_len], chunk[:, ctx_len:]
        keys, values = prefill(model, ctx)
        for m in methods:
            k2, v2, keep = m.apply(keys, values, cos, sin)
            logits = continuation_logits(model, k2, v2, cont, keep)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), cont[:, 1:], reduction="none")  # [b, E-1]
            totals[m.name] += float(nll.sum())
            per_window[m.name] += nll.mean(1).tolist()
        count += cont[:, 1:].numel()
    base = math.exp(totals["full"] / count)
    return {
        m.name: {
            "fraction": m.fraction,
            "nll": totals[m.name] / count,
            "ppl": math.exp(totals[m.name] / count),
            "delta_ppl": math.exp(totals[m.name] / count) - base,
            "window_nll": per_window[m.name],
        }
        for m in methods
    }


def paired_difference(table: dict, a: str, b: str) -> dict:
    """Mean NLL difference ``a - b`` over the same windows and its 95% interval by the package's one rule
    (:func:`echo_tutor.stats.paired_ci`: the percentile bootstrap from 10 windows, Student's t below), negative =
    ``a`` better. ``table`` is the output of :func:`perplexity`. Returns ``{"a", "b", "mean_nll_diff", "ci95":
    [lo, hi], "windows", "a_better_windows"}``."""
    for name in (a, b):
        if name not in table:
            raise BadArgumentError(f"method {name!r} is not in the table (have {sorted(table)})")
    a_nll, b_nll = table[a]["window_nll"], table[b]["window_nll"]
    mean, lo, hi = paired_ci(a_nll, b_nll)
    return {"a": a, "b": b, "mean_nll_diff": mean, "ci95": [lo, hi], "windows": len(a_nll),
            "a_better_windows": sum(x < y for x, y in zip(a_nll, b_nll))}


@torch.no_grad()
def error_by_position(rec: Reconstructor, model, capture: KVCapture, kind: str = "K") -> torch.Tensor:
    """Relative error ||y_hat - y|| / ||y|| of the discarded slots of one kind, by token position
    (mean over windows and discarded slots): float32 [T]. Keys are compared after RoPE (a rotation:
    the error is the same before or after it when the map runs pre-RoPE)."""
    if kind not in ("K", "V"):
        raise BadArgumentError(f"kind must be 'K' or 'V', got {kind!r}")
    L, H, W, T, D = capture.keys.shape
    X = capture.keys if kind == "K" else capture.values   # [L, H, W, T, D]
    retained = {r: X[r // H, r % H] for r in rec.kept[kind]}
    errs = []
    for s in rec.spec.inputs[kind]:
        y = X[s // H, s % H]                                # [W, T, D]
        y_hat = rec.rebuild(kind, s, retained).expand_as(y)
        errs.append((y_hat - y).norm(dim=-1) / y.norm(dim=-1).clamp_min(1e-12))
    if not errs:
        return torch.zeros(T)
    return torch.stack(errs).mean((0, 1)).float()


def rotate_capture(model, capture: KVCapture) -> KVCapture:
    """The same capture with keys rotated by RoPE at their in-window positions (post-RoPE keys)."""
    L, H, W, T, D = capture.keys.shape
    cos, sin = rope_cos_sin(model, torch.arange(T))
    k = apply_rope(capture.keys.reshape(L * H, W, T, D), cos, sin).reshape(L, H, W, T, D)
    return KVCapture(k, capture.values)


def pre_vs_post_rope(model, fit_cap: KVCapture, eval_cap: KVCapture, ratio: float = 0.5, **kw) -> dict[str, torch.Tensor]:
    """The RoPE ablation: key error by position on ``eval_cap`` for maps fitted on pre-RoPE keys
    (and rotated after) vs maps fitted directly on post-RoPE keys, with the same retained slots.
    Returns ``{"pre": [T], "post": [T]}``."""
    rec_pre = fit_reconstructor(fit_cap, ratio, **kw)
    rec_post = fit_reconstructor(rotate_capture(model, fit_cap), ratio, kept=rec_pre.kept,
                                 layer_window=rec_pre.spec.layer_window)
    return {
        "pre": error_by_position(rec_pre, model, eval_cap, "K"),
        "post": error_by_position(rec_post, model, rotate_capture(model, eval_cap), "K"),
    }


def distill(
    model,
    rec: Reconstructor,
    ids: torch.Tensor,
    ctx_len: int,
    *,
    steps: int = 60,
    lr: float = 3e-4,
    batch_size: int = 2,
    seed: int = 0,
    progress: bool = False,
    time_budget_s: float | None = None,
) -> list[float]:
    """Stage 2: train the reconstructor (the LLM frozen) so that the continuation's next-token
    distributions with the compressed context match the full cache's: mean KL(full || compressed).

    ``ids`` [W, T] windows (calibration text), split at ``ctx_len`` as in :func:`perplexity`.
    Returns the per-step KL. The LLM's parameters are never updated.
    """

    _check_windows(ids, ctx_len)
    attention_layout(model)
    for name, val in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise BadArgumentError(f"{name} must be an int >= 1, got {val!r}")
    if not isinstance(rec, Reconstructor):
        raise BadArgumentError(f"rec must be a Reconstructor (from fit_reconstructor), got {type(rec).__name__}")
    params = [p for p in rec.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    dev = _device(model)
    rec.to(dev)
    cos, sin = rope_cos_sin(model, torch.arange(ctx_len, device=dev))
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="stage 2 (KL)", unit="step")
    losses: list[float] = []
    t0 = time.time()
    try:
        for _ in it:
            pick = torch.randperm(ids.shape[0], generator=g)[:batch_size]
            chunk = ids[pick].to(dev)
            ctx, cont = chunk[:, :ctx_len], chunk[:, ctx_len:]
            keys, values = prefill(model, ctx)
            with torch.no_grad():
                target = F.log_softmax(continuation_logits(model, keys, values, cont).float(), -1)
            k2, v2 = simulate(rec, keys, values, cos, sin)
            logp = F.log_softmax(continuation_logits(model, k2, v2, cont).float(), -1)
            loss = F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if progress:
                it.set_postfix(kl=f"{losses[-1]:.4f}")  # type: ignore[union-attr]
            if time_budget_s is not None and time.time() - t0 > time_budget_s:
                break
    finally:
        for p, f in zip(model.parameters(), frozen):
            p.requires_grad_(f)
    return losses
