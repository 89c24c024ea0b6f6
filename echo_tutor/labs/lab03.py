"""Lab 03 (the memory cliff): exercises, checkers and solutions.

1. ``answer_accuracy(logits [B, T, V], labels [B, T]) -> float``: accuracy at answer positions only
   (labels != -100), the way every recall result of this project is counted.
2. ``gap_example(keys [n], values [n], distractors [G], order [n]) -> (inputs [4n+G], labels [4n+G])``:
   one MQAR-gap example in the lab-scale layout, ``[k1 v1 ... kn vn][distractors][k_o1 0 k_o2 0 ...]``
   (values hidden after the queries), label = the bound value at each query key.
3. ``elimination_accuracy(n) -> list[float]`` (n entries): the expected accuracy, query by query, of a model
   that knows *which* values were bound but not to which key, in Zoology's layout where each query's value
   is shown after it: it guesses uniformly among the values not yet shown.
"""

from __future__ import annotations

import torch

from ..tasks import IGNORE
from . import ExerciseError, call_student, checker, fresh_generator, passed

__all__ = ["_answer_accuracy_solution", "_gap_example_solution", "_elimination_accuracy_solution", "check_answer_accuracy",
           "check_gap_example", "check_elimination_accuracy"]


def _answer_accuracy_solution(logits: torch.Tensor, labels: torch.Tensor) -> float:
    mask = labels != IGNORE
    return (logits.argmax(-1)[mask] == labels[mask]).float().mean().item()


def _gap_example_solution(keys, values, distractors, order):
    n = keys.shape[0]
    kv = torch.stack([keys, values], dim=1).reshape(-1)  # k1 v1 k2 v2 ...
    qa = torch.stack([keys[order], torch.zeros_like(keys)], dim=1).reshape(-1)  # k_o1 0 k_o2 0 ...
    inputs = torch.cat([kv, distractors, qa])
    labels = torch.full_like(inputs, IGNORE)
    q0 = 2 * n + distractors.shape[0]
    labels[q0::2] = values[order]  # predict the value at the query key
    return inputs, labels


@checker(forbid=("answer_accuracy", "evaluate", "recall_breakdown"))
def check_answer_accuracy(fn) -> None:
    """Check ``fn(logits [B, T, V], labels [B, T]) -> float``."""
    name = "answer_accuracy"
    g, seed = fresh_generator()
    B, T, V = 4, 20, 11
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.full((B, T), IGNORE)
    pos = torch.rand(B, T, generator=g) < 0.3
    pos[:, 0] = True
    pred = logits.argmax(-1)
    labels[pos] = torch.where(torch.rand(int(pos.sum()), generator=g) < 0.6, pred[pos], (pred[pos] + 1) % V)
    out = call_student(name, fn, logits, labels)
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            raise ExerciseError(f"{name}: return one number (a float), got a tensor of shape {tuple(out.shape)}")
        out = out.item()
    if not isinstance(out, (float, int)):
        raise ExerciseError(f"{name}: return a float, got {type(out).__name__}")
    want = _answer_accuracy_solution(logits, labels)
    if abs(out - want) < 1e-6:
        return passed(name)
    everywhere = (pred == labels).float().mean().item()
    hint = ""
    if abs(out - everywhere) < 1e-6:
        hint = " You averaged over every position: count only where labels != -100."
    raise ExerciseError(f"{name}: got {out:.4f}, expected {want:.4f} (seed {seed}).{hint}")


@checker(forbid=("mqar_gap", "make_task", "lab_task", "Task"))
def check_gap_example(fn) -> None:
    """Check ``fn(keys, values, distractors, order) -> (inputs, labels)``."""
    name = "gap_example"
    g, seed = fresh_generator()
    n, G = 5, 7
    keys = torch.randperm(30, generator=g)[:n] + 1
    values = torch.randint(32, 64, (n,), generator=g)
    distractors = torch.randint(1, 64, (G,), generator=g)
    order = torch.randperm(n, generator=g)
    out = call_student(name, fn, keys, values, distractors, order)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ExerciseError(f"{name}: return a pair (inputs, labels)")
    inputs, labels = out
    L = 4 * n + G
    for what, t in (("inputs", inputs), ("labels", labels)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (L,):
            raise ExerciseError(f"{name}: {what} should be a tensor of shape [4n + G] = ({L},), "
                                f"got {getattr(t, 'shape', type(t).__name__)}")
    want_in, want_lab = _gap_example_solution(keys, values, distractors, order)
    if not torch.equal(inputs.long(), want_in):
        bad = int((inputs.long() != want_in).nonzero()[0])
        part = "the key/value block" if bad < 2 * n else ("the distractors" if bad < 2 * n + G else "the queries")
        hint = ""
        q0 = 2 * n + G
        if bad >= q0 and torch.equal(inputs[q0 + 1::2].long(), values[order]):
            hint = (" You put each query's value after it (Zoology's layout). Here the value is hidden: "
                    "put the pad token 0 after each query, so nothing in the query region gives an answer away.")
        raise ExerciseError(f"{name}: inputs differ first at position {bad} ({part}); expected {want_in.tolist()}, "
                            f"got {inputs.tolist()} (seed {seed}).{hint}")
    if torch.equal(labels.long(), want_lab):
        return passed(name)
    shifted = torch.full_like(want_lab, IGNORE)
    shifted[1:] = want_lab[:-1]
    hint = ""
    if torch.equal(labels.long(), shifted):
        hint = (" Your labels sit on the value tokens. The label at position t is what the model must predict "
                "*next*, so the value goes at the query key's position.")
    elif (labels != IGNORE).sum() != n:
        hint = f" There should be exactly n = {n} answer positions (one per query); the rest -100."
    raise ExerciseError(f"{name}: wrong labels: expected {want_lab.tolist()}, got {labels.tolist()} (seed {seed}).{hint}")


def _elimination_accuracy_solution(n: int) -> list[float]:
    return [1.0 / (n - i) for i in range(n)]  # query i: n - i values not yet shown


@checker()
def check_elimination_accuracy(fn) -> None:
    """Check ``fn(n) -> list of n expected accuracies`` for several fresh ``n``."""
    name = "elimination_accuracy"
    g, seed = fresh_generator()
    for n in [1, 2] + torch.randint(3, 40, (3,), generator=g).tolist():
        out = call_student(name, fn, n)
        if isinstance(out, torch.Tensor):
            out = out.tolist()
        if not isinstance(out, (list, tuple)) or len(out) != n:
            raise ExerciseError(f"{name}({n}): return a list of n = {n} numbers (one per query), "
                                f"got {type(out).__name__} of length {len(out) if hasattr(out, '__len__') else '?'}")
        want = _elimination_accuracy_solution(n)
        if all(abs(float(a) - b) < 1e-9 for a, b in zip(out, want)):
            continue
        hint = ""
        if all(abs(float(a) - 1.0 / n) < 1e-9 for a in out):
            hint = " That is guessing among all n bound values at every query: the values already shown can be ruled out."
        elif all(abs(float(a) - b) < 1e-9 for a, b in zip(out, reversed(want))):
            hint = " Reversed: the first query has the most candidates left."
        elif all(abs(float(a) - 1.0 / (n - i + 1)) < 1e-9 for i, a in enumerate(out)):
            hint = " Off by one: before query i (0-based), i values have been shown, so n - i remain."
        raise ExerciseError(f"{name}({n}): expected {[round(w, 4) for w in want]}, got "
                            f"{[round(float(a), 4) for a in out]} (seed {seed}).{hint}")
    return passed(name)
