"""Evaluating converted models: held-out NLL per window and the pass-key probe with streaming decoding (the
study's summary of them is ``echo_tutor.experiments.convert_report``)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..errors import BadArgumentError
from .cache import ConvertedCache

__all__ = ["greedy", "needle_probe", "needle_prompt", "window_nll"]


# Evaluation
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def window_nll(model, ids: torch.Tensor, score_from: int, *, batch_size: int = 4) -> list[float]:
    """Mean next-token NLL per window of ``ids`` [N, T], over the tokens after position ``score_from``
    (each window in one forward pass, no cache)."""
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise BadArgumentError(f"ids must be an int64 tensor [N, T], got {getattr(ids, 'shape', ids)!r}")
    if not 0 < score_from < ids.shape[1] - 1:
        raise BadArgumentError(f"score_from must be in [1, T-2] with T={ids.shape[1]}, got {score_from}")
    dev = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, ids.shape[0], batch_size):
        x = ids[s:s + batch_size].to(dev)
        logits = model(x).logits[:, score_from:-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), x[:, score_from + 1:], reduction="none")
        out += nll.mean(1).tolist()
    return out


_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")


def needle_prompt(tok, distance: int, rng: random.Random) -> tuple[torch.Tensor, str]:
    """A pass-key prompt: a random 5-digit key, then about ``distance`` tokens of filler, then the question,
    in the model's chat template. Returns ``(ids [1, T], key)``."""
    key = str(rng.randint(10000, 99999))
    unit = len(tok(_FILLER).input_ids)
    lead = _FILLER * rng.randint(0, 2)
    after = _FILLER * max(1, round(distance / unit))
    text = (f"There is a pass key hidden in this text. Remember it.\n{lead}The pass key is {key}. Remember it. "
            f"{key} is the pass key.\n{after}\nWhat is the pass key?")
    msgs = [{"role": "user", "content": text}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
    if not isinstance(ids, torch.Tensor):
        ids = ids["input_ids"]
    return ids, key


@torch.no_grad()
def greedy(model, ids: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding with a :class:`ConvertedCache` (converted layers step their fixed state in it)."""
    dev = next(model.parameters()).device
    cache = ConvertedCache(model)
    T = ids.shape[1]
    out = model(ids.to(dev), cache=cache, use_cache=True, position_ids=torch.arange(T, device=dev)[None])
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    new = [nxt]
    for i in range(n_new - 1):
        pos = torch.tensor([[T + i]], device=dev)
        out = model(nxt, cache=cache, use_cache=True, position_ids=pos)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(nxt)
    return torch.cat(new, dim=1)


def needle_probe(model, tok, distances: list[int], trials: int, *, seed: int = 0) -> dict[str, dict]:
    """Pass-key accuracy per distance: ``{str(distance): {"correct", "trials", "tokens"}}`` (the same prompts
    for every model, from ``seed``)."""
    res = {}
    for d in distances:
        rng = random.Random(seed * 1000 + d)
        ok, lens = 0, []
        for _ in range(trials):
            ids, key = needle_prompt(tok, d, rng)
            lens.append(ids.shape[1])
            text = tok.decode(greedy(model, ids, 12)[0])
            ok += int(key in text)
        res[str(d)] = {"correct": ok, "trials": trials, "tokens": sum(lens) / len(lens)}
    return res
