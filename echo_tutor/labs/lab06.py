"""Lab 06 (EchoKV-lite): exercises, checkers and solutions.

Array exercises take any number of leading batch dims ``[...]``; their checkers try none, one and two
(``leading_dims``), so an answer right for one fixed number of leading dims only is refused with a hint.

1. ``rope_rotate(x [..., T, D], cos [T, D], sin [T, D]) -> [..., T, D]``: Llama's RoPE, pairing dimension i
   with i + D/2: ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x1, x2) = (-x2, x1)``; cos and sin
   are shared by every leading index (or have x's own shape).
2. ``ridge_with_intercept(X [..., N, a], Y [..., N, b], lam) -> (W [..., a, b], c [..., b])``: minimise
   ``||X W + 1 c^T - Y||^2 + lam ||W||^2`` (the intercept is not penalised): the stage-1 map of one
   discarded head from the retained ones.
3. ``choose_kept(r2 [S, S], cost [S], budget) -> list[int]`` (open-ended; rubric in the instructor's
   answer key): greedy choice of the slots to keep under a byte budget. A slot's
   rebuild quality given a kept set A is 1 if it is kept, else the best single-source R^2
   ``max(0, max_{i in A} r2[i, j])``; the score of A is the mean quality over all S slots. Each step keeps the
   slot that fits in the budget left with the largest score gain *per byte* (gains within 1e-9 of the best
   tie; the lowest slot id wins), until no slot fits. Returns the slots in the order kept.
4. ``streaming_keep(T, sinks, window) -> bool [T]``: which cached tokens StreamingLLM keeps: the first
   ``sinks`` and the last ``window``.
"""

from __future__ import annotations

import torch

from . import (ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, close, expect_tensor,
               fresh_generator, leading_dims, passed)

__all__ = [
    "_rope_rotate_solution", "_ridge_with_intercept_solution", "_choose_kept_solution", "_streaming_keep_solution",
    "check_rope_rotate", "check_ridge_with_intercept", "check_choose_kept", "check_streaming_keep",
]

TIE_TOL = 1e-9  # choose_kept: gains (per byte) within this of the best are ties, broken by the lowest slot id


# ------------------------------------------------------------------------------------------------ solutions
def _rope_rotate_solution(x, cos, sin):
    # the rotation EchoKV-lite applies to rebuilt keys (echo_tutor.echokv.capture.apply_rope), for any
    # number of leading dims: pairs (i, i + D/2) on the last dim
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


def _ridge_with_intercept_solution(X, Y, lam):
    mx, my = X.mean(-2, keepdim=True), Y.mean(-2, keepdim=True)          # [..., 1, a], [..., 1, b]
    Xc, Yc = X - mx, Y - my
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    W = torch.linalg.solve(Xc.mT @ Xc + lam * eye, Xc.mT @ Yc)           # [..., a, b]
    return W, (my - mx @ W)[..., 0, :]                                   # c [..., b]


def _greedy_kept_solution(r2, cost, budget, *, per_byte=True, score="all", clamp=True, stop_early=False, order="best",
                          tie="low"):
    """The reference greedy and, by its switches, the typical wrong versions the checker names.

    score: "all" (mean over all slots, a kept slot counting 1), "missing" (mean over the slots not kept),
    "kept0" (kept slots counting 0); order: "best" (largest gain first) or "cheapest" (cheapest slot first,
    ties by gain); tie: "low" (the lowest slot id wins a tie) or "high". Ties are judged on the gain per byte
    in every variant (``per_byte=False`` ranks by the gain, but two slots whose gains per byte are within
    ``TIE_TOL`` still tie), so that with equal costs the per-byte mistake gives the right answer."""
    r2 = torch.as_tensor(r2, dtype=torch.float64)
    cost = torch.as_tensor(cost, dtype=torch.float64)
    S = r2.shape[-1]
    src = r2.clamp_min(0.0) if clamp else r2.nan_to_num(neginf=-1.0)    # what kept slot i gives slot j
    best = torch.zeros(S, dtype=torch.float64) if clamp else torch.full((S,), -1.0, dtype=torch.float64)
    kept: list[int] = []
    is_kept = torch.zeros(S, dtype=torch.bool)
    left = float(budget)

    def total(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:     # q [..., S], mask [..., S] kept
        if score == "all":
            return torch.where(mask, 1.0, q).mean(-1)
        if score == "kept0":
            return torch.where(mask, 0.0, q).mean(-1)
        n = (~mask).sum(-1).clamp_min(1)
        return torch.where(mask, 0.0, q).sum(-1) / n                     # "missing"

    while True:
        fits = ~is_kept & (cost <= left + 1e-9)
        if not fits.any():
            break
        cand_q = torch.maximum(best[None, :], src)                      # [c, j]: qualities if c is kept
        cand_mask = is_kept[None, :] | torch.eye(S, dtype=torch.bool)
        gain = total(cand_q, cand_mask) - total(best, is_kept)
        tol = TIE_TOL if per_byte else TIE_TOL * cost    # [S]: ties are judged per byte in every variant
        if per_byte:
            gain = gain / cost
        pick = (lambda m: int(m.nonzero()[0])) if tie == "low" else (lambda m: int(m.nonzero()[-1]))
        if order == "cheapest":
            key = torch.where(fits, -cost, float("-inf"))
            top = key.max()
            pool = fits & (key >= top - 1e-12)
            g = torch.where(pool, gain, float("-inf"))
            c = pick((g >= g.max() - tol) & pool)
        else:
            g = torch.where(fits, gain, float("-inf"))
            if stop_early:                                              # stop when the best slot overall does not fit
                g_all = torch.where(~is_kept, gain, float("-inf"))
                c_all = pick((g_all >= g_all.max() - tol) & ~is_kept)
                if not bool(fits[c_all]):
                    break
            c = pick((g >= g.max() - tol) & fits)
        kept.append(c)
        is_kept[c] = True
        left -= float(cost[c])
        best = torch.maximum(best, src[c])
    return kept


def _choose_kept_solution(r2, cost, budget):
    return _greedy_kept_solution(r2, cost, budget)


def _streaming_keep_solution(T, sinks, window):
    keep = torch.zeros(T, dtype=torch.bool)
    keep[:sinks] = True
    if window > 0:
        keep[max(0, T - window):] = True
    return keep


# ------------------------------------------------------------------------------------------- rope_rotate
def _rope_interleaved(x, cos, sin):
    """GPT-J style pairing (2i, 2i+1): a different RoPE convention from Llama's."""
    xr = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + xr * sin


def _tables(T, D, g):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv = 1.0 / (100.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = pos * inv[None] + 0.1 * torch.rand(1, D // 2, generator=g, dtype=torch.float64)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def _rope_hint(out, x, cos, sin) -> str:
    h = x.shape[-1] // 2
    # (x * cos - rotate_half(x) * sin and x * cos + (x2, -x1) * sin are the same numbers: one hint)
    typical = {
        " That is the inverse rotation (by -angle): rotate_half(x) = (-x2, x1) is multiplied by +sin"
        " (a rotate_half giving (x2, -x1), or a minus before the sin term, rotates the other way).":
            x * cos - torch.cat((-x[..., h:], x[..., :h]), -1) * sin,
        " That pairs neighbouring dims (2i, 2i+1) (the GPT-J convention); Llama pairs i with i + D/2.":
            _rope_interleaved(x, cos, sin),
        " Only x * cos: the rotate_half(x) * sin term is missing.": x * cos,
    }
    hint = next((h for h, w in typical.items() if close(out, w)), "")
    if not hint and not close(out.norm(dim=-1), x.norm(dim=-1)):
        hint = " A rotation keeps each vector's length; yours does not (check that each cos pairs with its sin)."
    return hint


@checker(forbid=("rope_cos_sin", "rotate_half", "rotate", "apply_rope", "undo_rope"))
def check_rope_rotate(fn) -> None:
    """Check ``fn(x [..., T, D], cos [T, D], sin [T, D]) -> [..., T, D]`` (Llama's half-split pairing) with
    zero, one and two leading dims on x, with cos/sin of x's own shape, and at the lab's size (256 x 64)."""
    name = "rope_rotate"
    g, seed = fresh_generator()
    tables = {(7, 8): _tables(7, 8, g), (256, 64): _tables(256, 64, g)}  # (256, 64): the lab's own call, one head
    ok: list[tuple[int, ...]] = []
    cases = [(lead, False, 7, 8) for lead in leading_dims()] + [((2, 3), True, 7, 8), ((), False, 256, 64)]
    for lead, full_tables, T, D in cases:
        cos, sin = tables[T, D]
        x = torch.randn(*lead, T, D, generator=g, dtype=torch.float64)
        c, s = (cos.expand(*lead, T, D).clone(), sin.expand(*lead, T, D).clone()) if full_tables else (cos, sin)
        where = f"x {tuple(x.shape)}, cos/sin {tuple(c.shape)}"
        try:
            out = expect_tensor(name, call_student(name, fn, x, c, s), (*lead, T, D), "[..., T, D]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, [o for o in ok if o != lead])}") from None
        want = _rope_rotate_solution(x, c, s)
        if close(out, want):
            ok.append(lead)
            continue
        if full_tables:
            hint = (" It is right with cos/sin [T, D] and wrong when they have x's own shape: use the tables"
                    " elementwise (x * cos), without indexing or reshaping them.")
        else:
            hint = batch_dims_hint(lead, [o for o in ok if o != lead]) or _rope_hint(out, x, c, s)
        raise ExerciseError(f"{name}: wrong values with {where} (seed {seed}): max abs error "
                            f"{(out - want).abs().max():.3g}.{hint}")
    return passed(name)


# --------------------------------------------------------------------------------- ridge_with_intercept
def _ridge_hint(X, Y, lam, W, c, Ws, cs) -> str:
    a = X.shape[-1]
    ones = torch.ones(*X.shape[:-1], 1, dtype=X.dtype)
    Z = torch.cat([X, ones], -1)
    both = torch.linalg.solve(Z.mT @ Z + lam * torch.eye(a + 1, dtype=X.dtype), Z.mT @ Y)
    no_b = torch.linalg.solve(X.mT @ X + lam * torch.eye(a, dtype=X.dtype), X.mT @ Y)
    if close(W, _ridge_with_intercept_solution(X, Y, 0.0)[0]):
        return " W is the unregularised fit: add lam * I to the centred X^T X."
    if close(W, both[..., :a, :]) and close(c, both[..., a, :]):
        return " The intercept is penalised too: centre X and Y first (or leave c out of the penalty)."
    if close(W, no_b):
        return " W is fitted without an intercept: centre X and Y, then c = mean(Y) - mean(X) @ W."
    if close(W, Ws):
        return " W is right but c is not: c = mean(Y) - mean(X) @ W (with the W you solved for)."
    return ""


@checker(forbid=("fit_reconstructor", "Reconstructor", "SlotMap", "SlotMoments"))
def check_ridge_with_intercept(fn) -> None:
    """Check ``fn(X [..., N, a], Y [..., N, b], lam) -> (W [..., a, b], c [..., b])`` with zero, one and two
    leading dims, and at the lab's size (two 64-dim heads rebuilding one)."""
    name = "ridge_with_intercept"
    g, seed = fresh_generator()
    lam = 2.0
    ok: list[tuple[int, ...]] = []
    # zero, one and two leading dims on small problems, then the lab's own size (two 64-dim heads -> one)
    for lead, N, a, b in [(lead, 40, 5, 3) for lead in leading_dims()] + [((), 300, 128, 64)]:
        X = torch.randn(*lead, N, a, generator=g, dtype=torch.float64) + 3.0   # an offset: the intercept matters
        Y = (X @ torch.randn(*lead, a, b, generator=g, dtype=torch.float64) + 5.0
             + 0.1 * torch.randn(*lead, N, b, generator=g, dtype=torch.float64))
        where = f"X {tuple(X.shape)}, Y {tuple(Y.shape)}"
        try:
            out = call_student(name, fn, X, Y, lam)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise ExerciseError(f"{name}: return a pair (W [..., a, b], c [..., b]), got {type(out).__name__}")
            W = expect_tensor(name + " W", out[0], (*lead, a, b), "W [..., a, b]")
            c = expect_tensor(name + " c", out[1], (*lead, b), "c [..., b]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, [o for o in ok if o != lead])}") from None
        Ws, cs = _ridge_with_intercept_solution(X, Y, lam)
        if close(W, Ws) and close(c, cs):
            ok.append(lead)
            continue
        hint = batch_dims_hint(lead, [o for o in ok if o != lead]) or _ridge_hint(X, Y, lam, W, c, Ws, cs)
        raise ExerciseError(f"{name}: wrong values with {where} (seed {seed}): max abs error W "
                            f"{(W - Ws).abs().max():.3g}, c {(c - cs).abs().max():.3g}.{hint}")
    return passed(name)


# ------------------------------------------------------------------------------------------- choose_kept
def _random_r2(S: int, g: torch.Generator) -> torch.Tensor:
    """A random [S, S] 'rebuild R^2' matrix with the atlas's texture: neighbours predict each other better,
    some pairs are useless (negative) or out of reach (-inf), not symmetric."""
    pos = torch.arange(S, dtype=torch.float64)
    near = torch.exp(-(pos[:, None] - pos[None, :]).abs() / 3.0)
    r2 = near * torch.rand(S, S, generator=g, dtype=torch.float64) * 1.1 - 0.2
    far = (pos[:, None] - pos[None, :]).abs() > S // 2
    r2 = r2.masked_fill(far & (torch.rand(S, S, generator=g) < 0.5), float("-inf"))
    return r2.fill_diagonal_(1.0)


_KEPT_MISTAKES = [
    (dict(per_byte=False), " You rank slots by their gain, not by their gain per byte: a slot twice as expensive "
     "must bring twice the gain (the budget is in bytes)."),
    (dict(order="cheapest"), " You take the cheapest slot first: cost matters only through gain per byte."),
    (dict(score="missing"), " Your score is the mean over the slots still missing: keeping a badly rebuilt slot "
     "then raises it even if it helps no other slot. Score all S slots, a kept slot counting 1 (it is stored exactly)."),
    (dict(score="kept0"), " A kept slot must count 1 in the score (it is stored exactly), not 0."),
    (dict(clamp=False), " A negative (or -inf) R^2 helps nothing: a missing slot can always be rebuilt as its mean "
     "(R^2 0), so its quality is max(0, best R^2 from a kept slot)."),
    (dict(stop_early=True), " You stop when the best slot no longer fits; keep going with the best slot that "
     "still fits the budget left, until none does."),
    (dict(tie="high"), f" On a tie (gains per byte within {TIE_TOL:g} of the best) the lower slot id wins."),
]


def _kept_case(name: str, fn, r2, cost, budget, what: str, seed: int) -> None:
    want = _choose_kept_solution(r2, cost, budget)
    out = call_student(name, fn, r2.clone(), cost.clone(), budget)
    try:
        got = [int(v) for v in out]
    except Exception:
        raise ExerciseError(f"{name}: return a list of slot ids (ints), got {type(out).__name__} ({what}, "
                            f"seed {seed})") from None
    S = r2.shape[-1]
    if any(not 0 <= v < S for v in got) or len(set(got)) != len(got):
        raise ExerciseError(f"{name}: slot ids must be distinct and in 0..{S - 1}, got {got} ({what}, seed {seed})")
    spent = float(cost[got].sum()) if got else 0.0
    if spent > budget + 1e-9:
        raise ExerciseError(f"{name}: your slots cost {spent:g} bytes, over the budget of {budget:g} ({what}, seed "
                            f"{seed}): only keep a slot that fits in the budget left.")
    if got == want:
        return
    # the tie rule first: breaking a tie the other way is the smallest departure, and on equal costs some other
    # mistakes (the score over the missing slots) rank as the reference does except where gains nearly tie
    hint = next((h for kw, h in _KEPT_MISTAKES[-1:] + _KEPT_MISTAKES[:-1]
                 if got == _greedy_kept_solution(r2, cost, budget, **kw)), "")
    if not hint and sorted(got) == sorted(want):
        hint = " The right slots in the wrong order: return them in the order the greedy keeps them."
    if not hint and len(got) < len(want):
        hint = " You stopped while a slot still fitted in the budget left."
    raise ExerciseError(f"{name}: {what}: expected {want}, got {got} (seed {seed}).{hint}")


@checker(forbid=("select_slots", "greedy_select", "kept_counts", "fit_reconstructor", "SlotMoments"))
def check_choose_kept(fn) -> None:
    """Check ``fn(r2 [S, S], cost [S], budget) -> list[int]`` against the reference greedy on fresh random
    instances (unequal costs where the per-byte and the absolute choices differ), the lab's own shape (180
    slots of two kinds, equal costs), a budget below one slot, a budget covering every slot, and an exact tie."""
    name = "choose_kept"
    g, seed = fresh_generator()
    S = 12
    # 1. random instances with unequal byte costs, drawn until the typical mistakes give other answers (on the
    #    first, answers that differ from each other too, so that a mistake is named unambiguously), with no tie
    #    (which way a tie breaks is the last case's question)
    for k in range(2):
        for _ in range(400):
            r2 = _random_r2(S, g)
            cost = torch.randint(1, 5, (S,), generator=g).double() * 16
            budget = float(cost.sum()) * (0.3 + 0.3 * float(torch.rand(1, generator=g)))
            outs = [tuple(_choose_kept_solution(r2, cost, budget))] + [
                tuple(_greedy_kept_solution(r2, cost, budget, **kw)) for kw, _ in _KEPT_MISTAKES[: 2 + 4 * (k == 0)]]
            no_tie = tuple(_greedy_kept_solution(r2, cost, budget, tie="high")) == outs[0]   # ties: case 5
            if no_tie and (len(set(outs)) == len(outs) if k == 0 else outs[0] not in outs[1:]):
                break
        _kept_case(name, fn, r2, cost, budget, f"random instance {k + 1} (S={S}, costs 16-64 bytes, budget "
                   f"{budget:.0f})", seed)
    # 2. the lab's own shape: 180 slots of two kinds (-inf across kinds and beyond 2 layers), equal costs, half
    r2 = torch.full((180, 180), float("-inf"), dtype=torch.float64)
    layer = torch.arange(90) // 3
    reach = (layer[:, None] - layer[None, :]).abs() <= 2
    for i in range(2):
        block = torch.rand(90, 90, generator=g, dtype=torch.float64) * 1.2 - 0.2
        r2[90 * i:90 * (i + 1), 90 * i:90 * (i + 1)] = block.masked_fill(~reach, float("-inf"))
    cost = torch.full((180,), 128.0, dtype=torch.float64)
    _kept_case(name, fn, r2, cost, 90 * 128.0, "the lab's shape (180 slots, K then V, equal costs, half the bytes)",
               seed)
    # 3. a budget below the cheapest slot: nothing fits
    r2 = _random_r2(S, g)
    cost = torch.randint(2, 5, (S,), generator=g).double() * 16
    _kept_case(name, fn, r2, cost, float(cost.min()) - 1, "a budget below the cheapest slot", seed)
    # 4. a budget that covers every slot: all of them, in greedy order
    _kept_case(name, fn, r2, cost, float(cost.sum()), "a budget covering every slot", seed)
    # 5. an exact tie: slots 3 and 8 are interchangeable (same rows, columns and cost), both worth the most
    r2 = _random_r2(S, g).clamp_max(0.3)
    r2[3, :] = r2[8, :] = 0.9
    r2[:, 3] = r2[:, 8] = 0.2
    r2[3, 3] = r2[8, 8] = r2[3, 8] = r2[8, 3] = 1.0
    cost = torch.full((S,), 32.0, dtype=torch.float64)
    _kept_case(name, fn, r2, cost, 32.0 * 3, "a tie between slots 3 and 8 (equal costs, identical rows and columns):"
               " the lower slot id wins", seed)
    return passed(name)


# ---------------------------------------------------------------------------------------- streaming_keep
@checker(forbid=("streaming_llm",))
def check_streaming_keep(fn) -> None:
    """Check ``fn(T, sinks, window) -> bool [T]`` on several (T, sinks, window): a random case, the lab's own
    (256 and 512 tokens, 4 sinks, a window of T/2 - 4), and edge cases (window 0, window > T, sinks 0,
    sinks > T, sinks and window overlapping)."""
    name = "streaming_keep"
    g, seed = fresh_generator()
    cases = [(int(torch.randint(20, 60, (1,), generator=g)), 4, int(torch.randint(3, 15, (1,), generator=g))),
             (256, 4, 124), (512, 4, 252), (10, 4, 0), (6, 4, 10), (12, 0, 5), (3, 4, 1), (9, 5, 6)]
    for T, s, w in cases:
        out = call_student(name, fn, T, s, w)
        if isinstance(out, torch.Tensor) and out.dtype != torch.bool:
            if not bool(((out == 0) | (out == 1)).all()):
                raise ExerciseError(f"{name}: return a boolean mask (True = kept), got values other than 0 and 1 "
                                    f"for T={T}, sinks={s}, window={w}")
            out = out.bool()
        out = expect_tensor(name, out, (T,), "[T]")
        want = _streaming_keep_solution(T, s, w)
        if torch.equal(out, want):
            continue
        got_n, want_n = int(out.sum()), int(want.sum())
        if not out[: min(s, T)].all():
            hint = " The first `sinks` tokens (attention sinks) must always be kept."
        elif got_n == want_n + 1 or got_n == want_n - 1:
            hint = " Off by one at the window's edge: keep exactly the last `window` tokens."
        elif w == 0 and out[max(0, T - 1):].any() and not want[max(0, T - 1):].any():
            hint = " window=0 keeps no recent token (x[-0:] is the whole tensor in Python: careful)."
        else:
            hint = ""
        raise ExerciseError(
            f"{name}: wrong mask for T={T}, sinks={s}, window={w} (seed {seed}): kept {out.nonzero().flatten().tolist()}, "
            f"expected {want.nonzero().flatten().tolist()}.{hint}"
        )
    return passed(name)
