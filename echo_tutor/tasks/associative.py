"""Multi-query associative recall (Zoology's MQAR) and its distractor-gap variant MQAR-gap."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..errors import BadArgumentError
from .common import IGNORE, as_tensors, distinct_rows

__all__ = ["mqar", "mqar_gap", "context_bindings"]


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
    V = check_int("vocab_size", vocab_size, min_value=4)
    L = check_int("seq_len", seq_len, min_value=2)
    n = check_int("num_kv_pairs", num_kv_pairs, min_value=1)
    N = check_int("num_examples", num_examples, min_value=1)
    if 4 * n > L:
        raise BadArgumentError(f"seq_len={L} too short for num_kv_pairs={n}: needs at least 4 * num_kv_pairs = {4 * n}")
    if n > V // 2 - 1:
        raise BadArgumentError(f"num_kv_pairs={n} needs at least {n} distinct keys in [1, {V // 2})")
    if not (0 < power_a <= 1):
        raise BadArgumentError(f"power_a must be in (0, 1], got {power_a}")
    rng = np.random.default_rng(seed)
    ctx = 2 * n
    keys = distinct_rows(rng, N, n, 1, V // 2)
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
    return as_tensors(inputs, labels)


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
    V = check_int("vocab_size", vocab_size, min_value=4)
    n = check_int("num_kv_pairs", num_kv_pairs, min_value=1)
    G = check_int("gap", gap, min_value=0)
    N = check_int("num_examples", num_examples, min_value=1)
    if n > V // 2 - 1:
        raise BadArgumentError(f"num_kv_pairs={n} needs at least {n} distinct keys in [1, {V // 2})")
    if distractors not in ("values", "uniform"):
        raise BadArgumentError(f"distractors must be 'values' or 'uniform', got {distractors!r}")
    if queries not in ("once", "random"):
        raise BadArgumentError(f"queries must be 'once' or 'random', got {queries!r}")
    if not isinstance(show_values, bool):
        raise BadArgumentError(f"show_values must be True or False, got {show_values!r}")
    rng = np.random.default_rng(seed)
    keys = distinct_rows(rng, N, n, 1, V // 2)
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
    return as_tensors(inputs, labels)



def context_bindings(inputs: torch.Tensor, num_kv_pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bindings written by the context block of :func:`mqar` / :func:`mqar_gap` prompts.

    inputs ``[N, L]`` -> ``(keys [N, n], values [N, n])`` with ``n = num_kv_pairs``: the prompts open with
    ``k1 v1 ... kn vn``.

    Example:
        >>> x, _ = mqar_gap(vocab_size=16, num_kv_pairs=2, gap=3, num_examples=1, seed=0)
        >>> context_bindings(x, 2)
        (tensor([[4, 3]]), tensor([[15, 13]]))
    """
    n = check_int("num_kv_pairs", num_kv_pairs, min_value=1)
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or inputs.shape[1] < 2 * n:
        raise BadArgumentError(f"inputs must be a tensor [N, L] with L >= 2 * num_kv_pairs = {2 * n}, got "
                               f"{getattr(inputs, 'shape', type(inputs).__name__)}")
    return inputs[:, 0:2 * n:2], inputs[:, 1:2 * n:2]
