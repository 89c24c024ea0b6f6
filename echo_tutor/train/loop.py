"""The training loop and the evaluation: AdamW, warm-up then cosine decay, loss at answer positions only."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..models import prefix_mask
from ..tasks import IGNORE, Task

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "default_device", "answer_accuracy", "progress_bar",
           "make_optimizer", "lr_at"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")



def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar (a widget in notebooks, text in a terminal), or None when disabled or tqdm is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the lab extra; training works without it
        return None
    return tqdm(total=total, desc=desc, leave=False)



def answer_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) over answer positions. logits ``[B, T, V]``, labels ``[B, T]``."""
    mask = labels != IGNORE
    pred = logits.argmax(-1)
    return int((pred[mask] == labels[mask]).sum()), int(mask.sum())



@dataclass(frozen=True)
class TrainConfig:
    """How :func:`train` trains: the one way to set it up, ``train(model, task, TrainConfig(steps=..., lr=...))``.

    Frozen (derive a variant with ``dataclasses.replace``) and checked when built: a bad field raises
    :class:`~echo_tutor.errors.BadArgumentError` naming it. ``TrainResult.config`` is ``asdict`` of it.
    """

    steps: int = 1000
    """Optimiser steps (one batch each), >= 1; the learning-rate schedule is laid out over them."""
    batch_size: int = 16
    """Examples (sequences) per step, >= 1."""
    lr: float = 3e-3
    """Peak AdamW learning rate, > 0: reached after ``warmup`` steps, then cosine decay to ``0.1 * lr``."""
    weight_decay: float = 0.1
    """AdamW weight decay on the matrices (not on norms, biases, gains), >= 0."""
    warmup: int = 50
    """Steps of linear learning-rate warm-up, >= 0."""
    clip: float = 1.0
    """Gradient-norm clipping threshold, >= 0 (0: no clipping)."""
    seed: int = 0
    """Data seed: batch ``i`` is ``task.sample(batch_size, seed * 1_000_003 + i)``. (The model's
    initialisation is the caller's ``torch.manual_seed``.)"""
    eval_every: int = 100
    """Evaluate every this many steps (and after the last one), >= 1."""
    eval_examples: int = 256
    """Fresh examples (sequences) per evaluation, >= 1."""
    time_budget_s: float | None = None
    """Wall-clock seconds of training (evaluation excluded) after which training stops early, > 0; None: none."""
    compile: bool = False
    """Train through ``torch.compile(model, fullgraph=True)`` (evaluation stays eager)."""

    def __post_init__(self) -> None:
        check_int("steps", self.steps, min_value=1)
        check_int("batch_size", self.batch_size, min_value=1)
        check_positive("lr", self.lr)
        _check_non_negative("weight_decay", self.weight_decay)
        check_int("warmup", self.warmup, min_value=0)
        _check_non_negative("clip", self.clip)
        check_int("seed", self.seed)
        check_int("eval_every", self.eval_every, min_value=1)
        check_int("eval_examples", self.eval_examples, min_value=1)
        if self.time_budget_s is not None:
            check_positive("time_budget_s", self.time_budget_s)
        if not isinstance(self.compile, bool):
            raise BadArgumentError(f"compile must be True or False, got {self.compile!r}")


def _check_non_negative(name: str, x: object) -> None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadArgumentError(f"{name} must be a number >= 0, got {x!r}")
    if not math.isfinite(x) or x < 0:
        raise BadArgumentError(f"{name} must be a finite number >= 0, got {x}")


@dataclass
class TrainResult:
    config: dict[str, Any]
    task: str
    history: list[dict[str, float]] = field(default_factory=list)  # step, loss, acc, time_s (train batches)
    evals: list[dict[str, float]] = field(default_factory=list)  # step, eval_acc, time_s
    steps_done: int = 0
    time_s: float = 0.0

    @property
    def final_eval(self) -> float | None:
        return self.evals[-1]["eval_acc"] if self.evals else None



def pad_for_compile(x: torch.Tensor, y: torch.Tensor, multiple: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """ids ``x`` and labels ``y`` ``[B, T]`` padded at the end to a multiple of ``multiple`` tokens, with T marked
    dynamic: a compiled model then compiles twice (the first length, then one graph for every length) instead of
    once per length, which the recall tasks' mixtures of gaps exceed. The models are causal, so the real
    positions' outputs do not change; the padded labels are ``IGNORE``."""
    pad = (-x.shape[1]) % multiple
    if pad:
        x, y = F.pad(x, (0, pad), value=0), F.pad(y, (0, pad), value=IGNORE)
    torch._dynamo.maybe_mark_dynamic(x, 1)
    return x, y


def _forward(model, x, y, use_mask: bool):
    if use_mask:

        return model(x, mask=prefix_mask(y))[0]
    return model(x)[0]



@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, num_examples: int = 256, seed: int = 10_000,
             batch_size: int = 64, device: torch.device | str | None = None, prefix_mask: bool = False) -> float:
    """Accuracy at answer positions on ``num_examples`` fresh examples (seeds disjoint from training's).

    ``prefix_mask``: pass SKA's prefix mask (context writes, queries only read) derived from the labels."""
    check_int("num_examples", num_examples, min_value=1)
    check_int("batch_size", batch_size, min_value=1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    for i, start in enumerate(range(0, num_examples, batch_size)):
        x, y = task.sample(min(batch_size, num_examples - start), seed + i)
        x, y = x.to(device), y.to(device)
        c, t = answer_accuracy(_forward(model, x, y, prefix_mask), y)
        correct, total = correct + c, total + t
    model.train(was_training)
    return correct / max(total, 1)



def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.98), weight decay on the matrices only (not on norms, biases, gains)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def lr_at(i: int, lr: float, warmup: int, steps: int) -> float:
    """The learning rate of step ``i``: linear warm-up over ``warmup`` steps, then cosine decay to ``0.1 lr``."""
    if i < warmup:
        return lr * (i + 1) / warmup
    frac = (i - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _config_of(task, config, legacy: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` ``train`` was given (None: the defaults), after refusing the old call style."""
    if legacy:
        raise BadArgumentError("train() takes a TrainConfig: train(model, task, TrainConfig(steps=..., lr=...)); "
                               f"got keyword(s) {', '.join(legacy)}")
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise BadArgumentError("config must be a TrainConfig: pass TrainConfig(steps=..., ...), "
                               f"got {type(config).__name__}")
    if not isinstance(task, Task):
        raise BadArgumentError(f"task must be an echo_tutor.tasks.Task (make_task(...)), got {type(task).__name__}")
    return config


def train_step(model, fwd, opt, x, y, prefix_mask: bool = False, clip: float = 0.0) -> tuple[float, float]:
    """One optimiser step on ids ``x`` / labels ``y`` [B, T] through ``fwd`` (the model or its compiled twin);
    returns (loss, accuracy at the answer positions)."""
    logits = _forward(fwd, x, y, prefix_mask)
    mask = y != IGNORE
    loss = F.cross_entropy(logits[mask], y[mask])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    with torch.no_grad():
        acc = float((logits[mask].argmax(-1) == y[mask]).float().mean())
    return float(loss.detach()), acc


def train(
    model: torch.nn.Module,
    task: Task,
    config: TrainConfig | None = None,
    *,
    eval_task: Task | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    prefix_mask: bool = False,
    callback: Callable[[dict[str, float]], None] | None = None,
    **legacy: Any,
) -> TrainResult:
    """Train ``model`` (a ``HybridLM``-like ``ids -> (logits [B, T, V], state)`` module) on ``task`` as
    ``config`` (a :class:`TrainConfig`; None: its defaults) says: ``train(model, task, TrainConfig(steps=500))``.

    Batch ``i`` is ``task.sample(batch_size, seed * 1_000_003 + i)``: ids and labels ``[batch_size, T]``, the
    loss and accuracy counted at answer positions only (labels != -100); evaluation (``eval_examples`` fresh
    examples of ``eval_task or task`` every ``eval_every`` steps and after the last) uses disjoint seeds.
    Stops after ``steps`` or when ``time_budget_s`` of wall-clock training is spent (evaluation excluded),
    whichever comes first; the learning-rate schedule is laid out over ``steps``. ``prefix_mask`` gives SKA
    mixers the prefix mask (context writes, queries only read) in training and evaluation. ``callback`` gets
    each evaluation's record (step, loss, acc, time_s, eval_acc).
    ``compile=True`` trains through ``torch.compile(model, fullgraph=True)`` (evaluation stays eager): the
    first steps pay the compile time (about a minute on a CPU for the lab-scale models), so it pays only on
    long runs (``docs/results.md``, "torch.compile"); ``time_s`` includes it.
    The old keyword style (``train(model, task, steps=...)``) raises :class:`BadArgumentError`.
    Returns a :class:`TrainResult` with the loss/accuracy history and the evaluations.
    """
    cfg = _config_of(task, config, legacy)
    device = torch.device(device) if device is not None else default_device()
    model.to(device).train()
    fwd = torch.compile(model, fullgraph=True) if cfg.compile else model
    res = TrainResult(config=asdict(cfg), task=task.describe())
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    bar = progress_bar(cfg.steps, f"train {task.name}", progress)
    spent = 0.0
    for i in range(cfg.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(i, cfg.lr, cfg.warmup, cfg.steps)
        x, y = task.sample(cfg.batch_size, cfg.seed * 1_000_003 + i)
        x, y = x.to(device), y.to(device)
        if cfg.compile:
            x, y = pad_for_compile(x, y)
        loss, acc = train_step(model, fwd, opt, x, y, prefix_mask, cfg.clip)
        spent += time.perf_counter() - t0
        rec = {"step": i + 1, "loss": loss, "acc": acc, "time_s": spent}
        res.history.append(rec)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{acc:.2f}")
        last = i + 1 == cfg.steps or (cfg.time_budget_s is not None and spent >= cfg.time_budget_s)
        if (i + 1) % cfg.eval_every == 0 or last:
            ev = evaluate(model, eval_task or task, cfg.eval_examples, device=device, prefix_mask=prefix_mask)
            res.evals.append({"step": i + 1, "eval_acc": ev, "time_s": spent})
            if callback is not None:
                callback({**rec, "eval_acc": ev})
        if last:
            break
    if bar is not None:
        bar.close()
    res.steps_done, res.time_s = len(res.history), spent
    model.eval()
    return res
