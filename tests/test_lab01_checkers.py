"""Lab 01's checkers, tried as an adversary would: the solutions pass; typical wrong answers, answers right for
one number of leading dims only, token loops, whole-sequence quadratic forms and prefix masks in chunk-sized
blocks dressed as the chunked algorithm, and calls into the package (by name, alias, getattr or importlib) are refused with their message."""

import importlib
import re

import pytest
import torch

from echo_tutor import labs
from echo_tutor.labs import ExerciseError, lab01
from echo_tutor.ssm import segsum as mask_sums
from echo_tutor.ssm import ssd_chunked as fast_scan
from echo_tutor.ssm import ssd_recurrent

# a learner's `b.T` on a batch of matrices warns (and is refused by the checker): not this test's business
pytestmark = pytest.mark.filterwarnings("ignore:The use of `x.T`")


# ------------------------------------------------------------------------------------------- ssm_scan
def scan_no_batch(x, a, b, c):
    """The 2-D answer: right with no leading dims only (torch.outer takes vectors)."""
    h = torch.zeros(x.shape[1], b.shape[1], dtype=x.dtype)
    ys = []
    for t in range(x.shape[0]):
        h = torch.exp(a[t]) * h + torch.outer(x[t], b[t])
        ys.append(h @ c[t])
    return torch.stack(ys)


def scan_one_lead(x, a, b, c):
    """Written for x [B, T, P]: a 3-D einsum and x[:, t]."""
    h = torch.zeros(x.shape[0], x.shape[2], b.shape[2], dtype=x.dtype)
    ys = []
    for t in range(x.shape[1]):
        h = torch.exp(a[:, t])[:, None, None] * h + torch.einsum("bp,bn->bpn", x[:, t], b[:, t])
        ys.append(torch.einsum("bpn,bn->bp", h, c[:, t]))
    return torch.stack(ys, 1)


def scan_variant(i):
    return lambda x, a, b, c: list(lab01._scan_variants(x, a, b, c).values())[i]


def scan_via_library(x, a, b, c):
    y, _ = ssd_recurrent(x[None, :, None], a[None, :, None], b[None, :, None], c[None, :, None])
    return y[0, :, 0]


def scan_via_importlib(x, a, b, c):
    mod = importlib.import_module("echo_tutor." + "ssm")
    y, _ = getattr(mod, "ssd_" + "recurrent")(x[None, :, None], a[None, :, None], b[None, :, None], c[None, :, None])
    return y[0, :, 0]


# ------------------------------------------------------------------------------------------ decay_mask
def mask_no_batch(a):
    T = a.shape[0]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=-1)
    return torch.tril(torch.exp(torch.cumsum(a[:, None].expand(T, T).masked_fill(~below, 0), dim=0)))


def mask_by_difference(a):
    cs = torch.cumsum(a, -1)
    return torch.tril(torch.exp(cs[..., :, None] - cs[..., None, :]))


def mask_via_segsum(a):
    return torch.exp(mask_sums(a))


def mask_via_getattr(a):
    mod = importlib.import_module("echo_tutor.ssm." + "ssd")
    return torch.exp(vars(mod)["seg" + "sum"](a))


# --------------------------------------------------------------------------------------- ssd_quadratic
def quadratic_no_batch(x, a, b, c):
    return ((c @ b.T) * lab01._decay_mask_solution(a)) @ x


# ----------------------------------------------------------------------------------------- ssd_chunked
def chunked_variant(**kw):
    return lambda x, a, b, c, chunk: lab01._chunked_variant(x, a, b, c, chunk, **kw)


def chunked_token_loop(x, a, b, c, chunk):
    """The recurrence, written out, with a decorative chunk loop around it."""
    h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])
    ys = []
    for s in range(0, x.shape[-2], chunk):
        for t in range(s, min(s + chunk, x.shape[-2])):
            h = torch.exp(a[..., t, None, None]) * h + x[..., t, :, None] * b[..., t, None, :]
            ys.append((h @ c[..., t, :, None])[..., 0])
    return torch.stack(ys, dim=-2)


def chunked_whole_sequence(x, a, b, c, chunk):
    """Ignores the chunks: the quadratic form over the whole sequence (right values, O(T^2))."""
    T = a.shape[-1]
    terms = a[..., :, None].expand(*a.shape, T).tril(-1)
    L = torch.tril(torch.exp(terms.cumsum(-2)))
    return ((c @ b.mT) * L) @ x


def chunked_prefix_blocks(x, a, b, c, chunk):
    """The reviewer's attack: rows in chunk-sized blocks, each reading every earlier token through a cumsum-
    difference mask over the whole prefix (O(T^2) work, no state carried, never a T x T tensor)."""
    T = x.shape[-2]
    cs = torch.cumsum(a, -1)
    ys = []
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        seg = cs[..., s:e, None] - cs[..., None, :e]
        causal = torch.arange(s, e)[:, None] >= torch.arange(e)[None, :]
        L = torch.where(causal, torch.exp(seg), torch.zeros_like(seg))
        ys.append(((c[..., s:e, :] @ b[..., :e, :].mT) * L) @ x[..., :e, :])
    return torch.cat(ys, -2)


def chunked_one_lead(x, a, b, c, chunk):
    """Written for one leading dim: a 4-index einsum with fixed letters."""
    T = x.shape[1]
    h = torch.zeros(x.shape[0], x.shape[2], b.shape[2], dtype=x.dtype)
    ys = []
    for s in range(0, T, chunk):
        xs, as_, bs, cs = x[:, s:s + chunk], a[:, s:s + chunk], b[:, s:s + chunk], c[:, s:s + chunk]
        S = as_.shape[1]
        below = torch.tril(torch.ones(S, S, dtype=torch.bool), diagonal=-1)
        L = torch.tril(torch.exp(torch.cumsum(as_[:, :, None].expand(-1, S, S).masked_fill(~below, 0), dim=1)))
        y = torch.einsum("bln,bsn,bls,bsp->blp", cs, bs, L, xs)
        y = y + torch.exp(as_.cumsum(1))[:, :, None] * torch.einsum("bln,bpn->blp", cs, h)
        h = torch.exp(as_.sum(1))[:, None, None] * h + torch.einsum("bs,bsp,bsn->bpn", L[:, -1], xs, bs)
        ys.append(y)
    return torch.cat(ys, 1)


def chunked_drops_the_tail(x, a, b, c, chunk):
    """Only whole chunks: the last, shorter chunk is lost."""
    T = x.shape[-2]
    return lab01._ssd_chunked_solution(x[..., :T - T % chunk, :], a[..., :T - T % chunk], b[..., :T - T % chunk, :],
                                       c[..., :T - T % chunk, :], chunk)


def chunked_returns_state(x, a, b, c, chunk):
    return lab01._ssd_chunked_solution(x, a, b, c, chunk), None


def ssm_scan(x, a, b, c):  # stands for the notebook's exercise object of that name
    return lab01._ssm_scan_solution(x, a, b, c)


def chunked_via_ssm_scan(x, a, b, c, chunk):
    return ssm_scan(x, a, b, c)


def chunked_via_alias(x, a, b, c, chunk):
    y, _ = fast_scan(x[None, :, None], a[None, :, None], b[None, :, None], c[None, :, None], chunk_size=chunk)
    return y[0, :, 0]


def chunked_via_importlib(x, a, b, c, chunk):
    mod = importlib.import_module("echo_tutor." + "ssm")
    fn = getattr(mod, "ssd_" + "chunked")
    lead = x.shape[:-2]
    T, P, N = x.shape[-2], x.shape[-1], b.shape[-1]
    y, _ = fn(x.reshape(-1, T, 1, P), a.reshape(-1, T, 1), b.reshape(-1, T, 1, N), c.reshape(-1, T, 1, N),
              chunk_size=chunk)
    return y.reshape(*lead, T, P)


WRONG = [
    # (checker, wrong answer, what the message must say)
    (lab01.check_ssm_scan, scan_variant(0), "exp(a_t)"),
    (lab01.check_ssm_scan, scan_variant(1), "reads the state before"),
    (lab01.check_ssm_scan, scan_variant(2), "never decayed"),
    (lab01.check_ssm_scan, lambda x, a, b, c: lab01._ssm_scan_solution(x, a, b, c).flip(-2), "not causal"),
    (lab01.check_ssm_scan, lambda x, a, b, c: lab01._ssm_scan_solution(x, a, b, c).mT, "wrong shape"),
    (lab01.check_ssm_scan, scan_no_batch, "It was right with leading dims ()"),
    (lab01.check_ssm_scan, scan_one_lead, "It was right with leading dims (3,), (4,)"),
    (lab01.check_decay_mask, mask_no_batch, "It was right with leading dims ()"),
    (lab01.check_decay_mask, lambda a: torch.exp(mask_by_difference(a)), "above the diagonal"),
    (lab01.check_decay_mask, lambda a: torch.tril(torch.cumsum(a, -1)[..., :, None] - torch.cumsum(a, -1)[..., None, :]),
     "exponential"),
    (lab01.check_decay_mask, lambda a: mask_by_difference(a) * torch.exp(a[..., None, :]), "excludes a_j"),
    (lab01.check_decay_mask, lambda a: torch.tril(1 / mask_by_difference(a)), "wrong way"),
    (lab01.check_decay_mask, mask_by_difference, "inexact on a long float32"),
    (lab01.check_decay_mask, lambda a: torch.tril(torch.exp(a.cumsum(-1))[..., :, None] / torch.exp(a.cumsum(-1))[..., None, :]),
     "underflows or overflows"),
    (lab01.check_ssd_quadratic, lambda x, a, b, c: torch.tril(c @ b.mT) @ x, "decay mask"),
    (lab01.check_ssd_quadratic, lambda x, a, b, c: ((b @ c.mT) * lab01._decay_mask_solution(a)) @ x, "B C^T"),
    (lab01.check_ssd_quadratic, quadratic_no_batch, "It was right with leading dims ()"),
    (lab01.check_ssd_chunked, chunked_variant(carry=False), "not carried across chunks"),
    (lab01.check_ssd_chunked, chunked_variant(decay_carry=False), "does not fade across a chunk"),
    (lab01.check_ssd_chunked, chunked_variant(read_shift=-1), "one decay too few"),
    (lab01.check_ssd_chunked, chunked_variant(read_shift=1), "One decay too many"),
    (lab01.check_ssd_chunked, chunked_variant(end_off_by_one=True), "decay to the chunk's end"),
    (lab01.check_ssd_chunked, chunked_token_loop, "something loops over tokens"),
    (lab01.check_ssd_chunked, chunked_whole_sequence, "a T x T matrix"),
    (lab01.check_ssd_chunked, chunked_prefix_blocks, "the work grows like T^2, not like T"),
    (lab01.check_ssd_chunked, chunked_one_lead, "It was right with leading dims (3,), (4,)"),
    (lab01.check_ssd_chunked, chunked_drops_the_tail, "wrong shape"),
    (lab01.check_ssd_chunked, chunked_returns_state, "should return a torch.Tensor"),
    (lab01.check_ssd_chunked, lambda x, a, b, c, chunk: lab01._ssd_chunked_solution(x, a, b, c, chunk).float(),
     "Keep the inputs' dtype"),
]


@pytest.mark.parametrize("checker,wrong,msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_checker_rejects_typical_wrong_answer(checker, wrong, msg):
    for _ in range(3):  # fresh random inputs every call: the verdict and the message must not depend on the draw
        with pytest.raises(ExerciseError, match=re.escape(msg)) as e:
            checker.__wrapped__(wrong)  # the checks behind the shortcut scan (some answers reuse the solutions)
        assert re.search(r"seed \d+", str(e.value))


SOLUTIONS = [
    (lab01.check_ssm_scan, lab01._ssm_scan_solution),
    (lab01.check_decay_mask, lab01._decay_mask_solution),
    (lab01.check_ssd_quadratic, lab01._ssd_quadratic_solution),
    (lab01.check_ssd_chunked, lab01._ssd_chunked_solution),
]


@pytest.mark.parametrize("checker,solution", SOLUTIONS, ids=[s[1].__name__ for s in SOLUTIONS])
def test_checker_accepts_solution(checker, solution, capsys):
    for _ in range(3):
        assert checker.__wrapped__(solution) is None
    assert "correct on fresh random inputs" in capsys.readouterr().out
    with pytest.raises(ExerciseError, match="computes the answer for you"):
        checker(solution)  # the lab's private solution handed in as the answer


def test_a_learners_own_chunked_scan_passes_the_guarded_checker(capsys):
    """Written from scratch (no lab solution inside), through the guard: accepted."""
    def ssd_chunked(x, a, b, c, chunk):
        T = x.shape[-2]
        h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])
        ys = []
        for s in range(0, T, chunk):
            xs, as_, bs, cs = x[..., s:s + chunk, :], a[..., s:s + chunk], b[..., s:s + chunk, :], c[..., s:s + chunk, :]
            S = as_.shape[-1]
            strict = torch.ones(S, S, dtype=torch.bool).tril(-1)
            seg = as_[..., :, None].expand(*as_.shape, S).masked_fill(~strict, 0).cumsum(-2)
            L = torch.exp(seg).tril()
            A = as_.cumsum(-1)
            y = ((cs @ bs.mT) * L) @ xs + torch.exp(A)[..., None] * (cs @ h.mT)
            h = torch.exp(A[..., -1:, None]) * h + (xs * L[..., -1, :, None]).mT @ bs
            ys.append(y)
        return torch.cat(ys, -2)

    assert lab01.check_ssd_chunked(ssd_chunked) is None
    assert "correct on fresh random inputs" in capsys.readouterr().out


def test_a_loop_free_chunked_scan_passes_the_guarded_checker(capsys):
    """The other honest form (Mamba-2's minimal SSD): every chunk at once, no Python loop, the states passed
    between chunks by a (chunks + 1) x (chunks + 1) decay matrix. Its work grows a little faster than T (that
    matrix), well inside what the checker allows; the answer is accepted."""
    def segment_sums(a):
        S = a.shape[-1]
        cs = a.cumsum(-1)
        return (cs[..., :, None] - cs[..., None, :]).masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(),
                                                                  float("-inf"))

    def ssd_chunked(x, a, b, c, chunk):
        T, P, N = x.shape[-2], x.shape[-1], b.shape[-1]
        pad, lead = (-T) % chunk, x.shape[:-2]
        K = (T + pad) // chunk
        X = torch.nn.functional.pad(x, (0, 0, 0, pad)).reshape(*lead, K, chunk, P)
        B = torch.nn.functional.pad(b, (0, 0, 0, pad)).reshape(*lead, K, chunk, N)
        C = torch.nn.functional.pad(c, (0, 0, 0, pad)).reshape(*lead, K, chunk, N)
        A = torch.nn.functional.pad(a, (0, pad)).reshape(*lead, K, chunk).cumsum(-1)
        inside = ((C @ B.mT) * torch.exp(segment_sums(A.diff(dim=-1, prepend=A[..., :1] * 0)))) @ X
        written = (X * torch.exp(A[..., -1:] - A)[..., None]).mT @ B  # [..., K, P, N]
        written = torch.cat([torch.zeros_like(written[..., :1, :, :]), written], -3)
        across = torch.exp(segment_sums(torch.nn.functional.pad(A[..., -1], (1, 0))))  # [..., K+1, K+1]
        entering = torch.einsum("...zc,...cpn->...zpn", across, written)[..., :-1, :, :]
        y = inside + torch.exp(A)[..., None] * (C @ entering.mT)
        return y.reshape(*lead, K * chunk, P)[..., :T, :]

    assert lab01.check_ssd_chunked(ssd_chunked) is None
    assert "correct on fresh random inputs" in capsys.readouterr().out


SHORTCUTS = [
    (lab01.check_ssm_scan, scan_via_library, "ssd_recurrent"),
    (lab01.check_ssm_scan, scan_via_importlib, "echo_tutor.ssm.ssd.ssd_recurrent"),
    (lab01.check_decay_mask, mask_via_segsum, "`mask_sums` (that is `echo_tutor.ssm.ssd.segsum`)"),
    (lab01.check_decay_mask, mask_via_getattr, "echo_tutor.ssm.ssd.segsum"),
    (lab01.check_ssd_chunked, chunked_via_ssm_scan, "`ssm_scan`"),
    (lab01.check_ssd_chunked, chunked_via_alias, "`fast_scan` (that is `echo_tutor.ssm.ssd.ssd_chunked`)"),
    (lab01.check_ssd_chunked, chunked_via_importlib, "echo_tutor.ssm.ssd.ssd_chunked"),
]


@pytest.mark.parametrize("check,student,name", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_call_to_what_computes_the_answer_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="the answer for you") as e:
        check(student)
    assert name in str(e.value)


def test_an_unfinished_helper_exercise_inside_the_chunked_scan_is_explained(monkeypatch, capsys):
    """The learner calls their own decay_mask, which has not passed: the exercise object answers with the lab's
    solution, the guard refuses it, and the message says why and what to do."""
    monkeypatch.delenv("ECHO_TUTOR_SOLUTIONS", raising=False)

    def decay_mask(a):
        raise NotImplementedError

    decay_mask = labs.exercise(decay_mask, "lab01")
    lab01.check_decay_mask(decay_mask)
    assert decay_mask.status == "not attempted"
    capsys.readouterr()

    def ssd_chunked(x, a, b, c, chunk):
        h = x.new_zeros(*x.shape[:-2], x.shape[-1], b.shape[-1])
        ys = []
        for s in range(0, x.shape[-2], chunk):
            xs, as_, bs, cs = x[..., s:s + chunk, :], a[..., s:s + chunk], b[..., s:s + chunk, :], c[..., s:s + chunk, :]
            L = decay_mask(as_)
            y = ((cs @ bs.mT) * L) @ xs + torch.exp(as_.cumsum(-1))[..., None] * (cs @ h.mT)
            h = torch.exp(as_.sum(-1))[..., None, None] * h + (xs * L[..., -1, :, None]).mT @ bs
            ys.append(y)
        return torch.cat(ys, -2)

    with pytest.raises(ExerciseError, match="finish that exercise first"):
        lab01.check_ssd_chunked(ssd_chunked)


def test_the_checkers_try_the_shapes_the_lab_uses():
    """Section 3 calls ssm_scan and ssd_chunked on [4, T, P]: an answer wrong for that shape alone is refused."""
    def wrong_for_four_heads(x, a, b, c, chunk):
        y = lab01._ssd_chunked_solution(x, a, b, c, chunk)
        return y * 2 if x.shape[:-2] == (4,) else y

    with pytest.raises(ExerciseError, match=r"x \(4, "):
        lab01.check_ssd_chunked.__wrapped__(wrong_for_four_heads)
    assert (4,) in lab01._LATER_LEADS


def test_the_chunked_checker_forbids_the_token_loop_by_name():
    assert "ssm_scan" in lab01.check_ssd_chunked.forbid and "ssm_scan" in lab01.check_ssd_quadratic.forbid


def test_every_chunk_mistake_differs_on_the_first_case():
    """The named mistakes are told apart on the checker's first (T, chunk) case: none equals the truth or another."""
    g = torch.Generator().manual_seed(0)
    T, chunk = lab01._CHUNK_CASES[0]
    x, a, b, c = lab01._inputs(g, T=T)
    truth = lab01._ssm_scan_solution(x, a, b, c)
    outs = [lab01._chunked_variant(x, a, b, c, chunk, **kw) for kw in lab01._CHUNK_MISTAKES.values()]
    for i, o in enumerate(outs):
        assert not torch.allclose(o, truth, atol=1e-6)
        assert all(not torch.allclose(o, p, atol=1e-6) for p in outs[i + 1:])
