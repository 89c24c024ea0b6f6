"""What a model costs and how SKA's prefix mask is read off a task: state bytes, parameters, the mask."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from ..tasks import IGNORE

__all__ = ["prefix_mask", "state_nbytes", "count_parameters"]


def prefix_mask(labels: torch.Tensor) -> torch.Tensor:
    """SKA's prefix mask from a task's labels ``[B, T]``: 1 on the context, 0 from the first query on.

    The first query token is the one just before the first answer position (its label sits on the query
    key, and for tool traces on the variable after ``GET``), so ``w_t = 1`` for ``t < first_answer - 1``."""
    check_tensor("labels", labels, 2, layout="[B, T]", floating=False)
    T = labels.shape[1]
    has = labels != IGNORE
    first = torch.where(has.any(1), has.float().argmax(1), torch.full((labels.shape[0],), T, device=labels.device))
    return (torch.arange(T, device=labels.device)[None] < (first - 1).clamp_min(0)[:, None]).float()



def state_nbytes(state: Any) -> int:
    """Bytes of every tensor an inference state holds (lists, tuples, dicts and dataclasses walked)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if dataclasses.is_dataclass(state):
        return sum(state_nbytes(getattr(state, f.name)) for f in dataclasses.fields(state))
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0



def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

