"""Lab 06's checkers, tested as an adversary would: the solution passes; each typical wrong answer, including
versions right for one number of leading batch dims only, is refused with its message; a call into the
package (by name, alias, getattr or importlib) or into the lab's private solutions is refused."""

import importlib

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab06

pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`:UserWarning")  # ridge_2d_only is meant to misuse it


# ------------------------------------------------------------------------------------------- rope_rotate
def rope_any_dims(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


def rope_2d_only(x, cos, sin):
    """Right for x [T, D] only: slices dim 1."""
    h = x.shape[1] // 2
    return x * cos + torch.cat((-x[:, h:], x[:, :h]), 1) * sin


def rope_one_leading_dim(x, cos, sin):
    """Right for zero or one leading dim: `[:, :, h:]` once there is a batch dim."""
    if x.ndim == 2:
        return rope_2d_only(x, cos, sin)
    h = x.shape[2] // 2
    return x * cos + torch.cat((-x[:, :, h:], x[:, :, :h]), 2) * sin


def rope_tables_per_row(x, cos, sin):
    """Indexes the tables as if they were [T, D] always (cos[t] for t over x's dim -2)."""
    T = x.shape[-2]
    rows = [rope_any_dims(x[..., t, :], cos[t] if cos.ndim == 2 else cos[0, 0, t], sin[t] if sin.ndim == 2 else sin[0, 0, t])
            for t in range(T)]
    return torch.stack(rows, -2) if cos.ndim == 2 else torch.stack(rows, -2) * 1.5


def rope_via_alias(x, cos, sin):
    from echo_tutor.echokv.capture import apply_rope as rot

    return rot(x, cos, sin)


def rope_via_importlib(x, cos, sin):
    mod = importlib.import_module("echo_tutor.attention." + "rope")   # the package's one RoPE rotation
    return x * cos + getattr(mod, "rotate" + "_half")(x) * sin


def rope_via_rotate(x, cos, sin):
    return importlib.import_module("echo_tutor.attention.rope").rotate(x, cos, sin)


# ---------------------------------------------------------------------------------- ridge_with_intercept
def ridge_any_dims(X, Y, lam):
    mx, my = X.mean(-2, keepdim=True), Y.mean(-2, keepdim=True)
    Xc, Yc = X - mx, Y - my
    W = torch.linalg.solve(Xc.transpose(-1, -2) @ Xc + lam * torch.eye(X.shape[-1], dtype=X.dtype),
                           Xc.transpose(-1, -2) @ Yc)
    return W, (my - mx @ W).squeeze(-2)


def ridge_2d_only(X, Y, lam):
    """Right for X [N, a] only: mean(0) and `.T`."""
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    W = torch.linalg.solve(Xc.T @ Xc + lam * torch.eye(X.shape[1], dtype=X.dtype), Xc.T @ Yc)
    return W, my - mx @ W


def ridge_one_leading_dim(X, Y, lam):
    if X.ndim == 2:
        return ridge_2d_only(X, Y, lam)
    out = [ridge_2d_only(x, y, lam) for x, y in zip(X, Y)]
    return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])


def ridge_penalised_intercept(X, Y, lam):
    Z = torch.cat([X, torch.ones(*X.shape[:-1], 1, dtype=X.dtype)], -1)
    Wb = torch.linalg.solve(Z.mT @ Z + lam * torch.eye(Z.shape[-1], dtype=X.dtype), Z.mT @ Y)
    return Wb[..., :-1, :], Wb[..., -1, :]


def ridge_no_intercept(X, Y, lam):
    W = torch.linalg.solve(X.mT @ X + lam * torch.eye(X.shape[-1], dtype=X.dtype), X.mT @ Y)
    return W, torch.zeros(*Y.shape[:-2], Y.shape[-1], dtype=X.dtype)


def ridge_via_the_lab(X, Y, lam):
    mod = importlib.import_module("echo_tutor.labs.lab06")
    return getattr(mod, "_ridge_with_intercept" + "_solution")(X, Y, lam)


# ------------------------------------------------------------------------------------------- choose_kept
def choose_kept_student(r2, cost, budget):
    """A correct answer written independently: per-byte greedy on the best-single-source objective."""
    S = r2.shape[0]
    src = r2.clamp_min(0)
    best = torch.zeros(S, dtype=torch.float64)
    kept, left = [], float(budget)
    while True:
        base = best.clone()
        base[kept] = 1
        top, pick = None, None
        for c in range(S):
            if c in kept or cost[c] > left:
                continue
            q = torch.maximum(best, src[c])
            q[kept + [c]] = 1
            g = float(q.mean() - base.mean()) / float(cost[c])
            if top is None or g > top + 1e-9:
                top, pick = g, c
        if pick is None:
            return kept
        kept.append(pick)
        left -= float(cost[pick])
        best = torch.maximum(best, src[pick])


def variant(**kw):
    def wrong(r2, cost, budget):
        return lab06._greedy_kept_solution(r2, cost, budget, **kw)
    return wrong


def kept_sorted(r2, cost, budget):
    return sorted(lab06._choose_kept_solution(r2, cost, budget))


def ties_to_the_highest_id(r2, cost, budget):
    return [r2.shape[0] - 1 - s for s in lab06._choose_kept_solution(r2.flip(0, 1), cost.flip(0), budget)]


def over_budget(r2, cost, budget):
    out = lab06._choose_kept_solution(r2, cost, budget)
    rest = [s for s in range(r2.shape[0]) if s not in out]
    return out + rest[:1]


def choose_kept_via_slots(r2, cost, budget):
    mod = importlib.import_module("echo_tutor.echokv." + "slots")
    n_k, _ = getattr(mod, "kept" + "_counts")(len(cost), 0.5)
    return list(range(n_k))[:0]


def choose_kept_via_the_lab(r2, cost, budget):
    mod = importlib.import_module("echo_tutor.labs.lab06")
    return getattr(mod, "_greedy_kept" + "_solution")(r2, cost, budget)


def choose_kept_by_name(r2, cost, budget):
    from echo_tutor.echokv.slots import greedy_select

    return greedy_select(r2, int(budget // 32))


# ---------------------------------------------------------------------------------------- streaming_keep
def naive_streaming_keep(T, sinks, window):
    keep = torch.zeros(T, dtype=torch.bool)
    keep[:sinks] = True
    keep[-window:] = True          # window = 0 keeps everything
    return keep


def streaming_keep_float(T, sinks, window):
    return lab06._streaming_keep_solution(T, sinks, window).float() * 0.5


# ----------------------------------------------------------------------------------------------- tests
SOLUTIONS = [
    (lab06.check_rope_rotate, lab06._rope_rotate_solution),
    (lab06.check_ridge_with_intercept, lab06._ridge_with_intercept_solution),
    (lab06.check_choose_kept, lab06._choose_kept_solution),
    (lab06.check_streaming_keep, lab06._streaming_keep_solution),
]


@pytest.mark.parametrize("check, solution", SOLUTIONS, ids=[s[1].__name__ for s in SOLUTIONS])
def test_the_solution_passes_and_handing_it_in_is_refused(check, solution):
    assert check.__wrapped__(solution) is None
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        check(solution)


@pytest.mark.parametrize("check, student", [(lab06.check_rope_rotate, rope_any_dims),
                                            (lab06.check_ridge_with_intercept, ridge_any_dims),
                                            (lab06.check_choose_kept, choose_kept_student)],
                         ids=["rope_rotate", "ridge_with_intercept", "choose_kept"])
def test_an_independent_correct_answer_passes_under_the_guard(check, student, capsys):
    assert check(student) is None
    assert "correct" in capsys.readouterr().out


def test_the_rope_solution_is_the_rotation_the_cache_applies():
    from echo_tutor.echokv.capture import apply_rope

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g)
    cos, sin = lab06._tables(5, 8, g)
    cos, sin = cos.float()[None], sin.float()[None]
    assert torch.allclose(lab06._rope_rotate_solution(x, cos[:, None], sin[:, None]), apply_rope(x, cos, sin))


WRONG = [
    (lab06.check_rope_rotate, lambda x, c, s: rope_any_dims(x, c, -s), "inverse rotation"),
    (lab06.check_rope_rotate, lab06._rope_interleaved, "GPT-J"),
    (lab06.check_rope_rotate, lambda x, c, s: x * c, "missing"),
    (lab06.check_rope_rotate, lambda x, c, s: x * c + x * s, "keeps each vector's length"),
    (lab06.check_rope_rotate, rope_2d_only, "right with leading dims () and is wrong with (3,)"),
    (lab06.check_rope_rotate, rope_one_leading_dim, "right with leading dims (), (3,) and is wrong with (2, 3)"),
    (lab06.check_rope_rotate, rope_tables_per_row, "cos/sin (2, 3, 7, 8)"),
    (lab06.check_ridge_with_intercept, ridge_penalised_intercept, "intercept is penalised"),
    (lab06.check_ridge_with_intercept, ridge_no_intercept, "without an intercept"),
    (lab06.check_ridge_with_intercept, lambda X, Y, l: ridge_any_dims(X, Y, 0.0), "unregularised"),
    (lab06.check_ridge_with_intercept, lambda X, Y, l: (ridge_any_dims(X, Y, l)[0], ridge_any_dims(X, Y, l)[1] * 0),
     "W is right but c"),
    (lab06.check_ridge_with_intercept, lambda X, Y, l: ridge_any_dims(X, Y, l)[0], "return a pair"),
    (lab06.check_ridge_with_intercept, ridge_2d_only, "right with leading dims () and is wrong with (3,)"),
    (lab06.check_ridge_with_intercept, ridge_one_leading_dim, "right with leading dims (), (3,) and is wrong with (2, 3)"),
    (lab06.check_choose_kept, variant(per_byte=False), "gain per byte"),
    (lab06.check_choose_kept, variant(order="cheapest"), "cheapest slot first"),
    (lab06.check_choose_kept, variant(score="missing"), "still missing"),
    (lab06.check_choose_kept, variant(score="kept0"), "must count 1"),
    (lab06.check_choose_kept, variant(clamp=False), "helps nothing"),
    (lab06.check_choose_kept, variant(stop_early=True), "still fits"),
    (lab06.check_choose_kept, kept_sorted, "wrong order"),
    (lab06.check_choose_kept, ties_to_the_highest_id, "the lower slot id wins"),
    (lab06.check_choose_kept, over_budget, "over the budget"),
    (lab06.check_choose_kept, lambda r2, c, b: [], "stopped while a slot still fitted"),
    (lab06.check_choose_kept, lambda r2, c, b: torch.tensor(0.5), "list of slot ids"),
    (lab06.check_streaming_keep, lambda T, s, w: lab06._streaming_keep_solution(T, 0, w), "sinks"),
    (lab06.check_streaming_keep, lambda T, s, w: lab06._streaming_keep_solution(T, s, w + 1), "Off by one"),
    (lab06.check_streaming_keep, naive_streaming_keep, "window=0"),
    (lab06.check_streaming_keep, streaming_keep_float, "boolean mask"),
    (lab06.check_streaming_keep, lambda T, s, w: lab06._streaming_keep_solution(min(T, 200), s, w), "wrong shape"),
]


@pytest.mark.parametrize("check, wrong, msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_a_typical_wrong_answer_is_refused_with_its_message(check, wrong, msg):
    # several wrong answers are built from the lab's solutions, which the guard would refuse first: this
    # test is about the checks behind the guard (check.__wrapped__)
    with pytest.raises(ExerciseError) as e:
        check.__wrapped__(wrong)
    assert msg in str(e.value), str(e.value)


SHORTCUTS = [
    (lab06.check_rope_rotate, rope_via_alias, "apply_rope"),
    (lab06.check_rope_rotate, rope_via_importlib, "rotate_half"),
    (lab06.check_rope_rotate, rope_via_rotate, "rotate"),
    (lab06.check_ridge_with_intercept, ridge_via_the_lab, "_ridge_with_intercept_solution"),
    (lab06.check_choose_kept, choose_kept_via_slots, "kept_counts"),
    (lab06.check_choose_kept, choose_kept_via_the_lab, "_greedy_kept_solution"),
    (lab06.check_choose_kept, choose_kept_by_name, "greedy_select"),
]


@pytest.mark.parametrize("check, student, name", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_shortcut_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="answer for you") as e:
        check(student)
    assert name in str(e.value)


def test_the_reference_greedy_spends_the_budget_per_byte():
    # slot 0 rebuilds every other slot well but costs 4; slots 1 and 2 cost 1 each and rebuild each other
    r2 = torch.tensor([[1.0, 0.9, 0.9, 0.9], [0.0, 1.0, 0.5, 0.0], [0.0, 0.5, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
                      dtype=torch.float64)
    cost = torch.tensor([4.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    assert lab06._choose_kept_solution(r2, cost, 0.5) == []
    assert lab06._choose_kept_solution(r2, cost, 2.0) == [1, 3]          # per byte: cheap slots first
    assert lab06._greedy_kept_solution(r2, cost, 4.0, per_byte=False) == [0]
    assert sorted(lab06._choose_kept_solution(r2, cost, 7.0)) == [0, 1, 2, 3]
