"""Lab 05 (transfer tasks): exercises, checkers and solutions.

1. ``tool_trace_answers(tokens [L], SET, GET) -> list[int]``: the answer of every ``GET x`` in a tool
   trace (``SET x v`` and ``GET x ?`` triples): the value of x's latest ``SET`` *before that GET*. The
   checker blanks the third token of every ``GET`` triple (to ``0``): in the task's inputs it is the answer
   itself, teacher-forced, and copying it would pass without any logic. It tries the task's own traces
   (every SET before every GET) and traces that interleave them.
2. ``rising_gate(n, eps, share) -> tensor [n] | None`` (a design exercise): write gates ``beta_1..beta_n`` in
   (0, 1] for ``n`` writes of one variable such that, after *every* write ``j``, the newest value's weight
   ``beta_j / (eps + beta_1 + ... + beta_j)`` in SKA's ridge readout is at least ``share``; ``None`` when no
   such gate exists. The smallest feasible gates grow geometrically, so a gate in (0, 1] can rank only
   ``1 + floor(log(1 / (c eps)) / log(1 + c))`` writes, ``c = share / (1 - share)``.
3. ``forgetting_readout(keys [..., T, r], values [..., T, P], query [..., r], decay, eps) -> [..., P]``: the
   ridge readout that minimises ``sum_t decay^(T-1-t) ||v_t - B k_t||^2 + eps ||B||^2``, i.e. on
   exponentially forgotten statistics ``G = eps I + sum_t decay^(T-1-t) k_t k_t^T`` and
   ``C = sum_t decay^(T-1-t) v_t k_t^T``, read out as ``C G^-1 q``. ``decay = 1`` is SKA's never-forgetting
   ridge (K = 0). Any number of leading batch dims.
"""

from __future__ import annotations

import math

import torch

from ..tasks import tool_trace
from . import (
    batch_dims_hint,
    call_student,
    checker,
    close,
    ExerciseError,
    expect_tensor,
    fresh_generator,
    leading_dims,
    NotAttempted,
    passed,
)

__all__ = ["_tool_trace_answers_solution", "_rising_gate_solution", "_forgetting_readout_solution",
           "check_tool_trace_answers", "check_rising_gate", "check_forgetting_readout", "_max_ranked_writes_solution"]


# ------------------------------------------------------------------------------------- tool_trace_answers
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


def _first_write_answers(tokens, SET: int, GET: int) -> list[int]:
    """The usual mistake: answer every GET with the variable's *first* value."""
    first: dict[int, int] = {}
    out = []
    toks = [int(t) for t in tokens]
    for i in range(0, len(toks) - 2, 3):
        if toks[i] == SET:
            first.setdefault(toks[i + 1], toks[i + 2])
        elif toks[i] == GET:
            out.append(first.get(toks[i + 1], -1))
    return out


def _last_overall_answers(tokens, SET: int, GET: int) -> list[int]:
    """Answer every GET with the variable's last SET in the whole trace (a later SET leaks into an earlier GET)."""
    toks = [int(t) for t in tokens]
    last = {toks[i + 1]: toks[i + 2] for i in range(0, len(toks) - 2, 3) if toks[i] == SET}
    return [last.get(toks[i + 1], -1) for i in range(0, len(toks) - 2, 3) if toks[i] == GET]


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


def _interleaved_trace(g: torch.Generator, V: int, SET: int, GET: int, n_vars: int = 4, n_ops: int = 14) -> torch.Tensor:
    """A trace that mixes SETs and GETs, with a GET of a variable that is SET again later (answers differ from
    'last SET in the whole trace') and a variable overwritten before a GET (answers differ from 'first SET')."""
    names = torch.randperm(V - 3, generator=g)[:n_vars] + 1                 # variable ids, never 0, SET or GET
    vals = lambda: int(torch.randint(1, V - 3, (1,), generator=g))           # noqa: E731
    ops = [(SET, int(x), vals()) for x in names]                            # every variable once
    x0 = int(names[0])
    ops += [(GET, x0, 0), (SET, x0, vals()), (GET, x0, 0), (SET, x0, vals())]  # read, overwrite, read, overwrite
    for _ in range(n_ops - len(ops)):
        x = int(names[int(torch.randint(0, n_vars, (1,), generator=g))])
        ops.append((SET, x, vals()) if bool(torch.rand(1, generator=g) < 0.5) else (GET, x, 0))
    return torch.tensor([t for op in ops for t in op])


def _trace_case(name, fn, tokens, SET, GET, what, seed) -> None:
    want = _tool_trace_answers_solution(tokens, SET, GET)
    out = call_student(name, fn, tokens.clone(), SET, GET)
    try:
        out = [int(v) for v in out]
    except Exception:
        raise ExerciseError(f"{name}: return a list of ints (one per GET), got {type(out).__name__}") from None
    if len(out) != len(want):
        raise ExerciseError(f"{name}: expected one answer per GET ({len(want)}), got {len(out)} ({what}, seed {seed})")
    if out == want:
        return
    hint = ""
    if out == _first_write_answers(tokens, SET, GET):
        hint = " That is the *first* value written; a later SET overwrites it."
    elif out == _last_overall_answers(tokens, SET, GET):
        hint = (" That is the variable's last SET in the whole trace: a GET reads the latest SET *before* it, not one"
                " that comes after.")
    elif out == _copied_answers(tokens, GET):
        hint = (" You copied the token after `GET x`: here that slot is blanked (0); in the task's inputs it is"
                " the answer itself, teacher-forced. Find the answer in the SET triples.")
    raise ExerciseError(f"{name}: {what}: expected {want}, got {out} (seed {seed}).{hint}")


@checker(forbid=("tool_trace", "writes_at_answers", "control_tokens", "make_task"))
def check_tool_trace_answers(fn) -> None:
    """Check ``fn(tokens, SET, GET) -> list[int]`` on fresh traces where overwrites change the answer and the
    answer slot of every ``GET`` triple is blanked to 0: the task's own layout (every SET, then every GET) and
    traces that interleave SETs and GETs."""

    name = "tool_trace_answers"
    g, seed = fresh_generator()
    V = 32
    SET, GET = V - 1, V - 2
    for attempt in range(100):  # a trace on which "first write wins" gives a different answer
        tokens = _blank_gets(tool_trace(V, 3, 12, 5, 1, seed=seed + attempt)[0][0], GET)
        if _first_write_answers(tokens, SET, GET) != _tool_trace_answers_solution(tokens, SET, GET):
            break
    _trace_case(name, fn, tokens, SET, GET, "a trace of the task (every SET, then every GET)", seed)
    for k in range(2):
        _trace_case(name, fn, _interleaved_trace(g, V, SET, GET), SET, GET,
                    f"interleaved trace {k + 1} (SETs and GETs mixed)", seed)
    return passed(name)


# --------------------------------------------------------------------------------------------- rising_gate
def _max_ranked_writes_solution(eps: float, share: float) -> int:
    """How many writes a causal gate in (0, 1] can rank so that after each the newest value has weight >= share.

    Write j needs ``beta_j >= c (eps + beta_1 + ... + beta_{j-1})`` with ``c = share / (1 - share)``; the
    smallest choices give ``eps + S_j = eps (1 + c)^j`` and ``beta_j = c eps (1 + c)^(j-1)``, so the largest
    n with ``beta_n <= 1`` is ``1 + floor(log(1 / (c eps)) / log(1 + c))`` (0 when even ``beta_1 = 1`` is too
    small)."""
    c = share / (1.0 - share)
    if c * eps > 1.0:
        return 0
    return 1 + math.floor(math.log(1.0 / (c * eps)) / math.log1p(c) + 1e-12)


def _rising_gate_solution(n: int, eps: float, share: float):
    c = share / (1.0 - share)
    beta, total = [], 0.0
    for _ in range(n):
        b = c * (eps + total)            # the smallest gate that gives the newest value weight `share`
        if b > 1.0 + 1e-12:
            return None
        b = min(b, 1.0)
        beta.append(b)
        total += b
    return torch.tensor(beta, dtype=torch.float64)


def _newest_share(beta: torch.Tensor, eps: float) -> torch.Tensor:
    """After each write j: beta_j / (eps + beta_1 + ... + beta_j)."""
    return beta / (eps + beta.cumsum(0))


@checker()
def check_rising_gate(fn) -> None:
    """Check ``fn(n, eps, share) -> tensor [n] | None``: a gate in (0, 1] that keeps the newest write's weight
    at least ``share`` after every write, or None exactly when no such gate exists."""
    name = "rising_gate"
    g, seed = fresh_generator()
    eps = float(10 ** (-2 - 3 * torch.rand(1, generator=g).item()))           # 1e-5 .. 1e-2
    share = 0.5 + 0.45 * torch.rand(1, generator=g).item()
    n_max = _max_ranked_writes_solution(eps, share)
    # fixed cases first (SKA's eps: 3 writes at share 0.9, 10 at 0.5; eps = 0.5: not even one), then fresh ones
    cases = [(3, 1e-3, 0.9), (4, 1e-3, 0.9), (10, 1e-3, 0.5), (11, 1e-3, 0.5), (1, 0.5, 0.9),
             (n_max, eps, share), (n_max + 1, eps, share), (1, eps, share), (max(1, n_max - 2), eps, share)]
    for n, e, sh in cases:
        n = max(1, n)
        feasible = n <= _max_ranked_writes_solution(e, sh)
        where = f"n={n}, eps={e:.3g}, share={sh:.3f}"
        out = call_student(name, fn, n, e, sh)
        if out is None:
            if feasible:
                raise ExerciseError(f"{name}: returned None for {where} (seed {seed}), but a gate in (0, 1] exists: "
                                    "after write j the gate only has to outweigh eps plus the earlier gates, by the "
                                    "factor share / (1 - share). Take the smallest gate each write allows.")
            continue
        beta = expect_tensor(name, torch.as_tensor(out).double() if isinstance(out, (list, tuple)) else out, (n,),
                             "[n] gates").double()
        if not feasible:
            big = beta.max().item()
            why = (f" Your largest gate is {big:.3g}: a sigmoid gate cannot exceed 1." if big > 1 + 1e-9 else
                   " Check your gate against the condition after every write.")
            raise ExerciseError(f"{name}: for {where} no gate in (0, 1] exists, so return None; you returned a gate "
                                f"(seed {seed}).{why}")
        if bool((beta <= 0).any()) or bool((beta > 1 + 1e-9).any()):
            raise ExerciseError(f"{name}: gates must be in (0, 1] (a sigmoid's range), got min {beta.min():.3g}, "
                                f"max {beta.max():.3g} for {where} (seed {seed})")
        got = _newest_share(beta, e)
        bad = (got < sh * (1 - 1e-9)).nonzero().flatten()
        if len(bad):
            j = int(bad[0])
            hint = ""
            if bool((_newest_share(beta, 0.0) >= sh * (1 - 1e-9)).all()):
                hint = (" Your gates would do it with eps = 0: eps stays in the denominator, eps + beta_1 + ... + beta_j"
                        " (after the first write the weight is beta_1 / (eps + beta_1)): eps counts.")
            elif bool((got[-1] >= sh * (1 - 1e-9))):
                hint = (" The gate is causal: it cannot know how many writes will follow, so the readout after every "
                        "write, not only the last, must favour the newest value.")
            raise ExerciseError(f"{name}: for {where} (seed {seed}), after write {j + 1} the newest value has weight "
                                f"{got[j]:.4f} < share {sh:.3f} (your gates {[round(b, 6) for b in beta.tolist()]}).{hint}")
    return passed(name)


# -------------------------------------------------------------------------------------- forgetting_readout
def _weighted_readout_solution(keys, values, query, wG, wC, eps: float):
    """C G^-1 q with G = eps I + sum_t wG_t k_t k_t^T and C = sum_t wC_t v_t k_t^T (wG, wC [T])."""
    r = keys.shape[-1]
    G = eps * torch.eye(r, dtype=keys.dtype) + (wG[:, None] * keys).mT @ keys  # [..., r, r]
    C = (wC[:, None] * values).mT @ keys                                      # [..., P, r]
    return (C @ torch.linalg.solve(G, query[..., None]))[..., 0]              # [..., P]


def _decay_weights(T: int, decay: float, dtype) -> torch.Tensor:
    return decay ** torch.arange(T - 1, -1, -1, dtype=dtype)                  # [T]: the newest token has weight 1


def _forgetting_readout_solution(keys, values, query, decay: float, eps: float):
    w = _decay_weights(keys.shape[-2], decay, keys.dtype)
    return _weighted_readout_solution(keys, values, query, w, w, eps)


def _readout_hint(keys, values, q, decay, eps, out) -> str:
    T = keys.shape[-2]
    w, one = _decay_weights(T, decay, keys.dtype), torch.ones(T, dtype=keys.dtype)
    if close(out, _weighted_readout_solution(keys, values, q, one, one, eps)):
        return " The decay has no effect in your answer: weight token t by decay^(T-1-t)."
    if close(out, _weighted_readout_solution(keys, values, q, w.flip(0), w.flip(0), eps)):
        return " The weights run the wrong way: the *newest* token (t = T-1) has weight 1, older ones less."
    if any(close(out, _weighted_readout_solution(keys, values, q, w, w, eps * decay ** n)) for n in (T - 1, T)):
        return " Only the data terms decay: the penalty eps ||B||^2 is not weighted, so keep eps * I as it is."
    if close(out, _weighted_readout_solution(keys, values, q, w, one, eps)) or close(
            out, _weighted_readout_solution(keys, values, q, one, w, eps)):
        return " Weight both statistics, G and C, by the same decay^(T-1-t) (each token's squared error is weighted)."
    if close(out, _weighted_readout_solution(keys, values, q, w.sqrt(), w.sqrt(), eps)):
        return " The weight multiplies the squared error, so G and C get decay^(T-1-t), not its square root."
    return ""


@checker()
def check_forgetting_readout(fn) -> None:
    """Check ``fn(keys [..., T, r], values [..., T, P], query [..., r], decay, eps) -> [..., P]`` with zero, one
    and two leading dims, at ``decay = 0.7`` (and ``1.0`` unbatched)."""
    name = "forgetting_readout"
    g, seed = fresh_generator()
    T, r, P, eps = 9, 4, 3, 0.2
    ok: list[tuple[int, ...]] = []
    for lead, decay in [((), 1.0)] + [(lead, 0.7) for lead in leading_dims()]:
        keys = torch.randn(*lead, T, r, generator=g, dtype=torch.float64)
        values = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
        q = torch.randn(*lead, r, generator=g, dtype=torch.float64)
        where = f"keys {tuple(keys.shape)}, decay={decay}"
        try:
            out = expect_tensor(name, call_student(name, fn, keys, values, q, decay, eps), (*lead, P), "[..., P]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, [o for o in ok if o != lead])}") from None
        want = _forgetting_readout_solution(keys, values, q, decay, eps)
        if close(out, want):
            if lead not in ok:
                ok.append(lead)
            continue
        hint = batch_dims_hint(lead, [o for o in ok if o != lead]) or _readout_hint(keys, values, q, decay, eps, out)
        raise ExerciseError(f"{name}: wrong values with {where} (seed {seed}): max abs error "
                            f"{(out - want).abs().max():.3g}.{hint}")
    return passed(name)
