"""What every task generator shares: the ignore label, the output format, distinct draws per row."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BadArgumentError

__all__ = ["IGNORE", "as_tensors", "distinct_rows"]

IGNORE = -100  # the label of every position that is not an answer


def as_tensors(inputs: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)`` as int64 tensors ``[N, L]``."""
    return torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))


def distinct_rows(rng: np.random.Generator, n: int, k: int, lo: int, hi: int) -> np.ndarray:
    """``[n, k]`` distinct draws per row from ``[lo, hi)``."""
    if hi - lo < k:
        raise BadArgumentError(f"need {k} distinct tokens from [{lo}, {hi}): the vocabulary is too small")
    return np.argsort(rng.random((n, hi - lo)), axis=1)[:, :k] + lo
