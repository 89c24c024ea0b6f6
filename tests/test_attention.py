import pytest
import torch

from conftest import assert_close, scan_steps
from echo_tutor.attention import CausalSelfAttention, KVCache, LinearAttention, apply_rope


@pytest.mark.parametrize("cls", [CausalSelfAttention, LinearAttention])
def test_step_scan_equals_forward(cls):
    torch.manual_seed(0)
    m = cls(32, 4).double()
    x = torch.randn(2, 70, 32, dtype=torch.float64)
    y, _ = m(x)
    ys, _ = scan_steps(m, x, m.init_state(2))
    assert_close("y", y, ys)


@pytest.mark.parametrize("cls", [CausalSelfAttention, LinearAttention])
def test_prefill_then_continue_equals_one_call(cls):
    torch.manual_seed(1)
    m = cls(32, 4).double()
    x = torch.randn(1, 50, 32, dtype=torch.float64)
    y, _ = m(x)
    y1, st = m(x[:, :30])
    y2, _ = m(x[:, 30:], st)
    assert_close("y", y, torch.cat([y1, y2], 1))


@pytest.mark.parametrize("cls", [CausalSelfAttention, LinearAttention])
def test_causal(cls):
    torch.manual_seed(2)
    m = cls(32, 4).double()
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 20:] += 1
    assert_close("prefix", m(x)[0][:, :20], m(x2)[0][:, :20], 1e-12)


def test_kv_cache_grows_linearly_and_linear_attention_does_not():
    a = CausalSelfAttention(32, 4)
    la = LinearAttention(32, 4)
    for T in (10, 100):
        _, cache = a(torch.randn(1, T, 32))
        assert isinstance(cache, KVCache) and cache.length == T
        assert cache.nbytes == a.state_nbytes(context=T) == 2 * T * 32 * 4
        _, st = la(torch.randn(1, T, 32))
        assert st.nbytes == la.state_nbytes() == 4 * 8 * 8 * 4


def test_rope_is_relative():
    """q.k after RoPE depends only on the position difference."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    dots = [(apply_rope(q, torch.tensor([p + 5])) * apply_rope(k, torch.tensor([p]))).sum() for p in (0, 7, 100)]
    assert_close("d0 vs d7", dots[0], dots[1], 1e-12)
    assert_close("d0 vs d100", dots[0], dots[2], 1e-12)


def test_bad_config_and_input():
    with pytest.raises(ValueError, match="even head size"):
        CausalSelfAttention(30, 4)
    with pytest.raises(ValueError, match="n_heads must be >= 1"):
        LinearAttention(32, 0)
    with pytest.raises(ValueError, match="x must have 3 dims"):
        CausalSelfAttention(32, 4)(torch.randn(32))
    with pytest.raises(ValueError, match="state must be a KVCache"):
        CausalSelfAttention(32, 4).step(torch.randn(1, 32), None)
