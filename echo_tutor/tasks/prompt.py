"""A "system prompt" of definitions queried after a long gap with decoys."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..errors import BadArgumentError
from .common import IGNORE, as_tensors, distinct_rows

__all__ = ["system_prompt"]


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
    V = check_int("vocab_size", vocab_size, min_value=8)
    n = check_int("num_vars", num_vars, min_value=1)
    G = check_int("gap", gap, min_value=0)
    nd = check_int("num_decoys", num_decoys, min_value=0)
    N = check_int("num_examples", num_examples, min_value=1)
    if 2 * nd > G:
        raise BadArgumentError(f"gap={G} must hold the decoys: needs gap >= 2 * num_decoys = {2 * nd}")
    if n > V // 2 - 1:
        raise BadArgumentError(f"num_vars={n} needs at least {n} distinct tokens in [1, {V // 2})")
    DEF = V - 1
    rng = np.random.default_rng(seed)
    names = distinct_rows(rng, N, n, 1, V // 2)
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
    return as_tensors(inputs, labels)

