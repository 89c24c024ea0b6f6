"""Lab 07's checkers, tried as an adversary would: the solutions pass; each typical wrong answer, including
versions right for one fixed number of leading dims only, is refused with the message that names it; a
call into the project's code that computes the answer (directly, by alias, by getattr or importlib, or a
project kernel launched from the learner's launcher) is refused.

The Triton exercise runs its kernels in Triton's interpreter here (``TRITON_INTERPRET=1``, set by conftest
before any kernel below is defined)."""

import importlib
import re

import pytest
import torch

import torch.linalg as la

from echo_tutor.labs import ExerciseError, lab07

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

GRAM = lab07._chunk_gram_solution
SM = lab07._sherman_morrison_solution


# ------------------------------------------------------------------------------------------- chunk_gram
def gram_one_lead(ok, kk, S):
    N, T, r = ok.shape  # one leading dim only
    return torch.einsum("ncsi,ncsj->ncij", ok.reshape(N, T // S, S, r), kk.reshape(N, T // S, S, r))


def gram_interleaved(ok, kk, S):
    *lead, T, r = ok.shape
    x, y = ok.reshape(*lead, S, T // S, r), kk.reshape(*lead, S, T // S, r)
    return torch.einsum("...sci,...scj->...cij", x, y)


def gram_running(ok, kk, S):
    *lead, T, r = ok.shape
    x, y = ok.reshape(*lead, T // S, S, r), kk.reshape(*lead, T // S, S, r)
    return torch.einsum("...csi,...csj->...cij", x, y).cumsum(-3)


def gram_transposed(ok, kk, S):
    *lead, T, r = ok.shape
    x, y = ok.reshape(*lead, T // S, S, r), kk.reshape(*lead, T // S, S, r)
    return torch.einsum("...csi,...csj->...cji", x, y)


def gram_whole(ok, kk, S):
    *lead, T, r = ok.shape
    return (ok.mT @ kk)[..., None, :, :].expand(*lead, T // S, r, r)


def gram_via_importlib(ok, kk, S):
    ops = importlib.import_module("echo_tutor.ska." + "ops")
    f = getattr(ops, "chunk" + "_stats")
    *lead, T, r = ok.shape
    return f(ok.reshape(-1, T, r), kk.reshape(-1, T, r), kk.reshape(-1, T, r), ok.reshape(-1, T, r), S)[0].reshape(
        *lead, T // S, r, r)


# -------------------------------------------------------------------------------------- sherman_morrison
def sm_outer(Ginv, k, a):  # right for one k [r] only
    g = Ginv @ k
    return Ginv - a * torch.outer(g, g) / (1.0 + a * (k @ g))


def sm_float_a_only(Ginv, k, a):  # leading dims right, but a assumed a float
    g = (Ginv @ k[..., None])[..., 0]
    return Ginv - a * g[..., :, None] * g[..., None, :] / (1.0 + a * (k * g).sum(-1))[..., None, None]


def sm_sign(Ginv, k, a):
    a = torch.as_tensor(a, dtype=Ginv.dtype)
    g = (Ginv @ k[..., None])[..., 0]
    return Ginv + (a / (1 + a * (k * g).sum(-1)))[..., None, None] * g[..., :, None] * g[..., None, :]


def sm_no_denominator(Ginv, k, a):
    a = torch.as_tensor(a, dtype=Ginv.dtype)
    g = (Ginv @ k[..., None])[..., 0]
    return Ginv - a[..., None, None] * g[..., :, None] * g[..., None, :]


def sm_no_weight(Ginv, k, a):
    g = (Ginv @ k[..., None])[..., 0]
    return Ginv - g[..., :, None] * g[..., None, :] / (1 + (k * g).sum(-1))[..., None, None]


def sm_by_inverse(Ginv, k, a):
    return torch.linalg.inv(torch.linalg.inv(Ginv) + torch.as_tensor(a)[..., None, None] * k[..., :, None] * k[..., None, :])


def sm_by_module_alias(Ginv, k, a):
    G = la.inv(Ginv)
    return la.inv(G + torch.as_tensor(a)[..., None, None] * k[..., :, None] * k[..., None, :])


WRONG = [
    (lab07.check_chunk_gram, gram_one_lead, "It was right with leading dims (3,)"),
    (lab07.check_chunk_gram, gram_interleaved, "interleaved"),
    (lab07.check_chunk_gram, gram_running, "running (inclusive) sum"),
    (lab07.check_chunk_gram, gram_transposed, "Transposed"),
    (lab07.check_chunk_gram, gram_whole, "whole sequence"),
    (lab07.check_sherman_morrison, sm_outer, "It was right with leading dims ()"),
    (lab07.check_sherman_morrison, sm_float_a_only, "a is a tensor of the leading shape"),
    (lab07.check_sherman_morrison, sm_sign, "Wrong sign"),
    (lab07.check_sherman_morrison, sm_no_denominator, "denominator"),
    (lab07.check_sherman_morrison, sm_no_weight, "weight a is missing"),
]


@pytest.mark.parametrize("check,wrong,msg", WRONG, ids=[w[1].__name__ for w in WRONG])
def test_typical_wrong_answers_are_refused_with_their_message(check, wrong, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        check(wrong)


@pytest.mark.parametrize("check,student,what", [
    (lab07.check_chunk_gram, gram_via_importlib, "echo_tutor.ska.ops.chunk_stats"),
    (lab07.check_sherman_morrison, sm_by_inverse, "`inv`"),
    (lab07.check_sherman_morrison, sm_by_module_alias, "`inv`"),
])
def test_library_shortcuts_are_refused(check, student, what):
    with pytest.raises(ExerciseError, match="answer for you") as e:
        check(student)
    assert what in str(e.value)


@pytest.mark.parametrize("check,solution", [(lab07.check_chunk_gram, GRAM), (lab07.check_sherman_morrison, SM),
                                            (lab07.check_chunk_gram_triton, lab07._chunk_gram_triton_solution)])
def test_the_solutions_pass(check, solution):
    assert check.__wrapped__(solution) is None
    with pytest.raises(ExerciseError, match="lab's own solution"):
        check(solution)


# ------------------------------------------------------------------------------------ chunk_gram_triton
# Wrong kernels, one mistake each. ROWS/COLS: whether the loads mask rows past T / columns past r.
@triton.jit
def k_good(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(a), b), mask=(i[:, None] < r) & (i[None, :] < r))


@triton.jit
def k_no_row_mask(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] >= 0) & (i[None, :] < r)  # rows past T not masked
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(a), b), mask=(i[:, None] < r) & (i[None, :] < r))


@triton.jit
def k_out_rows_br(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * BR * BR + i[:, None] * BR + i[None, :]  # the block's layout
    tl.store(o, tl.dot(tl.trans(a), b), mask=(i[:, None] < r) & (i[None, :] < r))


@triton.jit
def k_no_store_mask(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(a), b))  # the whole BR x BR block


@triton.jit
def k_transposed(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(b), a), mask=(i[:, None] < r) & (i[None, :] < r))  # kk^T ok


@triton.jit
def k_contiguous_only(ok_ptr, kk_ptr, out_ptr, T, r, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * S + tl.arange(0, S)
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * T * r + t[:, None] * r + i[None, :], mask=m, other=0.0)  # assumes [N, T, r] contiguous
    b = tl.load(kk_ptr + n * T * r + t[:, None] * r + i[None, :], mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(a), b), mask=(i[:, None] < r) & (i[None, :] < r))


@triton.jit
def k_s16(ok_ptr, kk_ptr, out_ptr, T, r, s_on, s_ot, s_or, s_kn, s_kt, s_kr, S: tl.constexpr, BR: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1)
    t = c * 16 + tl.arange(0, 16)  # the chunk size written in
    i = tl.arange(0, BR)
    m = (t[:, None] < T) & (i[None, :] < r)
    a = tl.load(ok_ptr + n * s_on + t[:, None] * s_ot + i[None, :] * s_or, mask=m, other=0.0)
    b = tl.load(kk_ptr + n * s_kn + t[:, None] * s_kt + i[None, :] * s_kr, mask=m, other=0.0)
    o = out_ptr + (n * tl.num_programs(1) + c) * r * r + i[:, None] * r + i[None, :]
    tl.store(o, tl.dot(tl.trans(a), b), mask=(i[:, None] < r) & (i[None, :] < r))


def launcher(kernel, *, floor_chunks=False, one_lead=False, strides=True):
    """A launcher of ``kernel``, right unless told otherwise."""
    def chunk_gram_triton(ok, kk, S):
        if one_lead:
            N, T, r = ok.shape
            lead = [N]
        else:
            *lead, T, r = ok.shape
        a, b = ok.reshape(-1, T, r), kk.reshape(-1, T, r)
        nc = T // S if floor_chunks else triton.cdiv(T, S)
        out = torch.empty(a.shape[0], nc, r, r, device=ok.device, dtype=torch.float32)
        BR = max(16, triton.next_power_of_2(r))
        if strides:
            kernel[(a.shape[0], nc)](a, b, out, T, r, *a.stride(), *b.stride(), S=S, BR=BR)
        else:
            kernel[(a.shape[0], nc)](a, b, out, T, r, S=S, BR=BR)
        return out.reshape(*lead, nc, r, r)
    return chunk_gram_triton


def gram_in_torch(ok, kk, S):  # right values, no kernel
    pad = (-ok.shape[-2]) % S
    z = lambda x: torch.nn.functional.pad(x, (0, 0, 0, pad))  # noqa: E731
    *lead, T, r = z(ok).shape
    return torch.einsum("...csi,...csj->...cij", z(ok).reshape(*lead, T // S, S, r), z(kk).reshape(*lead, T // S, S, r))


def gram_projects_kernel(ok, kk, S):
    mod = importlib.import_module("echo_kernels.ska." + "chunk")
    kern = getattr(mod, "_chunk" + "_stats" + "_kernel")
    *lead, T, r = ok.shape
    a, b = ok.reshape(-1, T, r).contiguous(), kk.reshape(-1, T, r).contiguous()
    nc = triton.cdiv(T, S)
    G = torch.empty(a.shape[0], nc, r, r)
    M, C = torch.empty_like(G), torch.empty_like(G)
    BR = max(16, triton.next_power_of_2(r))
    kern[(a.shape[0], nc)](a, b, b, a, G, M, C, T, r, r, nc, S=S, BR=BR, BP=BR)
    return G.reshape(*lead, nc, r, r)


def gram_projects_wrapper(ok, kk, S):
    kska = importlib.import_module("echo_kernels." + "ska")
    *lead, T, r = ok.shape
    a, b = ok.reshape(-1, T, r), kk.reshape(-1, T, r)
    return getattr(kska, "chunk" + "_stats")(a, b, b, a, S)[0].reshape(*lead, T // S, r, r)


TRITON_WRONG = [
    (launcher(k_no_row_mask), "the last chunk's rows past T"),
    (launcher(k_out_rows_br), "stores past the end of its output"),
    (launcher(k_no_store_mask), "stores past the end of its output"),
    (launcher(k_transposed), "Transposed"),
    (launcher(k_contiguous_only, strides=False), "wrong on a strided view"),
    (launcher(k_s16), "Right for S = 16 only"),
    (launcher(k_good, floor_chunks=True), "The last, partial chunk is a chunk too"),
    (launcher(k_good, one_lead=True), "It was right with leading dims (2,)"),
    (gram_in_torch, "launched no @triton.jit kernel"),
]


@pytest.mark.parametrize("wrong,msg", TRITON_WRONG, ids=["no_row_mask", "out_rows_br", "no_store_mask", "transposed",
                                                         "contiguous_only", "s16", "floor_chunks", "one_lead", "torch"])
def test_triton_mistakes_are_named(wrong, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        lab07.check_chunk_gram_triton(wrong)


def test_a_right_kernel_of_the_learners_passes():
    lab07.check_chunk_gram_triton(launcher(k_good))


@pytest.mark.parametrize("student,what", [(gram_projects_kernel, "_chunk_stats_kernel"),
                                          (gram_projects_wrapper, "chunk_stats")])
def test_the_projects_kernels_are_refused(student, what):
    with pytest.raises(ExerciseError, match="answer for you") as e:
        lab07.check_chunk_gram_triton(student)
    assert what in str(e.value)


def test_the_projects_kernel_by_name_is_refused():
    from echo_kernels.ska import chunk as kska_chunk

    def by_name(ok, kk, S):
        return kska_chunk._chunk_stats_kernel

    with pytest.raises(ExerciseError, match="_chunk_stats_kernel"):
        lab07.check_chunk_gram_triton(by_name)
