"""EchoKV's compressed decode read: the Triton scores kernel (keys rebuilt in registers, never written)
against its twin, and the value maps applied after the softmax average against rebuilding every value row.
The kernel runs under TRITON_INTERPRET=1 on a CPU (conftest.py)."""

import pytest
import torch

from echo_tutor.echokv.ops import rebuild_attend, rebuild_heads, rebuild_scores

from conftest import assert_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(B, J, O, G, T, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    xk, xv = (torch.randn(B, J, T, D, generator=g).to(dtype) for _ in range(2))
    ang = torch.rand(T, D // 2, generator=g) * 6
    ang = torch.cat([ang, ang], -1)
    Wk, Wv = (torch.randn(O, J, D, D, generator=g) / D**0.5 for _ in range(2))
    bk, bv = torch.randn(O, D, generator=g), torch.randn(O, D, generator=g)
    q = torch.randn(B, O, G, D, generator=g).to(dtype)
    return q, xk, xv, ang.cos(), ang.sin(), Wk, bk, Wv, bv


def _full_attention(q, xk, xv, cos, sin, Wk, bk, Wv, bv):
    """What the model computes today: materialise the rebuilt K and V, then softmax attention."""
    k = rebuild_heads(xk.float(), cos, sin, Wk, bk, True)
    v = rebuild_heads(xv.float(), cos, sin, Wv, bv, False)
    s = torch.einsum("bogd,botd->bogt", q.float(), k) / q.shape[-1] ** 0.5
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)


@pytest.mark.parametrize("values", ["after", "rebuilt"])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3, 37, 16), (1, 1, 1, 1, 5, 12), (1, 4, 3, 9, 70, 64)])
def test_rebuild_attend_equals_materialised_attention(values, shape):
    case = _case(*shape, seed=sum(shape))
    out, lse = rebuild_attend(*case, values=values)
    want, want_lse = _full_attention(*case)
    assert_close("out", want, out, 1e-5)
    assert_close("lse", want_lse, lse, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 2, 3, 37, 16), (1, 1, 1, 1, 5, 12), (1, 4, 3, 9, 70, 64)])
def test_triton_scores_match_the_twin(dtype, shape):
    kecho = pytest.importorskip("echo_kernels.echokv")
    q, xk, xv, cos, sin, Wk, bk, Wv, bv = _case(*shape, dtype=dtype, seed=len(shape))
    got = kecho.scores(*(t.to(DEV) for t in (q, xk, cos, sin, Wk, bk)), 0.125)
    assert got.shape == (shape[0], shape[2], shape[3], shape[4]) and got.dtype == torch.float32
    want = rebuild_scores(q.float(), xk.float(), cos, sin, Wk, bk, 0.125)
    assert_close("scores", want, got.cpu(), 1e-5 if dtype == torch.float32 else 2e-3)
    out, _ = rebuild_attend(*(t.to(DEV) for t in (q, xk, xv, cos, sin, Wk, bk, Wv, bv)), scores=kecho.scores)
    assert_close("attend", _full_attention(q.float(), xk.float(), xv.float(), cos, sin, Wk, bk, Wv, bv)[0], out.cpu(),
                 1e-5 if dtype == torch.float32 else 2e-3)


def test_bad_arguments_name_what_was_expected():
    q, xk, xv, cos, sin, Wk, bk, Wv, bv = _case(1, 2, 2, 1, 8, 16)
    with pytest.raises(ValueError, match="values must be one of"):
        rebuild_attend(q, xk, xv, cos, sin, Wk, bk, Wv, bv, values="exact")
    with pytest.raises(ValueError, match=r"\[B, O, G, D\]"):
        rebuild_attend(q[:, :1], xk, xv, cos, sin, Wk, bk, Wv, bv)
    with pytest.raises(ValueError, match="W must have shape"):
        rebuild_attend(q, xk, xv, cos, sin, Wk[:, :1], bk, Wv, bv)
    kecho = pytest.importorskip("echo_kernels.echokv")
    with pytest.raises(ValueError, match="q must have shape"):
        kecho.scores(q[..., :8], xk, cos, sin, Wk, bk, 0.25)


def test_scores_precision_is_checked_and_tf32_runs():
    kecho = pytest.importorskip("echo_kernels.echokv")
    q, xk, _, cos, sin, Wk, bk, _, _ = _case(1, 2, 1, 2, 20, 16)
    with pytest.raises(ValueError, match="precision"):
        kecho.scores(q, xk, cos, sin, Wk, bk, 0.25, precision="bf16")
    got = kecho.scores(*(t.to(DEV) for t in (q, xk, cos, sin, Wk, bk)), 0.25, precision="tf32")
    assert_close("tf32 scores", rebuild_scores(q, xk, cos, sin, Wk, bk, 0.25), got.cpu(), 2e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("ieee", 1e-3), ("tf32", 5e-3)])
def test_gpu_scores_realistic(precision, tol):
    kecho = pytest.importorskip("echo_kernels.echokv")
    q, xk, xv, cos, sin, Wk, bk, Wv, bv = _case(2, 8, 2, 3, 2048, 64, dtype=torch.float16)
    got = kecho.scores(*(t.cuda() for t in (q, xk, cos, sin, Wk, bk)), 0.125, precision=precision)
    assert_close("gpu scores", rebuild_scores(q.float(), xk.float(), cos, sin, Wk, bk, 0.125), got.cpu(), tol)
