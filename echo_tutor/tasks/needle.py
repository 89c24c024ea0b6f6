"""Needle in a haystack: one binding hidden in filler, queried at the end."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from .common import IGNORE, as_tensors

__all__ = ["niah"]


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
    V = check_int("vocab_size", vocab_size, min_value=4)
    L = check_int("seq_len", seq_len, min_value=4)
    N = check_int("num_examples", num_examples, min_value=1)
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
    return as_tensors(inputs, labels)

