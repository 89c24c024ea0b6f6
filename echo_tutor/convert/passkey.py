"""A retrieval probe that generates: pass keys hidden in long prompts, answered by greedy decoding, scored by
exact match, with the controls that say which part of a converted model carried the key.

Two prompt formats, so that a verdict does not hang on one prompt:

* ``"chat"``: lab 08's probe. The model's chat template around a repeated filler ("The grass is green. ...")
  with the key stated twice; the model answers as the assistant.
* ``"plain"``: no template. Held-out standard-library docstrings (text the conversion never calibrated on) with
  the key stated once; the prompt ends "... Answer: The pass key ... is" and the model continues.

``keys > 1`` hides several keys, each tied to a name ("the pass key of the red door is 41032."), at random
depths, and asks for one. A trial is correct when the first five-digit number the model generates is the key
asked for (exact match; a different key, or none, is wrong).

Controls, run on the same prompts: :func:`readout_shut` silences the statistics' readout of converted layers:
window + SKA reads zeros from its statistics, its gate (a function of the current token) still taking its share
from the window; window + linear drops the old part's values and its share of the normaliser (that share is
itself read from the old keys), which leaves the window alone.
With the window-alone mixer at the same layers, a mixer "keeps the needle" where it retrieves and both controls
do not.
"""

from __future__ import annotations

import contextlib
import random
import re
from dataclasses import dataclass

import torch

from .._checks import check_choice, check_int
from ..echokv.model import calibration_text
from ..errors import BadArgumentError
from ..stats import proportion_ci
from ..echokv.capture import apply_rope
from .layers import capture_inputs, layer_inputs
from .mixer import ConvertedAttention
from .probe import greedy

__all__ = ["FORMATS", "NeedleCase", "key_positions", "make_case", "probe_retrieval", "read_key", "readout_shut",
           "retrieval_mass"]

FORMATS = ("chat", "plain")
NAMES = ("red", "blue", "green", "amber", "violet", "silver", "copper", "ivory", "black", "white")
CHAT_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEW_TOKENS = 16  # tokens generated per trial: SmolLM2 writes a digit a token, after a lead-in ("The pass key is")


@dataclass(frozen=True)
class NeedleCase:
    """One prompt: ``ids`` ``[1, T]``, the ``key`` asked for, its ``name`` (multi-key; "" for one key), the
    ``depth`` (0-1) at which that key sits, and the other keys hidden beside it."""

    ids: torch.Tensor
    key: str
    name: str
    depth: float
    others: tuple[str, ...] = ()


def read_key(text: str) -> str | None:
    """The first five-digit number of a generated answer (None if there is none)."""
    m = re.search(r"(?<!\d)\d{5}(?!\d)", text)
    return m.group(0) if m else None


def _sentence(key: str, name: str, fmt: str) -> str:
    who = f" of the {name} door" if name else ""
    if fmt == "chat":
        return f" The pass key{who} is {key}. Remember it. {key} is the pass key{who}. "
    return f" The pass key{who} is {key}. "


def _wrap(tok, text: str, name: str, fmt: str) -> torch.Tensor:
    who = f" of the {name} door" if name else ""
    if fmt == "chat":
        lead = "There is a pass key hidden in this text. Remember it." if not name else \
            "There are pass keys hidden in this text, one for each door. Remember them."
        msgs = [{"role": "user", "content": f"{lead}\n{text}\nWhat is the pass key{who}?"}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        return ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    prompt = f"{text}\n\nQuestion: what is the pass key{who}? Answer: The pass key{who} is"
    return tok(prompt, return_tensors="pt").input_ids


def _haystack(tok, source_ids: list[int], n: int, rng: random.Random) -> list[str]:
    """About ``n`` tokens of ``source_ids`` from a random offset, cut into sentence-ish pieces (text)."""
    if n >= len(source_ids):
        raise BadArgumentError(f"length: the filler text has {len(source_ids)} tokens, {n} were asked for")
    start = rng.randrange(0, len(source_ids) - n)
    text = tok.decode(source_ids[start:start + n])
    return [p for p in re.split(r"(?<=[.!?\n])\s+", text) if p]


def make_case(tok, length: int, rng: random.Random, *, fmt: str = "chat", keys: int = 1,
              source_ids: list[int] | None = None) -> NeedleCase:
    """A prompt of about ``length`` tokens with ``keys`` pass keys at random depths, one asked for.

    ``source_ids``: the plain format's filler as token ids (held-out docstrings, :func:`plain_source`); the chat
    format always builds its own (the repeated filler), whatever is passed."""
    check_choice("fmt", fmt, FORMATS)
    check_int("keys", keys, min_value=1)
    check_int("length", length, min_value=64)
    if keys > len(NAMES):
        raise BadArgumentError(f"keys must be at most {len(NAMES)}, got {keys}")
    names = rng.sample(NAMES, keys) if keys > 1 else [""]
    values = [str(rng.randint(10000, 99999)) for _ in names]
    asked = rng.randrange(keys)
    if fmt == "chat":
        source_ids = _chat_source(tok, length // 8 + 64)
    elif source_ids is None:
        raise BadArgumentError("source_ids: the plain format needs its filler's ids (plain_source(tok))")
    overhead = _wrap(tok, "".join(_sentence(v, n, fmt) for v, n in zip(values, names)), names[asked], fmt).shape[1]
    pieces = _haystack(tok, source_ids, max(16, length - overhead), rng)
    slots = sorted(rng.sample(range(len(pieces) + 1), keys)) if len(pieces) + 1 >= keys else [0] * keys
    order = list(range(keys))
    rng.shuffle(order)
    for slot, k in sorted(zip(slots, order), reverse=True):
        pieces.insert(slot, _sentence(values[k], names[k], fmt).strip())
    where = {k: s for s, k in zip(slots, order)}
    ids = _wrap(tok, " ".join(pieces), names[asked], fmt)
    depth = where[asked] / max(1, len(pieces) - keys)
    return NeedleCase(ids, values[asked], names[asked], round(min(1.0, depth), 3),
                      tuple(v for i, v in enumerate(values) if i != asked))


_CHAT_SOURCE: list = [None, 0, []]  # (tokenizer, repeats, ids) of the last call


def _chat_source(tok, repeats: int) -> list[int]:
    """The chat format's repeated filler as token ids (tokenized once while the tokenizer and length stay)."""
    if _CHAT_SOURCE[0] is not tok or _CHAT_SOURCE[1] != repeats:
        _CHAT_SOURCE[:] = [tok, repeats, tok(CHAT_FILLER * repeats).input_ids]
    return _CHAT_SOURCE[2]


def plain_source(tok) -> list[int]:
    """The plain format's filler: held-out standard-library docstrings as token ids (not calibration text)."""
    return tok(calibration_text("heldout")).input_ids


@torch.no_grad()
def probe_retrieval(model, tok, lengths: list[int], trials: int, *, fmt: str = "chat", keys: int = 1,
                    seed: int = 0, source_ids: list[int] | None = None) -> dict[str, dict]:
    """Pass-key retrieval per prompt length: ``{str(length): {"correct", "trials", "ci95", "tokens",
    "answers", "keys"}}`` (``ci95``: Wilson's interval of the rate; ``answers``: the key read from each answer,
    or None; ``keys``: the key each prompt asked for). The prompts depend only on ``(seed, fmt, keys, length)``: every model of a run reads the same ones."""
    check_int("trials", trials, min_value=1)
    if fmt == "plain" and source_ids is None:
        source_ids = plain_source(tok)
    out = {}
    for length in lengths:
        rng = random.Random(f"{seed}/{fmt}/{keys}/{length}")
        ok, tokens, answers, asked = 0, [], [], []
        for _ in range(trials):
            case = make_case(tok, length, rng, fmt=fmt, keys=keys, source_ids=source_ids)
            got = read_key(tok.decode(greedy(model, case.ids, NEW_TOKENS)[0]))
            ok += int(got == case.key)
            tokens.append(case.ids.shape[1])
            answers.append(got)
            asked.append(case.key)
        lo, hi = proportion_ci(ok / trials, trials)
        out[str(length)] = {"correct": ok, "trials": trials, "ci95": [lo, hi], "tokens": sum(tokens) / trials,
                            "answers": answers, "keys": asked}
    return out


@contextlib.contextmanager
def readout_shut(mixers: dict[int, ConvertedAttention]):
    """Within the block, the converted layers' statistics read out nothing (SKA's readout is zero; linear
    attention's old part adds neither values nor normaliser mass); restored after. The window alone has no
    statistics: it is left as it is."""
    had = {i: m.readout_on for i, m in mixers.items()}
    try:
        for m in mixers.values():
            m.readout_on = False
        yield mixers
    finally:
        for i, m in mixers.items():
            m.readout_on = had[i]


def key_positions(tok, case: NeedleCase) -> list[int]:
    """The positions of the tokens of ``case.ids`` that spell the asked key (every place it is stated)."""
    pieces = [tok.decode([i]) for i in case.ids[0].tolist()]
    starts, at = [], 0
    for p in pieces:
        starts.append(at)
        at += len(p)
    text, out = "".join(pieces), set()
    for m in re.finditer(re.escape(case.key), text):
        out.update(i for i, (a, p) in enumerate(zip(starts, pieces)) if a < m.end() and a + len(p) > m.start())
    return sorted(out)


@torch.no_grad()
def retrieval_mass(model, tok, cases: list[NeedleCase], *, beyond: int = 0) -> torch.Tensor:
    """How much each attention layer of the *original* model reads the key when the answer begins: ``[L]``, the
    softmax weight the last prompt token (the one whose output is the answer's first token) puts on the key's
    tokens (:func:`key_positions`) that lie more than ``beyond`` tokens back, summed over them, averaged over
    query heads and ``cases``. The layers a window would cut off from the key score high (Bick et al., arXiv
    2504.18574, find retrieval in a few heads)."""
    check_int("beyond", beyond, min_value=0)
    if not cases:
        raise BadArgumentError("cases: give at least one NeedleCase")
    cfg = model.config
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_q
    mass = torch.zeros(len(model.model.layers))
    for case in cases:
        T = case.ids.shape[1]
        far = [i for i in key_positions(tok, case) if T - 1 - i > beyond]
        if not far:
            continue
        h = capture_inputs(model, case.ids)
        cos, sin = layer_inputs(model, T, "cpu")
        for layer, x in h.items():
            attn = model.model.layers[layer].self_attn
            x = x.float()
            q = attn.q_proj(x[:, -1:]).view(1, 1, n_q, D).transpose(1, 2)
            k = attn.k_proj(x).view(1, T, n_kv, D).transpose(1, 2)
            q, k = apply_rope(q, cos[:, -1:], sin[:, -1:]), apply_rope(k, cos, sin)
            w = torch.softmax((q @ k.repeat_interleave(n_q // n_kv, 1).transpose(-1, -2)) * D**-0.5, -1)  # [1, Hq, 1, T]
            mass[layer] += w[0, :, 0, far].sum(-1).mean() / len(cases)
    return mass
