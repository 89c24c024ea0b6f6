"""Two-hop recall: a -> b and b -> c stored, a asks for c."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..errors import BadArgumentError
from .common import IGNORE, as_tensors, distinct_rows

__all__ = ["multi_hop"]


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
    V = check_int("vocab_size", vocab_size, min_value=16)
    n = check_int("num_chains", num_chains, min_value=1)
    N = check_int("num_examples", num_examples, min_value=1)
    G = check_int("gap", gap, min_value=0)
    if n > V // 4 - 1:
        raise BadArgumentError(f"num_chains={n} needs at least {n} distinct tokens in [1, {V // 4})")
    rng = np.random.default_rng(seed)
    a = distinct_rows(rng, N, n, 1, V // 4)
    b = distinct_rows(rng, N, n, V // 4, V // 2)
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
    return as_tensors(inputs, labels)

