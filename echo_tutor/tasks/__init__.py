"""Synthetic recall tasks: pure, seeded generators of ``(inputs, labels)``.

Every generator takes ``num_examples`` and ``seed`` and uses its own ``numpy.random.Generator`` (never
global seeding), so the same arguments give the same batch anywhere. It returns two int64 tensors
``[num_examples, L]``: the token ids, and labels that are ``-100`` (ignored) everywhere except at answer
positions, where they hold the token the model must predict *next*. Accuracy is counted only there.

Vocabulary conventions (``V = vocab_size``): token 0 is reserved (padding / zero filler); recall keys
come from the lower half ``[1, V/2)`` and values from the upper half ``[V/2, V)`` as in Zoology's MQAR
(Arora et al. 2023). Tasks that need control tokens (``SET``, ``GET``, ...) take them from the top of
the vocabulary and say so in their docstring.

One module per task family: ``associative`` (mqar, mqar_gap), ``needle`` (niah), ``tools`` (tool_trace),
``hops`` (multi_hop), ``prompt`` (system_prompt), ``counting`` (common_word); ``registry`` maps names to
generators (``TASKS``) and defines :class:`Task`. Where a task's layout matters after generation (which tokens
are the context's bindings, which control token marks a write), the task's own module says it
(``context_bindings``, ``control_tokens``, ``writes_at_answers``): nothing else re-derives a layout.
"""

from .associative import context_bindings, mqar, mqar_gap
from .common import IGNORE
from .counting import common_word
from .hops import multi_hop
from .needle import niah
from .prompt import system_prompt
from .registry import TASKS, Task, make_task
from .tools import control_tokens, tool_trace, writes_at_answers

__all__ = [
    "mqar", "mqar_gap", "niah", "tool_trace", "multi_hop", "system_prompt", "common_word",
    "TASKS", "Task", "make_task", "IGNORE", "context_bindings", "control_tokens", "writes_at_answers",
]
