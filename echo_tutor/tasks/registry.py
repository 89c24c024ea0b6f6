"""The task registry: names to generators, and :class:`Task`, a generator with its arguments fixed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..errors import BadArgumentError
from .associative import mqar, mqar_gap
from .counting import common_word
from .hops import multi_hop
from .needle import niah
from .prompt import system_prompt
from .tools import tool_trace

__all__ = ["TASKS", "Task", "make_task"]


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
            raise BadArgumentError(f"task name must be one of {list(TASKS)}, got {self.name!r}")

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

