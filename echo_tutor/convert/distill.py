"""Stage 2: a short end-to-end distillation of a partly converted model to the original model.

Stage 1 fits each converted layer alone to its layer's attention output; the errors of several converted
layers then compound through the layers above them. Stage 2 trains only the mixers' own parameters (every
pretrained weight stays frozen, including the projections the mixers borrow) so that the converted model's
next-token distribution matches the original's: the loss is ``KL(p_original || p_converted)`` per token,
averaged over the tokens of calibration windows.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .._checks import check_int
from ..errors import BadArgumentError
from .layers import maybe_bar, converted
from .mixer import ConvertedAttention

__all__ = ["distill", "token_kl"]


def token_kl(teacher_logp: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of ``KL(p_teacher || p_student)`` in nats.

    Args:
        teacher_logp: the original model's log-probabilities ``[B, T, V]`` (any float dtype).
        student_logits: the converted model's logits ``[B, T, V]``.
    """
    t = teacher_logp.float()
    s = F.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


@torch.no_grad()
def _teacher(model, ids: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(model(ids).logits.float(), -1).to(torch.float16)


def distill(model, mixers: dict[int, ConvertedAttention], ids: torch.Tensor, *, steps: int = 40, lr: float = 2e-3,
            heldout: torch.Tensor | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Stage 2 in place: train the ``mixers``' own parameters so that ``model`` with them converted matches
    the original ``model`` token by token.

    Args:
        mixers: ``{layer: ConvertedAttention}`` (stage-1 fitted), trained in place.
        ids: calibration windows ``[N, T]``, one window per step (sampled with ``seed``).
        heldout: windows ``[M, T]`` for the KL before and after (default: the last window of ``ids``, which is
            then not trained on).
    Returns:
        ``{"kl_before", "kl_after", "losses", "seconds"}`` (held-out mean per-token KL in nats).
    """
    check_int("steps", steps, min_value=0)
    if not mixers:
        raise BadArgumentError("mixers must name at least one converted layer, got {}")
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[0] < (1 if heldout is not None else 2):
        raise BadArgumentError(f"ids must be a tensor [N, T] with N >= 2 (or N >= 1 with heldout), got "
                               f"{getattr(ids, 'shape', ids)!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise BadArgumentError(f"lr must be a positive number, got {lr!r}")
    if heldout is None:
        ids, heldout = ids[:-1], ids[-1:]
    dev = next(model.parameters()).device
    t0 = time.time()
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = [p for m in mixers.values() for p in m.parameters() if p.requires_grad]
    try:
        held_t = [_teacher(model, heldout[i:i + 1].to(dev)) for i in range(heldout.shape[0])]
        teacher: dict[int, torch.Tensor] = {}

        def held_kl() -> float:
            with torch.no_grad(), converted(model, mixers):
                return sum(float(token_kl(t, model(heldout[i:i + 1].to(dev)).logits)) for i, t in enumerate(held_t)) / len(held_t)

        before = held_kl()
        losses: list[float] = []
        if params and steps:
            opt = torch.optim.Adam(params, lr=lr)
            g = torch.Generator().manual_seed(seed)
            for _ in maybe_bar(range(steps), progress, f"stage 2 ({len(mixers)} layers)"):
                i = int(torch.randint(0, ids.shape[0], (1,), generator=g))
                if i not in teacher:
                    teacher[i] = _teacher(model, ids[i:i + 1].to(dev))
                with converted(model, mixers):
                    loss = token_kl(teacher[i], model(ids[i:i + 1].to(dev)).logits)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
        after = held_kl()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return {"kl_before": before, "kl_after": after, "losses": losses, "seconds": time.time() - t0}
