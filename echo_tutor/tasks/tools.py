"""Tool traces: variables set and read by tool calls, with overwrites (the answer is the latest value)."""

from __future__ import annotations

import numpy as np
import torch

from .._checks import check_int
from ..errors import BadArgumentError
from .common import IGNORE, as_tensors

__all__ = ["tool_trace", "control_tokens", "writes_at_answers"]

STRIDE = 3  # every call is three tokens: SET x v or GET x v


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
    V = check_int("vocab_size", vocab_size, min_value=8)
    nv = check_int("num_vars", num_vars, min_value=1)
    no = check_int("num_ops", num_ops, min_value=1)
    nq = check_int("num_queries", num_queries, min_value=1)
    N = check_int("num_examples", num_examples, min_value=1)
    if no < nv:
        raise BadArgumentError(f"num_ops={no} must be >= num_vars={nv} (every variable is written once)")
    if nv > V // 2 - 1 or V - 2 - V // 2 < 2:
        raise BadArgumentError(f"vocab_size={V} too small for num_vars={nv}")
    SET, GET = control_tokens(V)
    rng = np.random.default_rng(seed)
    inputs = np.empty((N, STRIDE * (no + nq)), dtype=np.int64)
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
    return as_tensors(inputs, labels)



def control_tokens(vocab_size: int) -> tuple[int, int]:
    """``(SET, GET)`` of a tool trace over ``vocab_size`` tokens: ``(V - 1, V - 2)``."""
    V = check_int("vocab_size", vocab_size, min_value=8)
    return V - 1, V - 2


def writes_at_answers(inputs: torch.Tensor, labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """How many times the queried variable had been written, at every answer position of a tool trace.

    inputs, labels ``[N, L]`` (from :func:`tool_trace`) -> ``[N, L]`` int64: at an answer position (the
    variable after ``GET``) the number of ``SET`` calls for that variable before it, 0 elsewhere.

    Example:
        >>> x, y = tool_trace(vocab_size=16, num_vars=2, num_ops=3, num_queries=1, num_examples=1, seed=0)
        >>> writes_at_answers(x, y, 16)[0, 10]  # GET 5: variable 5 was written once
        tensor(1)
    """
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 2 or not isinstance(labels, torch.Tensor) \
            or labels.shape != inputs.shape:
        raise BadArgumentError(f"inputs and labels must be tensors of one shape [N, L], got "
                               f"{getattr(inputs, 'shape', type(inputs).__name__)} and "
                               f"{getattr(labels, 'shape', type(labels).__name__)}")
    SET, _ = control_tokens(vocab_size)
    out = torch.zeros_like(inputs)
    for b in range(inputs.shape[0]):
        writes: dict[int, int] = {}
        row = inputs[b].tolist()
        for j in range(0, len(row) - 1, STRIDE):
            var = row[j + 1]
            if row[j] == SET:
                writes[var] = writes.get(var, 0) + 1
            elif labels[b, j + 1] != IGNORE:
                out[b, j + 1] = writes.get(var, 0)
    return out
