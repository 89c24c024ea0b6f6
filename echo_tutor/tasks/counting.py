"""Which token was most common?"""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..errors import BadArgumentError
from .common import IGNORE, as_tensors, distinct_rows

__all__ = ["common_word"]


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
    V = check_int("vocab_size", vocab_size, min_value=8)
    L = check_int("seq_len", seq_len, min_value=4)
    N = check_int("num_examples", num_examples, min_value=1)
    R = check_int("repeats", repeats, min_value=2)
    if L - 1 > V - 2:
        raise BadArgumentError(f"seq_len={L} too long for vocab_size={V}: needs seq_len <= vocab_size - 1")
    if R > L - 1:
        raise BadArgumentError(f"repeats={R} must be < seq_len={L}")
    ASK = V - 1
    rng = np.random.default_rng(seed)
    toks = distinct_rows(rng, N, L - 1, 1, V - 1)  # distinct fillers; toks[:, 0] is the target
    target = toks[:, 0].copy()
    for i in range(N):
        pos = 1 + rng.choice(L - 2, size=R - 1, replace=False)  # R - 1 more copies, plus position 0
        toks[i, pos] = target[i]
        toks[i] = toks[i, rng.permutation(L - 1)]
    inputs = np.concatenate([toks, np.full((N, 1), ASK)], axis=1)
    labels = np.full(inputs.shape, IGNORE, dtype=np.int64)
    labels[:, -1] = target
    return as_tensors(inputs, labels)

