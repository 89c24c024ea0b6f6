"""The sparse cache beside a converted layer's window (``MixerSpec.sparse``): what it keeps, what it costs, and
that decoding and the parallel forward agree (the latter is in tests/test_convert.py's spec lists)."""

import pytest
import torch
from echokv_fixtures import tiny  # noqa: F401  (fixture)

from echo_tutor.convert import ConvertedAttention, MixerSpec
from echo_tutor.convert.passkey import readout_shut
from echo_tutor.convert.spec import base_variant, parse_variant
from echo_tutor.convert.study import layer_inputs, new_mixer

VARIANTS = ["window+ska", "window+linear"]


def _kv(T=60, H=2, D=16, seed=0, planted=30):
    """Keys and values from a few directions, one pair (``planted``) off them with a large value."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(3, D, generator=g)
    k = torch.einsum("bthc,cd->bthd", torch.randn(1, T, H, 3, generator=g), basis)
    v = torch.einsum("bthc,cd->bthd", torch.randn(1, T, H, 3, generator=g), basis)
    k[:, planted] = 3 * torch.randn(H, D, generator=g)
    v[:, planted] = 10 * torch.randn(H, D, generator=g)
    return k, v


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_keeps_the_pair_the_statistics_recall_worst(tiny, variant):  # noqa: F811
    m = new_mixer(tiny, 1, MixerSpec(variant, window=8, sinks=2, rank=8, sparse=2))
    D = m.head_dim
    k, v = _kv(D=D, H=m.n_kv)
    vis = m._sparse_visible(k, v)  # [B, Hkv, T, T]
    assert vis[0, :, -1, 30].all()  # the planted pair is read at the last query, long after it left the window
    assert vis.sum(-1).max() <= 2  # never more than S pairs
    assert not vis[0, :, :10].any() and vis[0, :, 10].sum(-1).eq(1).all()  # token 2 leaves at query A + W = 10
    assert not vis[0, :, :38, 30].any()  # the planted pair enters when it leaves the window (30 + W)
    # without the planted pair, the cache holds other tokens at the end
    k2, v2 = _kv(D=D, H=m.n_kv, planted=5)
    assert not m._sparse_visible(k2, v2)[0, :, -1, 30].any()


def test_the_trace_shows_each_tokens_error_and_what_is_held(tiny):  # noqa: F811
    m = new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=2, rank=8, sparse=3))
    x = torch.randn(1, 40, tiny.config.hidden_size, generator=torch.Generator().manual_seed(2))
    tr = m.sparse_trace(x)
    err, held = tr["error"], tr["held"]
    assert err.shape == held.shape == (1, m.n_kv, 40)
    assert err[..., :2].isnan().all() and err[..., 32:].isnan().all() and not err[..., 2:32].isnan().any()
    assert held.sum(-1).eq(3).all() and not held[..., :2].any() and not held[..., 32:].any()
    _, k, v = m._qkv(x)
    assert torch.equal(held, m._sparse_visible(k, v)[:, :, -1])
    with pytest.raises(ValueError, match="sparse_trace: this layer keeps no sparse cache"):
        new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=2, rank=8)).sparse_trace(x)


def test_the_ridge_error_is_leave_one_out(tiny):  # noqa: F811
    """The score of a cached pair, measured with statistics that include it, is the residual of the ridge fitted
    without it (the PRESS identity)."""
    m = new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=0, rank=8, sparse=2, eps=0.1))
    g = torch.Generator().manual_seed(4)
    kf, v = torch.randn(1, 20, 1, 8, generator=g), torch.randn(1, 20, 1, 5, generator=g)
    Gi, Wt = (x[:, -1] for x in m._recall_stats_seq(kf, v))  # statistics of all 20 pairs
    err = m._recall_error((Gi, Wt), kf[:, 7:8].transpose(1, 2), v[:, 7:8].transpose(1, 2))[0, 0, 0]
    rest = [i for i in range(20) if i != 7]
    Gi7, Wt7 = (x[:, -1] for x in m._recall_stats_seq(kf[:, rest], v[:, rest]))
    direct = ((v[0, 7, 0] - Wt7[0, 0] @ kf[0, 7, 0]) ** 2).sum()
    torch.testing.assert_close(err, direct, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_costs_what_the_same_number_of_window_tokens_costs(tiny, variant):  # noqa: F811
    spec = MixerSpec(variant, window=8, sinks=2, rank=8, sparse=4)
    m = new_mixer(tiny, 0, spec)
    longer = MixerSpec(variant, window=12, sinks=2, rank=8)
    assert m.state_nbytes() == ConvertedAttention.state_nbytes_for(longer, m.n_kv, m.head_dim)
    x = torch.randn(1, 120, tiny.config.hidden_size)
    rope = layer_inputs(tiny, 120, "cpu")
    st, seen = m.init_state(1), set()
    for t in range(120):
        _, st = m.step(x[:, t], (rope[0][:, t], rope[1][:, t]), st)
        if t >= 10:  # the window is full (the sinks and W tokens)
            seen.add(st.nbytes)
    assert seen == {m.state_nbytes()}  # the budget is held, with the cache full, from then to the last token


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_cache_changes_only_what_is_past_the_window(tiny, variant):  # noqa: F811
    x = torch.randn(1, 50, tiny.config.hidden_size, generator=torch.Generator().manual_seed(1))
    rope = layer_inputs(tiny, 50, "cpu")
    plain = new_mixer(tiny, 2, MixerSpec(variant, window=8, sinks=2, rank=8))
    cached = new_mixer(tiny, 2, MixerSpec(variant, window=8, sinks=2, rank=8, sparse=4))
    cached.load_state_dict(plain.state_dict())
    a, b = plain(x, position_embeddings=rope)[0], cached(x, position_embeddings=rope)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])  # no token has left the window yet
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4
    with readout_shut({2: cached}):  # shut, the statistics still choose the cache: it is still read
        shut = cached(x, position_embeddings=rope)[0]
    with readout_shut({2: plain}):
        assert (shut[:, 10:] - plain(x, position_embeddings=rope)[0][:, 10:]).abs().max() > 1e-4


def test_variant_names_with_a_cache_or_another_window():
    assert parse_variant("window+ska:K1:S16") == MixerSpec("window+ska", power_steps=1, sparse=16)
    assert parse_variant("window:W80").window == 80
    assert parse_variant("window+ska:K0:G50") == MixerSpec("window+ska", power_steps=0, fixed_gate=0.5)
    assert base_variant("window+ska:K1:G50") == "window+ska:K1"
    assert base_variant("window+ska:K1:S16") == "window+ska:K1" and base_variant("window+linear:S8") == "window+linear"
    with pytest.raises(ValueError, match="':S<n>' \\(sparse pairs\\)"):
        parse_variant("window+ska:K1:X3")
    with pytest.raises(ValueError, match="sparse: a cache"):
        parse_variant("window:S4")


def test_a_fixed_gate_gives_the_statistics_that_share_past_the_window(tiny):  # noqa: F811
    m = new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=2, rank=8, fixed_gate=0.3))
    x = torch.randn(1, 30, tiny.config.hidden_size)
    g = m.gate(x)
    assert torch.equal(g[..., :10], torch.zeros_like(g[..., :10])) and torch.allclose(g[..., 10:], torch.tensor(0.3))
    rope = layer_inputs(tiny, 30, "cpu")
    learned = new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=2, rank=8))
    learned.load_state_dict(m.state_dict())
    assert (m(x, position_embeddings=rope)[0][:, 10:] - learned(x, position_embeddings=rope)[0][:, 10:]).abs().max() > 1e-4
