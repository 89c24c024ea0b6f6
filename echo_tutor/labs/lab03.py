"""Lab 03 (the memory cliff): exercises, checkers and solutions.

1. ``gap_example(keys [..., n], values [..., n], distractors [..., G], order [..., n])
   -> (inputs [..., 4n+G], labels [..., 4n+G])``: MQAR-gap examples in the lab-scale layout,
   ``[k1 v1 ... kn vn][distractors][k_o1 0 k_o2 0 ...]`` (values hidden after the queries), label = the bound
   value at each query key; any number of leading batch dims (a batch of examples, as the task generator
   makes them).
2. ``elimination_accuracy(n) -> list[float]`` (n entries): the expected accuracy, query by query, of a model
   that knows *which* values were bound but not to which key, in Zoology's layout where each query's value
   is shown after it: it guesses uniformly among the values not yet shown.
3. ``cliff_gap(decay [..., L, H], g_ref, rho) -> [...] int64``: the gap at which a Mamba-2's memory of a
   binding has fallen to ``rho`` times what it kept at the gap ``g_ref``, from the heads' per-token decay
   factors ``exp(A dt)``: the retention of head ``h`` after ``g`` tokens is the product of its first ``g``
   factors, the model's is its best head's, ``R*(g)``; the answer is the smallest ``g`` with
   ``R*(g) <= rho R*(g_ref)``, or -1 if there is none within the ``L`` tokens. The lab predicts
   ``ssm-recall``'s cliff with it and then measures the cliff.
"""

from __future__ import annotations

import math

import torch

from ..tasks import IGNORE
from . import (ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, fresh_generator, leading_dims,
               passed)
from .checking import right_one_by_one

__all__ = ["_gap_example_solution", "_elimination_accuracy_solution", "_cliff_gap_solution", "check_gap_example",
           "check_elimination_accuracy", "check_cliff_gap"]


# ------------------------------------------------------------------------------------------ gap_example
def _gap_example_solution(keys, values, distractors, order):
    n = keys.shape[-1]
    kv = torch.stack([keys, values], dim=-1).flatten(-2)  # [..., 2n]: k1 v1 k2 v2 ...
    asked = keys.gather(-1, order)  # [..., n]: the keys in the order they are asked
    qa = torch.stack([asked, torch.zeros_like(asked)], dim=-1).flatten(-2)  # [..., 2n]: k_o1 0 k_o2 0 ...
    inputs = torch.cat([kv, distractors, qa], dim=-1)  # [..., 4n + G]
    labels = torch.full_like(inputs, IGNORE)
    q0 = 2 * n + distractors.shape[-1]
    labels[..., q0::2] = values.gather(-1, order)  # predict the value at the query key
    return inputs, labels


def _gap_hint(inputs, labels, want_in, want_lab, keys, values, order, n, G) -> str:
    q0 = 2 * n + G
    if inputs.shape == want_in.shape and not torch.equal(inputs.long(), want_in):
        if torch.equal(inputs[..., q0 + 1::2].long(), values.gather(-1, order)):
            return (" You put each query's value after it (Zoology's layout). Here the value is hidden: put the pad "
                    "token 0 after each query, so nothing in the query region gives an answer away.")
        return ""
    shifted = torch.full_like(want_lab, IGNORE)
    shifted[..., 1:] = want_lab[..., :-1]
    if torch.equal(labels.long(), shifted):
        return (" Your labels sit on the value tokens. The label at position t is what the model must predict "
                "*next*, so the value goes at the query key's position.")
    if bool(((labels != IGNORE).sum(-1) != n).any()):
        return f" There should be exactly n = {n} answer positions per example (one per query); the rest -100."
    return ""


@checker(forbid=("mqar_gap", "make_task", "lab_task", "Task"))
def check_gap_example(fn) -> None:
    """Check ``fn(keys [..., n], values [..., n], distractors [..., G], order [..., n]) -> (inputs, labels)``,
    both ``[..., 4n + G]``, with zero, one and two leading dims, fresh ``n`` and ``G``, and an empty gap."""
    name = "gap_example"
    g, seed = fresh_generator()
    cases = [(lead, int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g)))
             for lead in leading_dims()] + [((4,), 3, 0)]  # the last: no distractors at all (gap 0)
    ok: list[tuple[int, ...]] = []
    for lead, n, G in cases:
        keys = torch.stack([torch.randperm(30, generator=g)[:n] for _ in range(math.prod(lead))]).reshape(*lead, n) + 1
        values = torch.randint(32, 64, (*lead, n), generator=g)
        distractors = torch.randint(32, 64, (*lead, G), generator=g)
        order = torch.stack([torch.randperm(n, generator=g) for _ in range(math.prod(lead))]).reshape(*lead, n)
        where = f"n = {n}, G = {G}, leading dims {lead}"
        try:
            out = call_student(name, fn, keys, values, distractors, order)
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise ExerciseError(f"{name}: return a pair (inputs, labels)")
            inputs, labels = out
            L = 4 * n + G
            for what, t in (("inputs", inputs), ("labels", labels)):
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != (*lead, L):
                    raise ExerciseError(f"{name}: {what} should be a tensor of shape [..., 4n + G] = {(*lead, L)}, "
                                        f"got {tuple(getattr(t, 'shape', ())) or type(t).__name__}")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, ok)}") from None
        want_in, want_lab = _gap_example_solution(keys, values, distractors, order)
        if torch.equal(inputs.long(), want_in) and torch.equal(labels.long(), want_lab):
            ok.append(lead)
            continue
        def right(o, idx):
            return (isinstance(o, (tuple, list)) and len(o) == 2 and all(isinstance(t, torch.Tensor) for t in o)
                    and torch.equal(o[0].long(), want_in[idx]) and torch.equal(o[1].long(), want_lab[idx]))
        batching = bool(ok) and right_one_by_one(fn, lead, (keys, values, distractors, order), right)
        hint = (batch_dims_hint(lead, ok) if batching else
                _gap_hint(inputs, labels, want_in, want_lab, keys, values, order, n, G))
        if not torch.equal(inputs.long(), want_in):
            flat_in, flat_want = inputs.long().reshape(-1, L), want_in.reshape(-1, L)
            row = int((flat_in != flat_want).any(-1).nonzero()[0])
            bad = int((flat_in[row] != flat_want[row]).nonzero()[0])
            part = "the key/value block" if bad < 2 * n else ("the distractors" if bad < 2 * n + G else "the queries")
            raise ExerciseError(f"{name}: inputs differ first at position {bad} ({part}) with {where}; expected "
                                f"{flat_want[row].tolist()}, got {flat_in[row].tolist()} (seed {seed}).{hint}")
        flat_lab, flat_want = labels.long().reshape(-1, L), want_lab.reshape(-1, L)
        row = int((flat_lab != flat_want).any(-1).nonzero()[0])
        raise ExerciseError(f"{name}: wrong labels with {where}: expected {flat_want[row].tolist()}, got "
                            f"{flat_lab[row].tolist()} (seed {seed}).{hint}")
    return passed(name)


# --------------------------------------------------------------------------------- elimination_accuracy
def _elimination_accuracy_solution(n: int) -> list[float]:
    return [1.0 / (n - i) for i in range(n)]  # query i: n - i values not yet shown


def _as_numbers(name: str, n: int, out) -> list[float]:
    if isinstance(out, torch.Tensor):
        out = out.tolist()
    elif hasattr(out, "tolist") and not isinstance(out, (list, tuple)):  # a numpy array
        out = out.tolist()
    if not isinstance(out, (list, tuple)) or len(out) != n:
        raise ExerciseError(f"{name}({n}): return a list of n = {n} numbers (one per query), "
                            f"got {type(out).__name__} of length {len(out) if hasattr(out, '__len__') else '?'}")
    try:
        return [float(a) for a in out]
    except (TypeError, ValueError):
        raise ExerciseError(f"{name}({n}): every entry should be a number, got {out!r}") from None


@checker()
def check_elimination_accuracy(fn) -> None:
    """Check ``fn(n) -> list of n expected accuracies`` for n = 1, 2, three fresh n and a large one."""
    name = "elimination_accuracy"
    g, seed = fresh_generator()
    for n in [1, 2] + torch.randint(3, 40, (3,), generator=g).tolist() + [int(torch.randint(90, 200, (1,), generator=g))]:
        out = _as_numbers(name, n, call_student(name, fn, n))
        want = _elimination_accuracy_solution(n)
        if all(abs(a - b) < 1e-9 for a, b in zip(out, want)):
            continue
        hint = ""
        if all(abs(a - 1.0 / n) < 1e-9 for a in out):
            hint = " That is guessing among all n bound values at every query: the values already shown can be ruled out."
        elif all(abs(a - b) < 1e-9 for a, b in zip(out, reversed(want))):
            hint = " Reversed: the first query has the most candidates left."
        elif all(abs(a - 1.0 / (n - i + 1)) < 1e-9 for i, a in enumerate(out)):
            hint = " Off by one: before query i (0-based), i values have been shown, so n - i remain."
        elif all(abs(a - 1.0 / 64) < 1e-9 for a in out):
            hint = " That is a blind guess among all 64 values: the model knows which n values were bound."
        raise ExerciseError(f"{name}({n}): expected {[round(w, 4) for w in want][:12]}, got "
                            f"{[round(a, 4) for a in out][:12]} (seed {seed}).{hint}")
    return passed(name)


# -------------------------------------------------------------------------------------------- cliff_gap
def _cliff_gap_solution(decay, g_ref, rho):
    logs = decay.double().clamp_min(1e-300).log()  # [..., L, H]: log exp(A dt), in float64 (products underflow)
    log_r = torch.cat([torch.zeros_like(logs[..., :1, :]), logs.cumsum(-2)], dim=-2)  # [..., L+1, H]: log R_h(g)
    best = log_r.amax(-1)  # [..., L+1]: log R*(g), the best head's retention after g tokens
    below = best <= best[..., g_ref, None] + math.log(rho)  # R*(g) <= rho R*(g_ref)
    first = below.to(torch.int64).argmax(-1)  # the first g where it holds
    return torch.where(below.any(-1), first, torch.full_like(first, -1))


def _cliff_variants(decay, g_ref, rho) -> list[tuple[str, torch.Tensor]]:
    """The typical wrong answers on the checker's input, each with the hint that names it."""
    logs = decay.double().log()
    log_r = torch.cat([torch.zeros_like(logs[..., :1, :]), logs.cumsum(-2)], dim=-2)  # [..., L+1, H]

    def first_below(curve, level):
        below = curve <= level
        first = below.to(torch.int64).argmax(-1)
        return torch.where(below.any(-1), first, torch.full_like(first, -1))

    best = log_r.amax(-1)
    mean = log_r.exp().mean(-1).log()
    incl = log_r[..., 1:, :].amax(-1)  # R(g) taken as g + 1 factors
    excl = torch.cat([torch.zeros_like(best[..., :1]), best[..., :-1]], -1)  # R(g) taken as g - 1 factors
    off_by_one = (" Off by one: after a gap of g tokens a write has been multiplied by g factors (R(0) = 1, R(1) = "
                  "the first factor).")
    return [
        (" R*(g) is the *best* head's retention (the largest over heads, at each g): one head that still holds the "
         "binding is enough. Yours looks like the mean over heads.", first_below(mean, mean[..., g_ref, None] + math.log(rho))),
        (" Divide the best head's retention at g by the best head's at g_ref, R*(g) / R*(g_ref); yours compares each "
         "head with itself before taking the best.", first_below((log_r - log_r[..., g_ref, None, :]).amax(-1), math.log(rho))),
        (" The threshold is relative: rho times what the model kept at g_ref, not rho itself.", first_below(best, math.log(rho))),
        (off_by_one, first_below(incl, incl[..., g_ref, None] + math.log(rho))),
        (off_by_one, first_below(excl, excl[..., g_ref, None] + math.log(rho))),
    ]


def _cliff_inputs(g: torch.Generator, lead: tuple[int, ...], L: int, H: int = 4) -> torch.Tensor:
    """Per-token decay factors [..., L, H] in float32 whose best head changes along the way: each head decays at
    one rate (0.90-0.999 per token) up to a random position and at another after it, with per-token jitter
    (the selective part)."""
    r1 = 0.90 + 0.099 * torch.rand(*lead, 1, H, generator=g)
    r2 = 0.90 + 0.099 * torch.rand(*lead, 1, H, generator=g)
    switch = torch.randint(L // 4, 3 * L // 4, (*lead, 1, H), generator=g)
    rate = torch.where(torch.arange(L)[:, None] < switch, r1, r2)  # [..., L, H]
    jitter = torch.exp(-0.01 * torch.rand(*lead, L, H, generator=g))
    return (rate * jitter).float()


def _pick_rho(decay, g_ref, g, tries: int = 200) -> float:
    """A rho whose crossing is unambiguous in every example: log rho sits at least 1e-3 from the log-retention
    ratio at every g (float32 rounding cannot move the answer)."""
    logs = decay.double().log()
    log_r = torch.cat([torch.zeros_like(logs[..., :1, :]), logs.cumsum(-2)], dim=-2)
    ratio = (log_r.amax(-1) - log_r.amax(-1)[..., g_ref, None]).reshape(-1, log_r.shape[-2])  # [E, L+1]
    lo, hi = float(ratio[:, -1].max()), float(ratio[:, g_ref + 10].min())  # crossings after g_ref + 10, before L
    for _ in range(tries):
        lr = lo + (hi - lo) * (0.15 + 0.7 * float(torch.rand(1, generator=g)))
        if bool(((ratio - lr).abs() > 1e-3).all()):
            return math.exp(lr)
    raise RuntimeError("no unambiguous rho found (checker bug)")


@checker(forbid=("retention_after", "hold_decay", "ssm_decay", "horizon"))
def check_cliff_gap(fn) -> None:
    """Check ``fn(decay [..., L, H], g_ref, rho) -> [...] int`` on float32 decays whose best head changes, with
    zero, one and two leading dims and the lab's 16 prompts; then a retention that never falls far enough
    (answer -1), and fast decays whose product underflows float32."""
    name = "cliff_gap"
    g, seed = fresh_generator()
    ok: list[tuple[int, ...]] = []
    cases = []
    for lead in leading_dims((16,)):
        L = int(torch.randint(120, 220, (1,), generator=g))
        decay = _cliff_inputs(g, lead, L)
        g_ref = int(torch.randint(5, 30, (1,), generator=g))
        cases.append((lead, decay, g_ref, _pick_rho(decay, g_ref, g), "moderate decays"))
    slow = torch.full((3, 60, 4), 0.9995)  # after 60 tokens the best head keeps 0.97: never below 1e-3 of g_ref's
    cases.append(((3,), slow, 10, 1e-3, "a retention that never falls that far within the L tokens"))
    fast = (0.3 + 0.1 * torch.rand(200, 4, generator=g)).float()  # 0.3-0.4 per token: 0.4^150 underflows float32
    cases.append(((), fast, 150, _pick_rho(fast, 150, g), "fast decays (float32 products underflow)"))
    for lead, decay, g_ref, rho, what in cases:
        L = decay.shape[-2]
        where = f"decay {tuple(decay.shape)} ({what}), g_ref {g_ref}, rho {rho:.3g}"
        try:
            out = call_student(name, fn, decay.clone(), g_ref, rho)
            if isinstance(out, int) and lead == ():
                out = torch.tensor(out)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != lead:
                raise ExerciseError(f"{name}: return an integer tensor of shape [...] = {lead} (one gap per example), "
                                    f"got {tuple(getattr(out, 'shape', ())) if isinstance(out, torch.Tensor) else type(out).__name__}")
            if out.is_floating_point() and not bool((out == out.round()).all()):
                raise ExerciseError(f"{name}: a gap is a whole number of tokens, got {out}")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, ok)}") from None
        want = _cliff_gap_solution(decay, g_ref, rho)
        if torch.equal(out.long().cpu(), want):
            if lead not in ok:
                ok.append(lead)
            continue
        hint = ""
        if what == "moderate decays" and ok and right_one_by_one(fn, lead, (decay, g_ref, rho),
                                                            lambda o, idx: int(torch.as_tensor(o)) == int(want[idx])):
            hint = batch_dims_hint(lead, ok)
        if not hint and what.startswith("a retention that never"):
            hint = (" The retention never falls to rho times its value at g_ref within these L tokens: return -1 "
                    "for such an example (not L or L + 1, which would read as a gap).")
        if not hint and what.startswith("fast"):
            hint = (f" Right on the moderate decays, wrong here: the product of {g_ref} factors of 0.4 or less is "
                    "below float32's smallest number, so R*(g_ref) becomes 0 and every ratio 0/0. Add logarithms "
                    "instead of multiplying factors (log R(g) is a cumulative sum).")
        if not hint:
            hint = next((h for h, v in _cliff_variants(decay, g_ref, rho) if torch.equal(out.long().cpu(), v)), "")
        raise ExerciseError(f"{name}: wrong gaps with {where}: expected {want.flatten()[:8].tolist()}, got "
                            f"{out.long().flatten()[:8].tolist()} (first 8; seed {seed}).{hint}")
    return passed(name)
