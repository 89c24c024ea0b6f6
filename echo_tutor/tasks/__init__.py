"""Synthetic recall tasks: pure, seeded generators of ``(inputs, labels)``.

Every generator takes ``num_examples`` and ``seed`` and uses its own ``numpy.random.Generator`` (never
global seeding), so the same arguments give the same batch anywhere. It returns two int64 tensors
``[num_examples, L]``: the token ids, and labels that are ``-100`` (ignored) everywhere except at answer
positions, where they hold the token the model must predict *next*. Accuracy is counted only there.

Vocabulary conventions (``V = vocab_size``): token 0 is reserved (padding / zero filler); recall keys
come from the lower half ``[1, V/2)`` and values from the upper half ``[V/2, V)`` as in Zoology's MQAR
(Arora et al. 2023). Tasks that need control tokens (``SET``, ``GET``, ...) take them from the top of
the vocabulary and say so in their docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = [
    "mqar", "mqar_gap", "niah", "tool_trace", "multi_hop", "system_prompt", "common_word",
    "TASKS", "Task", "make_task", "IGNORE",
]

IGNORE = -100


def _check_int(name: str, x: object, lo: int) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {x!r}")
    if x < lo:
        raise ValueError(f"{name} must be >= {lo}, got {x}")
    return int(x)


def _out(inputs: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))


def _distinct_rows(rng: np.random.Generator, n: int, k: int, lo: int, hi: int) -> np.ndarray:
    """``[n, k]`` distinct draws per row from ``[lo, hi)``."""
    if hi - lo < k:
        raise ValueError(f"need {k} distinct tokens from [{lo}, {hi}): the vocabulary is too small")
    return np.argsort(rng.random((n, hi - lo)), axis=1)[:, :k] + lo


# -------------------------------------------------------------------------------------------------- MQAR
def mqar(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall, laid out as in Zoology.

    ``[k1 v1 k2 v2 ... kn vn | queries and filler]``: each key is queried once in the second part, at an
    even offset drawn from a power law ``p(g) ~ power_a * g^(power_a - 1)`` (most queries near the
    context); the key's value follows it in the inputs, and the label at the key's position is that
    value. Other positions hold uniform random tokens (``random_non_queries``) or 0.

    Example:
        >>> x, y = mqar(vocab_size=16, seq_len=12, num_kv_pairs=2, num_examples=1, seed=0)
        >>> x  # context 4->15, 3->13; queries at 6 and 10; 6 13 and 12 11 are filler
        tensor([[ 4, 15,  3, 13,  6, 13,  4, 15, 12, 11,  3, 13]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100,   15, -100, -100, -100,   13, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 4)
    L = _check_int("seq_len", seq_len, 2)
    n = _check_int("num_kv_pairs", num_kv_pairs, 1)
    N = _check_int("num_examples", num_examples, 1)
    if 4 * n > L:
        raise ValueError(f"seq_len={L} too short for num_kv_pairs={n}: needs at least 4 * num_kv_pairs = {4 * n}")
    if n > V // 2 - 1:
        raise ValueError(f"num_kv_pairs={n} needs at least {n} distinct keys in [1, {V // 2})")
    if not (0 < power_a <= 1):
        raise ValueError(f"power_a must be in (0, 1], got {power_a}")
    rng = np.random.default_rng(seed)
    ctx = 2 * n
    keys = _distinct_rows(rng, N, n, 1, V // 2)
    values = rng.integers(V // 2, V, size=(N, n))
    space = (L - ctx) // 2  # query slots: even offsets after the context
    p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
    p /= p.sum()
    slots = np.stack([rng.choice(space, size=n, replace=False, p=p) for _ in range(N)])  # [N, n]
    inputs = rng.integers(1, V, size=(N, L)) if random_non_queries else np.zeros((N, L), dtype=np.int64)
    labels = np.full((N, L), IGNORE, dtype=np.int64)
    rows = np.arange(N)[:, None]
    inputs[rows, 2 * np.arange(n)] = keys
    inputs[rows, 2 * np.arange(n) + 1] = values
    qpos = ctx + 2 * slots
    inputs[rows, qpos] = keys
    inputs[rows, qpos + 1] = values
    labels[rows, qpos] = values
    return _out(inputs, labels)


def mqar_gap(
    vocab_size: int, num_kv_pairs: int, gap: int, num_examples: int, seed: int, distractors: str = "values",
    queries: str = "once", show_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MQAR with a distractor gap: ``[k1 v1 ... kn vn][gap random tokens][q v ...]``.

    ``n`` queries follow ``gap`` random distractor tokens; the value follows each query in the inputs and the
    label at the query is that value. Length ``4 n + gap``.

    ``queries`` chooses which keys are asked:

    * ``"once"`` (default, as in Zoology): every key once, in random order. The values shown after earlier
      queries then give a shortcut: a model that only knows *which values were bound* can rule out the
      ones already shown, and the last query is answered without any recall.
    * ``"random"``: ``n`` keys drawn *with replacement* from the bound keys. Nothing in the query region says
      which bindings are left; but a repeated query can be answered by copying its earlier answer.

    ``show_values=False`` puts the pad token 0 after each query instead of its value, so nothing in the query
    region reveals an answer: no elimination, no copying. A model that knows the bound values but not their
    keys then scores about ``1/n``; one that has lost the bindings, about ``2/V`` (chance among the values).

    ``distractors`` chooses what fills the gap:

    * ``"values"`` (default): uniform tokens from the value half ``[V/2, V)``. No key recurs in the gap,
      so the task measures what it is meant to: holding the bindings across ``gap`` tokens.
    * ``"uniform"``: uniform tokens from ``[1, V)``. Then every key also recurs in the gap (about
      ``gap / V`` times each), followed by a random token, and the label is the *first* binding: the task
      then also demands positional disambiguation between conflicting bindings.

    Example:
        >>> x, y = mqar_gap(vocab_size=16, num_kv_pairs=2, gap=3, num_examples=1, seed=0)
        >>> x  # [4 15 3 13][10 14 13][4 15 3 13]
        tensor([[ 4, 15,  3, 13, 10, 14, 13,  4, 15,  3, 13]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100,   15, -100,   13, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 4)
    n = _check_int("num_kv_pairs", num_kv_pairs, 1)
    G = _check_int("gap", gap, 0)
    N = _check_int("num_examples", num_examples, 1)
    if n > V // 2 - 1:
        raise ValueError(f"num_kv_pairs={n} needs at least {n} distinct keys in [1, {V // 2})")
    if distractors not in ("values", "uniform"):
        raise ValueError(f"distractors must be 'values' or 'uniform', got {distractors!r}")
    if queries not in ("once", "random"):
        raise ValueError(f"queries must be 'once' or 'random', got {queries!r}")
    if not isinstance(show_values, bool):
        raise ValueError(f"show_values must be True or False, got {show_values!r}")
    rng = np.random.default_rng(seed)
    keys = _distinct_rows(rng, N, n, 1, V // 2)
    values = rng.integers(V // 2, V, size=(N, n))
    if queries == "once":
        order = np.argsort(rng.random((N, n)), axis=1)
    else:
        order = rng.integers(0, n, size=(N, n))
    rows = np.arange(N)[:, None]
    kv = np.empty((N, 2 * n), dtype=np.int64)
    kv[:, 0::2], kv[:, 1::2] = keys, values
    qa = np.empty((N, 2 * n), dtype=np.int64)
    qa[:, 0::2], qa[:, 1::2] = keys[rows, order], values[rows, order]
    lo = V // 2 if distractors == "values" else 1
    answers = qa[:, 1::2].copy()
    if not show_values:
        qa[:, 1::2] = 0
    inputs = np.concatenate([kv, rng.integers(lo, V, size=(N, G)), qa], axis=1)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    q0 = 2 * n + G
    labels[:, q0::2] = answers
    return _out(inputs, labels)


# -------------------------------------------------------------------------------------------------- NIAH
def niah(vocab_size: int, seq_len: int, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Needle in a haystack: one (key, value) pair hidden in random filler, queried at the end.

    ``[filler ... k v ... filler][k v]``: filler tokens come from the value half so that they can never
    be mistaken for the key; the needle sits at a uniform position in the haystack; the last two tokens
    query it. Length ``seq_len``.

    Example:
        >>> x, y = niah(vocab_size=16, seq_len=10, num_examples=1, seed=0)
        >>> x  # needle 5 -> 15 at positions 3-4, queried at 8
        tensor([[14, 13, 12,  5, 15,  8,  8,  8,  5, 15]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100, -100,   15, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 4)
    L = _check_int("seq_len", seq_len, 4)
    N = _check_int("num_examples", num_examples, 1)
    rng = np.random.default_rng(seed)
    inputs = rng.integers(V // 2, V, size=(N, L))
    keys = rng.integers(1, V // 2, size=N)
    values = rng.integers(V // 2, V, size=N)
    pos = rng.integers(0, L - 3, size=N)  # needle at pos, pos+1 (before the query pair)
    rows = np.arange(N)
    inputs[rows, pos], inputs[rows, pos + 1] = keys, values
    inputs[:, -2], inputs[:, -1] = keys, values
    labels = np.full((N, L), IGNORE, dtype=np.int64)
    labels[:, -2] = values
    return _out(inputs, labels)


# -------------------------------------------------------------------------------------------- tool trace
def tool_trace(
    vocab_size: int, num_vars: int, num_ops: int, num_queries: int, num_examples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace of tool calls that set and read variables, with overwrites: the answer is the *latest* value.

    Control tokens: ``SET = V-1``, ``GET = V-2``. Variables come from ``[1, V/2)``, values from
    ``[V/2, V-2)``. ``num_ops`` writes ``SET x v`` (variables drawn with replacement, so later writes
    overwrite earlier ones; every variable is written at least once), then ``num_queries`` reads
    ``GET x v`` whose label, at ``x``, is ``x``'s last written value. Length ``3 (num_ops + num_queries)``.

    Example:
        >>> x, y = tool_trace(vocab_size=16, num_vars=2, num_ops=3, num_queries=1, num_examples=1, seed=0)
        >>> x  # SET 5 8 | SET 6 9 | SET 6 12 (overwrites 6) | GET 5 -> 8
        tensor([[15,  5,  8, 15,  6,  9, 15,  6, 12, 14,  5,  8]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100,    8, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 8)
    nv = _check_int("num_vars", num_vars, 1)
    no = _check_int("num_ops", num_ops, 1)
    nq = _check_int("num_queries", num_queries, 1)
    N = _check_int("num_examples", num_examples, 1)
    if no < nv:
        raise ValueError(f"num_ops={no} must be >= num_vars={nv} (every variable is written once)")
    if nv > V // 2 - 1 or V - 2 - V // 2 < 2:
        raise ValueError(f"vocab_size={V} too small for num_vars={nv}")
    SET, GET = V - 1, V - 2
    rng = np.random.default_rng(seed)
    inputs = np.empty((N, 3 * (no + nq)), dtype=np.int64)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    for i in range(N):
        names = rng.choice(np.arange(1, V // 2), size=nv, replace=False)
        order = np.concatenate([rng.permutation(nv), rng.integers(0, nv, size=no - nv)])
        order = order[rng.permutation(no)]
        vals = rng.integers(V // 2, V - 2, size=no)
        latest: dict[int, int] = {}
        for j, (var, val) in enumerate(zip(names[order], vals)):
            inputs[i, 3 * j: 3 * j + 3] = (SET, var, val)
            latest[int(var)] = int(val)
        for j, var in enumerate(rng.choice(names, size=nq, replace=True)):
            p = 3 * (no + j)
            inputs[i, p: p + 3] = (GET, var, latest[int(var)])
            labels[i, p + 1] = latest[int(var)]
    return _out(inputs, labels)


# --------------------------------------------------------------------------------------------- multi hop
def multi_hop(vocab_size: int, num_chains: int, num_examples: int, seed: int, gap: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-hop recall: bindings ``a -> b`` and ``b -> c`` are stored; the query ``a`` asks for ``c``.

    Tokens: ``a`` from ``[1, V/4)``, ``b`` from ``[V/4, V/2)``, ``c`` from ``[V/2, V)``. Layout:
    ``[a1 b1 ... an bn][b1 c1 ... bn cn]`` (second-hop pairs shuffled) ``[gap filler][a c ...]``; each chain
    queried once, label ``c`` at ``a``. Filler comes from ``[V/2, V)``. Length ``6 n + gap``.

    Example:
        >>> x, y = multi_hop(vocab_size=16, num_chains=2, num_examples=1, seed=0, gap=2)
        >>> x  # hops 3->4, 2->7 | 4->15, 7->13 | filler 11 14 | queries 2 (->13), 3 (->15)
        tensor([[ 3,  4,  2,  7,  4, 15,  7, 13, 11, 14,  2, 13,  3, 15]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100,   13, -100,   15, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 16)
    n = _check_int("num_chains", num_chains, 1)
    N = _check_int("num_examples", num_examples, 1)
    G = _check_int("gap", gap, 0)
    if n > V // 4 - 1:
        raise ValueError(f"num_chains={n} needs at least {n} distinct tokens in [1, {V // 4})")
    rng = np.random.default_rng(seed)
    a = _distinct_rows(rng, N, n, 1, V // 4)
    b = _distinct_rows(rng, N, n, V // 4, V // 2)
    c = rng.integers(V // 2, V, size=(N, n))
    rows = np.arange(N)[:, None]
    hop1 = np.empty((N, 2 * n), dtype=np.int64)
    hop1[:, 0::2], hop1[:, 1::2] = a, b
    p2 = np.argsort(rng.random((N, n)), axis=1)
    hop2 = np.empty((N, 2 * n), dtype=np.int64)
    hop2[:, 0::2], hop2[:, 1::2] = b[rows, p2], c[rows, p2]
    pq = np.argsort(rng.random((N, n)), axis=1)
    qa = np.empty((N, 2 * n), dtype=np.int64)
    qa[:, 0::2], qa[:, 1::2] = a[rows, pq], c[rows, pq]
    inputs = np.concatenate([hop1, hop2, rng.integers(V // 2, V, size=(N, G)), qa], axis=1)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    labels[:, 4 * n + G::2] = qa[:, 1::2]
    return _out(inputs, labels)


# ---------------------------------------------------------------------------------------- system prompt
def system_prompt(
    vocab_size: int, num_vars: int, gap: int, num_decoys: int, num_examples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A "system prompt" defines variables; after a long noisy gap that contains decoys, they are queried.

    Control token ``DEF = V-1``. Prompt: ``DEF x v`` per variable (``x`` in ``[1, V/2)``, ``v`` in
    ``[V/2, V-1)``). Gap: ``gap`` filler tokens from ``[V/2, V-1)`` with ``num_decoys`` pairs ``x v'``
    spliced in, binding prompt variables to *other* values *without* ``DEF`` (they must be ignored).
    Then ``x v`` queries for every variable, label ``v`` (the DEF value) at ``x``.
    Length ``3 n + gap + 2 n``.

    Example:
        >>> x, y = system_prompt(vocab_size=16, num_vars=2, gap=4, num_decoys=1, num_examples=1, seed=0)
        >>> x  # DEF 4 14 | DEF 3 13 | gap with decoy "3 12" | queries 3 (->13), 4 (->14)
        tensor([[15,  4, 14, 15,  3, 13,  3, 12, 11, 14,  3, 13,  4, 14]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100,   13, -100,   14, -100]])
    """
    V = _check_int("vocab_size", vocab_size, 8)
    n = _check_int("num_vars", num_vars, 1)
    G = _check_int("gap", gap, 0)
    nd = _check_int("num_decoys", num_decoys, 0)
    N = _check_int("num_examples", num_examples, 1)
    if 2 * nd > G:
        raise ValueError(f"gap={G} must hold the decoys: needs gap >= 2 * num_decoys = {2 * nd}")
    if n > V // 2 - 1:
        raise ValueError(f"num_vars={n} needs at least {n} distinct tokens in [1, {V // 2})")
    DEF = V - 1
    rng = np.random.default_rng(seed)
    names = _distinct_rows(rng, N, n, 1, V // 2)
    vals = rng.integers(V // 2, V - 1, size=(N, n))
    prompt = np.stack([np.full((N, n), DEF), names, vals], axis=2).reshape(N, 3 * n)
    gap_tok = rng.integers(V // 2, V - 1, size=(N, G))
    for i in range(N):
        slots = rng.choice(G // 2, size=nd, replace=False) * 2 if nd else []
        for s in slots:
            j = rng.integers(n)
            decoy = rng.integers(V // 2, V - 2)
            gap_tok[i, s: s + 2] = (names[i, j], decoy + (decoy >= vals[i, j]))  # any value but the true one
    rows = np.arange(N)[:, None]
    order = np.argsort(rng.random((N, n)), axis=1)
    qa = np.empty((N, 2 * n), dtype=np.int64)
    qa[:, 0::2], qa[:, 1::2] = names[rows, order], vals[rows, order]
    inputs = np.concatenate([prompt, gap_tok, qa], axis=1)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    labels[:, 3 * n + G::2] = qa[:, 1::2]
    return _out(inputs, labels)


# ------------------------------------------------------------------------------------------ common word
def common_word(
    vocab_size: int, seq_len: int, num_examples: int, seed: int, repeats: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which word was most common? Filler tokens from ``[1, V-1)`` occur at most once each (so the
    context needs ``seq_len <= V - 1``); one target token occurs exactly ``repeats`` times; the final
    token ``ASK = V-1`` asks for it (label at ``ASK``). Length ``seq_len``.

    Example:
        >>> x, y = common_word(vocab_size=16, seq_len=8, num_examples=1, seed=0, repeats=3)
        >>> x  # 12 occurs 3 times, every other token once; ASK = 15
        tensor([[12, 12,  3, 12,  7, 14,  4, 15]])
        >>> y
        tensor([[-100, -100, -100, -100, -100, -100, -100,   12]])
    """
    V = _check_int("vocab_size", vocab_size, 8)
    L = _check_int("seq_len", seq_len, 4)
    N = _check_int("num_examples", num_examples, 1)
    R = _check_int("repeats", repeats, 2)
    if L - 1 > V - 2:
        raise ValueError(f"seq_len={L} too long for vocab_size={V}: needs seq_len <= vocab_size - 1")
    if R > L - 1:
        raise ValueError(f"repeats={R} must be < seq_len={L}")
    ASK = V - 1
    rng = np.random.default_rng(seed)
    toks = _distinct_rows(rng, N, L - 1, 1, V - 1)  # distinct fillers; toks[:, 0] is the target
    target = toks[:, 0].copy()
    for i in range(N):
        pos = 1 + rng.choice(L - 2, size=R - 1, replace=False)  # R - 1 more copies, plus position 0
        toks[i, pos] = target[i]
        toks[i] = toks[i, rng.permutation(L - 1)]
    inputs = np.concatenate([toks, np.full((N, 1), ASK)], axis=1)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    labels[:, -1] = target
    return _out(inputs, labels)


TASKS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "mqar": mqar, "mqar_gap": mqar_gap, "niah": niah, "tool_trace": tool_trace,
    "multi_hop": multi_hop, "system_prompt": system_prompt, "common_word": common_word,
}


@dataclass
class Task:
    """A task with its arguments fixed, sampled by ``task.sample(num_examples, seed)``.

    A list-valued argument is a *mixture*: each call draws one of its values (from the seed), e.g.
    ``Task("mqar_gap", dict(vocab_size=128, num_kv_pairs=8, gap=[64, 256, 1024]))``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"task name must be one of {list(TASKS)}, got {self.name!r}")

    def sample(self, num_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([seed, 7919])
        kw = {k: (v[rng.integers(len(v))] if isinstance(v, (list, tuple)) else v) for k, v in self.kwargs.items()}
        return TASKS[self.name](num_examples=num_examples, seed=seed, **kw)

    @property
    def vocab_size(self) -> int:
        return int(self.kwargs["vocab_size"])

    def describe(self) -> str:
        return self.name + "(" + ", ".join(f"{k}={v}" for k, v in self.kwargs.items()) + ")"


def make_task(name: str, **kwargs: Any) -> Task:
    """``Task(name, kwargs)``; see :class:`Task`."""
    return Task(name, kwargs)
