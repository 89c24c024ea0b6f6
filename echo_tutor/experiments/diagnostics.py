"""Looking inside trained models: what wrong answers are, accuracy by overwrites, a block silenced, the
SSM's decay (measured, and held fixed for a causal check), and the inference-state bytes after a prompt. Task layouts come from ``echo_tutor.tasks``."""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch

from .._checks import check_int
from ..errors import BadArgumentError
from ..models import state_nbytes
from ..ssm import Mamba2, mamba2 as mamba2_module
from ..tasks import IGNORE, Task, context_bindings, writes_at_answers

__all__ = ["device_of", "model_state_bytes", "recall_breakdown", "tool_trace_by_writes", "ablate_mixer", "ssm_decay",
           "retention_after", "hold_decay"]


def device_of(model) -> torch.device:
    """The device of ``model``'s parameters (the CPU for a model without any)."""
    p = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def model_state_bytes(model, context: int) -> int:
    """Inference-state bytes after ``context`` tokens, measured on a real prefill (B=1)."""
    check_int("context", context, min_value=1)
    with torch.inference_mode():
        _, st = model(torch.zeros(1, context, dtype=torch.long, device=device_of(model)))
    return state_nbytes(st)


@torch.no_grad()
def recall_breakdown(model, task: Task, num_examples: int = 64, seed: int = 10_000, batch_size: int = 16) -> dict[str, float]:
    """Accuracy at answer positions, and what the wrong answers were, on MQAR-style examples.

    Returns ``acc``; ``bound_wrong``: the share of answers that were a value bound in the same example but
    to another key (the model knows *which values* were bound, not *which key* each belongs to);
    ``other_wrong``: any other wrong token; ``first_query_acc``: accuracy at the first query only.
    The model runs on its own device; the bookkeeping is done on the CPU."""
    if not isinstance(task, Task):
        raise BadArgumentError(f"task must be an echo_tutor.tasks.Task (make_task(...)), got {type(task).__name__}")
    check_int("num_examples", num_examples, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    model.eval()
    device = device_of(model)
    hit = bound = other = first_hit = n_first = total = 0
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x.to(device))[0].argmax(-1).cpu()  # [B, T]
        mask = y != IGNORE
        n = int(mask[0].sum())  # queries per example (== KV pairs)
        _, bound_vals = context_bindings(x, n)  # [B, n]: the values of the context block
        ok = (pred == y) & mask
        in_bound = (pred[..., None] == bound_vals[:, None, :]).any(-1) & mask & ~ok
        hit, bound, total = hit + int(ok.sum()), bound + int(in_bound.sum()), total + int(mask.sum())
        other += int((mask & ~ok & ~in_bound).sum())
        first = mask.float().argmax(1)
        rows = torch.arange(x.shape[0])
        first_hit, n_first = first_hit + int(ok[rows, first].sum()), n_first + x.shape[0]
    return {"acc": hit / total, "bound_wrong": bound / total, "other_wrong": other / total,
            "first_query_acc": first_hit / n_first}


@torch.no_grad()
def tool_trace_by_writes(model, task: Task, num_examples: int = 256, seed: int = 20_000, batch_size: int = 32) -> dict[str, float]:
    """Tool-trace accuracy split by how many times the queried variable was written (1, 2, 3+).

    Statistics that never forget (SKA's G, C) hold every value ever bound to a variable, so a readout
    should drift towards a blend of the old and new values as the number of writes grows."""
    if not isinstance(task, Task) or task.name != "tool_trace":
        raise BadArgumentError(f"task must be a tool_trace Task (make_task('tool_trace', ...)), got {task!r}")
    check_int("num_examples", num_examples, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    hits: dict[str, list[int]] = {"1": [0, 0], "2": [0, 0], "3+": [0, 0]}
    model.eval()
    device = device_of(model)
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        pred = model(x.to(device))[0].argmax(-1).cpu()
        writes = writes_at_answers(x, y, task.vocab_size)  # [B, L]: writes before each answer, 0 elsewhere
        for b, t in (y != IGNORE).nonzero().tolist():
            key = "3+" if writes[b, t] >= 3 else str(int(writes[b, t]))
            hits[key][0] += int(pred[b, t] == y[b, t])
            hits[key][1] += 1
    return {k: (c / n if n else float("nan")) for k, (c, n) in hits.items()}


class ablate_mixer:
    """Context manager: block ``index``'s sequence mixer adds nothing to the residual stream (its MLP stays).

    ``with ablate_mixer(model, 1): model(x)`` shows what the other blocks carry on their own."""

    def __init__(self, model, index: int) -> None:
        if not hasattr(model, "blocks") or not (0 <= index < len(model.blocks)):
            raise BadArgumentError(f"index must name a block of the model (0..{len(getattr(model, 'blocks', [])) - 1}), got {index}")
        self.mixer, self.handle = model.blocks[index].mixer, None

    def __enter__(self):
        def zero(_m, _inp, out):
            y, st = out
            return torch.zeros_like(y), st

        self.handle = self.mixer.register_forward_hook(zero)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()



@torch.no_grad()
def ssm_decay(model, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per-token retention ``exp(A dt_t)`` of every Mamba-2 block: ``{block index: [B, T, H]}``.

    A Mamba-2 head multiplies its state by ``exp(A dt_t)`` at token ``t`` (``A < 0``; ``dt_t`` is chosen by
    the token, the selective part), so what was written ``g`` tokens ago is scaled by the product of the
    next ``g`` factors. ids ``[B, T]``."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
        raise BadArgumentError(f"ids must be an integer tensor of shape [B, T], got {getattr(ids, 'shape', type(ids).__name__)}")

    out: dict[int, torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(model.blocks):
        if isinstance(blk.mixer, Mamba2):
            def grab(_lin, _inp, zxbcdt, i=i, m=blk.mixer):
                dt = torch.nn.functional.softplus(zxbcdt[..., -m.n_heads:] + m.dt_bias)  # [B, T, H]
                out[i] = torch.exp(-torch.exp(m.A_log.float()) * dt)
            hooks.append(blk.mixer.in_proj.register_forward_hook(grab))
    try:
        model(ids)
    finally:
        for h in hooks:
            h.remove()
    return out



def retention_after(model, ids: torch.Tensor, start: int) -> torch.Tensor:
    """What each Mamba-2 head keeps of a write made before position ``start``: ``[T - start, heads]``.

    Row ``j`` is the median over the batch of ``prod exp(A dt_t)`` over ``t = start .. start + j`` (the
    factors of :func:`ssm_decay`); the columns are every head of every Mamba-2 block, block by block.
    ids ``[B, T]``."""
    check_int("start", start, min_value=0)
    if isinstance(ids, torch.Tensor) and ids.ndim == 2 and start >= ids.shape[1]:
        raise BadArgumentError(f"start must be below the prompt length {ids.shape[1]}, got {start}")
    decay = ssm_decay(model, ids)
    if not decay:
        raise BadArgumentError("model has no Mamba-2 block")
    logs = torch.cat([decay[b].clamp_min(1e-30).log() for b in sorted(decay)], dim=-1)  # [B, T, heads]
    return logs[:, start:].cumsum(1).median(0).values.exp()


@contextlib.contextmanager
def hold_decay(model, start: int, stop: int, heads: list[tuple[int, int]] | None = None,
               factor: float | None = None) -> Iterator[None]:
    """Within the ``with`` block, change what the Mamba-2 heads forget at positions ``start .. stop-1``.

    ``factor=None``: ``A dt = 0`` there (``exp(A dt) = 1``: the state is kept whole); a number in (0, 1]: the
    retention over the span is multiplied by ``factor`` (``A dt`` shifted by ``log(factor) / (stop - start)``
    per token). The writes ``x dt`` and everything else are untouched. ``heads``: (block index, head) pairs,
    default every head of every Mamba-2 block. A causal check: if forgetting causes a model's memory cliff,
    holding the decay over the gap restores recall."""

    check_int("start", start, min_value=0)
    check_int("stop", stop, min_value=start + 1)
    if factor is not None and not 0 < factor <= 1:
        raise BadArgumentError(f"factor must be None or in (0, 1], got {factor}")
    mixers = {i: b.mixer for i, b in enumerate(model.blocks) if isinstance(b.mixer, Mamba2)}
    if not mixers:
        raise BadArgumentError("model has no Mamba-2 block")
    chosen = [(i, h) for i, m in mixers.items() for h in range(m.n_heads)] if heads is None else list(heads)
    for b, h in chosen:
        if b not in mixers or not 0 <= h < mixers[b].n_heads:
            raise BadArgumentError(f"heads must be (Mamba-2 block, head) pairs, got {(b, h)}")
    shift = 0.0 if factor is None else math.log(factor) / (stop - start)
    current: dict[str, int] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, _a, i=i: current.update(block=i)) for i, m in mixers.items()]
    original = mamba2_module.ssd_chunked

    def held(x, a_dt, *args, **kwargs):  # a_dt [B, T, H]: the log-decay of each token
        hs = [h for b, h in chosen if b == current.get("block")]
        if hs:
            a_dt = a_dt.clone()
            span = a_dt[:, start:stop, hs]
            a_dt[:, start:stop, hs] = torch.zeros_like(span) if factor is None else span + shift
        return original(x, a_dt, *args, **kwargs)

    mamba2_module.ssd_chunked = held
    try:
        yield
    finally:
        mamba2_module.ssd_chunked = original
        for hk in hooks:
            hk.remove()
