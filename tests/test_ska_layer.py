import warnings

import pytest
import torch

from conftest import assert_close, scan_steps
from echo_tutor import backends
from echo_tutor.ska import SKAState, SpectralKoopmanAttention


def layer64(**kw):
    torch.manual_seed(0)
    m = SpectralKoopmanAttention(24, 3, 6, **kw).double()
    torch.nn.init.normal_(m.w_o.weight, std=0.3)  # zero-init would make every comparison trivial
    if m.gate is not None:
        torch.nn.init.normal_(m.gate.weight, std=0.3)
    return m


def test_fresh_layer_is_a_no_op_and_inits_are_as_documented():
    m = SpectralKoopmanAttention(32, 4, 8)
    y, _ = m(torch.randn(2, 10, 32))
    assert y.abs().max() == 0
    Wk = m.w_k.weight  # [H*r, d], orthogonal rows
    assert torch.allclose(Wk @ Wk.T, torch.eye(32), atol=1e-5)
    assert torch.allclose(torch.sigmoid(m.gate(torch.randn(3, 32))), torch.full((3, 4), 0.5))


@pytest.mark.parametrize("power_steps", [0, 2])
def test_step_scan_equals_forward_token_mode(power_steps):
    m = layer64(mode="token", power_steps=power_steps)
    x = torch.randn(2, 37, 24, dtype=torch.float64)
    y, st_f = m(x)
    ys, st = scan_steps(m, x, m.init_state(2))
    assert_close("y", y, ys)
    assert_close("G", st_f.G, st.G)
    assert st.count == 37


def test_chunk_mode_forward_then_step_continues_token_causally():
    m = layer64(mode="chunk", chunk_size=8)
    x = torch.randn(1, 20, 24, dtype=torch.float64)
    _, st = m(x[:, :16])
    y_step, _ = m.step(x[:, 16], st)
    m.mode = "token"
    y_tok, _ = m(x[:, :17])
    assert_close("step after chunk forward", y_tok[:, 16], y_step)


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_layer_is_causal(mode):
    m = layer64(mode=mode, chunk_size=8)
    x = torch.randn(2, 30, 24, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 17:] = torch.randn(2, 13, 24, dtype=torch.float64)
    y, _ = m(x)
    y2, _ = m(x2)
    assert_close("prefix", y[:, :17], y2[:, :17], 1e-12)
    assert (y[:, 17:] - y2[:, 17:]).abs().max() > 1e-6


def test_seqmax_looks_ahead_as_documented():
    """The paper's key normalisation uses the largest key norm of the whole sequence: not causal."""
    m = layer64(key_norm="seqmax", mode="token")
    x = torch.randn(1, 12, 24, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] *= 50  # a huge last token
    y, st = m(x)
    y2, _ = m(x2)
    assert (y[:, :5] - y2[:, :5]).abs().max() > 1e-6
    assert st.key_scale.shape == (1, 3)
    assert m.state_nbytes() == (2 * 36 + 8 * 6 + 6) * 3 * 4 + 3 * 4


def test_mask_zero_tokens_do_not_write():
    m = layer64(mode="token")
    x = torch.randn(1, 10, 24, dtype=torch.float64)
    mask = torch.ones(1, 10)
    mask[:, 5:] = 0
    _, st_masked = m(x, mask=mask)
    _, st_prefix = m(x[:, :5])
    assert_close("C", st_prefix.C, st_masked.C)


def test_low_precision_input_keeps_float32_statistics():
    m = SpectralKoopmanAttention(32, 4, 8).to(torch.bfloat16)
    y, st = m(torch.randn(2, 70, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert st.G.dtype == torch.float32


def test_state_nbytes_formula_and_constant_in_T():
    m = SpectralKoopmanAttention(32, 4, 8, head_dim=16)
    r, P, H = 8, 16, 4
    assert m.state_nbytes() == (2 * r * r + P * r + r) * H * 4
    assert m.state_nbytes(batch=3) == 3 * m.state_nbytes()
    _, s_short = m(torch.randn(1, 10, 32))
    _, s_long = m(torch.randn(1, 2000, 32))
    assert s_short.nbytes == s_long.nbytes == m.state_nbytes()


def test_gradients_reach_every_parameter():
    m = SpectralKoopmanAttention(32, 4, 8, chunk_size=16)
    torch.nn.init.normal_(m.w_o.weight, std=0.1)
    y, _ = m(torch.randn(2, 50, 32))
    y.pow(2).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_backend_reference_and_triton_fallback_are_recorded():
    m = SpectralKoopmanAttention(16, 2, 4, backend="reference")
    m(torch.randn(1, 5, 16))
    assert m.last_backend == "reference"
    backends._warned.discard("ska")
    m = SpectralKoopmanAttention(16, 2, 4, backend="triton")
    with pytest.warns(RuntimeWarning, match="falling back"):
        m(torch.randn(1, 5, 16))
    assert m.last_backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        m(torch.randn(1, 5, 16))


def test_init_state_is_fresh():
    m = SpectralKoopmanAttention(16, 2, 4, eps=0.25)
    st = m.init_state(3)
    assert isinstance(st, SKAState) and st.count == 0
    assert torch.equal(st.G[0, 0], 0.25 * torch.eye(4))
