"""Lab 05 (transfer tasks): exercises, checkers and solutions.

1. ``tool_trace_answers(tokens [L], SET, GET) -> list[int]``: the answer of every ``GET x`` in a tool
   trace (``SET x v`` triples then ``GET x ?`` triples): the value of x's *latest* ``SET``. The checker
   blanks the third token of every ``GET`` triple (to ``0``): in the task's inputs it is the answer itself,
   teacher-forced, and copying it would pass without any logic.
2. ``forgetting_readout(keys [T, r], values [T, P], query [r], decay, eps) -> [P]``: ridge regression on
   exponentially forgotten statistics, ``G = eps I + sum_t decay^(T-1-t) k_t k_t^T`` and
   ``C = sum_t decay^(T-1-t) v_t k_t^T``, read out as ``C G^-1 q``. ``decay = 1`` is SKA's never-forgetting
   ridge (K = 0).
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = ["_tool_trace_answers_solution", "_forgetting_readout_solution", "check_tool_trace_answers",
           "check_forgetting_readout"]


def _tool_trace_answers_solution(tokens, SET: int, GET: int) -> list[int]:
    latest: dict[int, int] = {}
    answers = []
    toks = [int(t) for t in tokens]
    for i in range(0, len(toks) - 2, 3):
        op, var, val = toks[i: i + 3]
        if op == SET:
            latest[var] = val  # a later SET overwrites
        elif op == GET:
            answers.append(latest[var])
    return answers


def _forgetting_readout_solution(keys, values, query, decay: float, eps: float):
    T, r = keys.shape
    w = decay ** torch.arange(T - 1, -1, -1, dtype=keys.dtype)  # the newest token has weight 1
    G = eps * torch.eye(r, dtype=keys.dtype) + (w[:, None] * keys).T @ keys
    C = (w[:, None] * values).T @ keys
    return C @ torch.linalg.solve(G, query)


def _first_write_answers(tokens, SET: int, GET: int) -> list[int]:
    """The usual mistake: answer every GET with the variable's *first* value."""
    first: dict[int, int] = {}
    out = []
    toks = [int(t) for t in tokens]
    for i in range(0, len(toks) - 2, 3):
        if toks[i] == SET:
            first.setdefault(toks[i + 1], toks[i + 2])
        elif toks[i] == GET:
            out.append(first[toks[i + 1]])
    return out


def _blank_gets(tokens, GET: int) -> torch.Tensor:
    """The trace with the answer slot of every ``GET x v`` triple set to 0 (``GET x 0``)."""
    out = torch.as_tensor(tokens).clone()
    for i in range(0, len(out) - 2, 3):
        if int(out[i]) == GET:
            out[i + 2] = 0
    return out


def _copied_answers(tokens, GET: int) -> list[int]:
    """The shortcut: read each GET's answer off the token after ``GET x``."""
    toks = [int(t) for t in tokens]
    return [toks[i + 2] for i in range(0, len(toks) - 2, 3) if toks[i] == GET]


@checker(forbid=("tool_trace", "writes_at_answers", "control_tokens", "make_task"))
def check_tool_trace_answers(fn) -> None:
    """Check ``fn(tokens, SET, GET) -> list[int]`` on fresh traces where overwrites change the answer and
    the answer slot of every ``GET`` triple is blanked to 0."""
    from ..tasks import tool_trace

    name = "tool_trace_answers"
    g, seed = fresh_generator()
    V = 32
    SET, GET = V - 1, V - 2
    for attempt in range(100):  # a trace on which "first write wins" gives a different answer
        tokens = _blank_gets(tool_trace(V, 3, 12, 5, 1, seed=seed + attempt)[0][0], GET)
        want = _tool_trace_answers_solution(tokens, SET, GET)
        if _first_write_answers(tokens, SET, GET) != want:
            break
    out = call_student(name, fn, tokens.clone(), SET, GET)
    try:
        out = [int(v) for v in out]
    except Exception:
        raise ExerciseError(f"{name}: return a list of ints (one per GET), got {type(out).__name__}") from None
    if len(out) != len(want):
        raise ExerciseError(f"{name}: expected one answer per GET ({len(want)}), got {len(out)}")
    if out == want:
        return passed(name)
    hint = ""
    if out == _first_write_answers(tokens, SET, GET):
        hint = " That is the *first* value written; a later SET overwrites it."
    elif out == _copied_answers(tokens, GET):
        hint = (" You copied the token after `GET x`: here that slot is blanked (0); in the task's inputs it is"
                " the answer itself, teacher-forced. Find the answer in the SET triples.")
    raise ExerciseError(f"{name}: expected {want}, got {out} (seed {seed}).{hint}")


@checker()
def check_forgetting_readout(fn) -> None:
    """Check ``fn(keys [T, r], values [T, P], query [r], decay, eps) -> [P]``."""
    name = "forgetting_readout"
    for decay in (0.7, 1.0):
        g, seed = fresh_generator()
        T, r, P, eps = 9, 4, 3, 0.2
        keys = torch.randn(T, r, generator=g, dtype=torch.float64)
        values = torch.randn(T, P, generator=g, dtype=torch.float64)
        q = torch.randn(r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, call_student(name, fn, keys, values, q, decay, eps), (P,), "[P]")
        want = _forgetting_readout_solution(keys, values, q, decay, eps)
        if close(out, want):
            continue
        hint = ""
        if close(out, _forgetting_readout_solution(keys, values, q, 1.0, eps)):
            hint = " The decay has no effect in your answer: weight token t by decay^(T-1-t)."
        elif close(out, _forgetting_readout_solution(keys.flip(0), values.flip(0), q, decay, eps)):
            hint = " The weights run the wrong way: the *newest* token (t = T-1) has weight 1, older ones less."
        elif close(out, _forgetting_readout_solution(keys, values, q, decay, eps * decay ** T)):
            hint = " Only the data terms decay; keep eps * I as it is."
        raise ExerciseError(f"{name}: wrong values for decay={decay} (seed {seed}): "
                            f"max abs error {(out - want).abs().max():.3g}.{hint}")
    return passed(name)
