"""The two SKA references against each other and against independent closed forms (float64)."""

import pytest
import torch

from conftest import assert_close
from echo_tutor.ska import SKAState, ska_chunked, ska_readout, ska_recurrent
from echo_tutor.ska.reference import safe_cholesky

B, H, R, P = 2, 2, 5, 3


def make(T, seed=0, dtype=torch.float64, grad=False, mask=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, R, generator=g, dtype=dtype)
    k = torch.randn(B, T, H, R, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, P, generator=g, dtype=dtype)
    beta = torch.rand(B, T, H, generator=g, dtype=dtype)
    w = (torch.rand(B, T, H, generator=g) > 0.25).to(dtype) if mask else None
    if grad:
        for x in (q, k, v, beta):
            x.requires_grad_(True)
    return q, k, v, beta, w


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("mode", ["token", "chunk"])
@pytest.mark.parametrize("spectral_norm", [False, True], ids=["plain", "specnorm"])
def test_recurrent_equals_chunked_forward_and_backward(T, mode, spectral_norm):
    kw = dict(power_steps=2, eps=1e-2, eta=1.3, gamma=torch.tensor([0.8, 1.2], dtype=torch.float64),
              spectral_norm=spectral_norm, mode=mode, chunk_size=64)
    q, k, v, beta, w = make(T, grad=True)
    y1, s1 = ska_recurrent(q, k, v, beta, weights=w, **kw)
    dy = torch.randn_like(y1)
    g1 = torch.autograd.grad((y1 * dy).sum(), (q, k, v, beta), allow_unused=True)
    y2, s2 = ska_chunked(q, k, v, beta, weights=w, **kw)
    g2 = torch.autograd.grad((y2 * dy).sum(), (q, k, v, beta), allow_unused=True)
    if mode == "chunk" and T <= 64:
        assert y2.abs().max() == 0, "chunk 0 must read an empty operator and output zeros"
    else:
        assert_close("y", y1, y2)
    for name, a, b in zip(("G", "M", "C", "k_prev"), s1.tensors(), s2.tensors()):
        assert_close(name, a, b)
    assert s1.count == s2.count == T
    for name, a, b, x in zip(("dq", "dk", "dv", "dbeta"), g1, g2, (q, k, v, beta)):
        a = torch.zeros_like(x) if a is None else a  # chunk mode, one chunk: y does not depend on x
        b = torch.zeros_like(x) if b is None else b
        if a.abs().max() > 0:
            assert_close(name, a, b, 1e-8)
        else:
            assert b.abs().max() == 0


def test_k0_is_ridge_regression_by_lstsq():
    """K = 0, token mode: y_t = B_t q_t with B_t the ridge solution on tokens <= t, solved by lstsq."""
    T, eps = 17, 0.05
    q, k, v, beta, _ = make(T, seed=1, mask=False)
    y, _ = ska_chunked(q, k, v, beta, power_steps=0, eps=eps, chunk_size=8)
    for b in range(B):
        for h in range(H):
            for t in (0, 3, 16):
                sw = beta[b, : t + 1, h].sqrt()[:, None]
                X = torch.cat([sw * k[b, : t + 1, h], eps**0.5 * torch.eye(R, dtype=k.dtype)])  # [t+1+r, r]
                Y = torch.cat([sw * v[b, : t + 1, h], torch.zeros(R, P, dtype=k.dtype)])  # [t+1+r, P]
                Bt = torch.linalg.lstsq(X, Y).solution  # [r, P]: min sum beta ||v - B^T k||^2 + eps ||B||^2
                assert_close(f"y[{b},{t},{h}]", q[b, t, h] @ Bt, y[b, t, h], 1e-10)


def test_whitened_route_equals_closed_form():
    """y = B_v L A_w^K L^-1 q (whitened) equals C G^-1 (M G^-1)^K q, and spectral norm is a scalar s^K."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(H, 40, R, generator=g, dtype=torch.float64)
    G = X.transpose(-1, -2) @ X + 0.1 * torch.eye(R, dtype=torch.float64)  # [H, r, r]
    M = torch.randn(H, R, R, generator=g, dtype=torch.float64) * 3
    C = torch.randn(H, P, R, generator=g, dtype=torch.float64)
    q = torch.randn(H, 4, R, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(G)
    Linv = torch.linalg.inv(L)
    A_w = Linv @ M @ Linv.transpose(-1, -2)
    B_v = C @ torch.linalg.inv(G)
    for K in (0, 1, 2, 4):
        whitened = B_v @ L @ torch.linalg.matrix_power(A_w, K) @ Linv @ q.transpose(-1, -2)  # [H, P, n]
        y = ska_readout(G, M, C, q, power_steps=K)
        assert_close(f"K={K}", whitened.transpose(-1, -2), y, 1e-10)
        gamma = 1.3
        s = gamma / torch.linalg.matrix_norm(A_w, ord=2).clamp_min(1.0)  # [H]
        y_sn = ska_readout(G, M, C, q, power_steps=K, gamma=gamma, spectral_norm=True, spectral_iters=None)
        assert_close(f"K={K} specnorm", (s[:, None, None] ** K) * y, y_sn, 1e-10)


def test_power_iteration_estimates_sigma_max():
    from echo_tutor.ska import sigma_max

    A = torch.randn(8, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = torch.linalg.matrix_norm(A, ord=2)
    est = sigma_max(A, 50)
    assert_close("sigma", exact, est, 1e-6)
    assert (sigma_max(A, 2) <= exact + 1e-12).all(), "power iteration under-estimates sigma_max"


@pytest.mark.parametrize("mode", ["token", "chunk"])
def test_streaming_in_pieces_equals_one_call(mode):
    """Feeding the sequence in pieces, carrying the state, equals one call (pieces on chunk boundaries)."""
    T, S = 100, 16
    q, k, v, beta, w = make(T, seed=4)
    kw = dict(mode=mode, chunk_size=S, power_steps=1)
    y_all, s_all = ska_chunked(q, k, v, beta, weights=w, **kw)
    cuts = [0, 32, 48, 96, 100]
    st, ys = None, []
    for a, b in zip(cuts[:-1], cuts[1:]):
        y, st = ska_chunked(q[:, a:b], k[:, a:b], v[:, a:b], beta[:, a:b], weights=w[:, a:b], state=st, **kw)
        ys.append(y)
    assert_close("y", y_all, torch.cat(ys, 1))
    assert_close("G", s_all.G, st.G)
    assert_close("M", s_all.M, st.M)


def test_scanning_single_tokens_equals_forward():
    T = 30
    q, k, v, beta, w = make(T, seed=5)
    y_all, _ = ska_chunked(q, k, v, beta, weights=w, power_steps=2, spectral_norm=True)
    st, ys = None, []
    for t in range(T):
        y, st = ska_recurrent(q[:, t:t + 1], k[:, t:t + 1], v[:, t:t + 1], beta[:, t:t + 1],
                              weights=w[:, t:t + 1], state=st, power_steps=2, spectral_norm=True)
        ys.append(y)
    assert_close("y", y_all, torch.cat(ys, 1))


def test_prefix_mask_zero_means_read_only():
    """A token with w_t = 0 does not change the statistics (and M skips both its terms)."""
    T = 12
    q, k, v, beta, _ = make(T, seed=6, mask=False)
    w = torch.ones(B, T, H, dtype=torch.float64)
    w[:, 6:] = 0
    _, s_masked = ska_chunked(q, k, v, beta, weights=w)
    _, s_prefix = ska_chunked(q[:, :6], k[:, :6], v[:, :6], beta[:, :6])
    assert_close("G", s_prefix.G, s_masked.G)
    assert_close("M", s_prefix.M, s_masked.M)
    assert_close("C", s_prefix.C, s_masked.C)


@pytest.mark.parametrize("T", [10, 10_000])
def test_state_bytes_do_not_grow(T):
    r, Pv, Hh = 8, 6, 3
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, T, Hh, r, generator=g)
    k = torch.randn(1, T, Hh, r, generator=g)
    v = torch.randn(1, T, Hh, Pv, generator=g)
    _, st = ska_chunked(q, k, v, mode="chunk", chunk_size=256)
    assert st.G.dtype == torch.float32
    assert st.nbytes == (2 * r * r + Pv * r + r) * Hh * 4


def test_rank_deficient_gram_is_finite():
    """Fewer keys than r and a tiny eps: plain Cholesky fails, the jitter fallback keeps output finite."""
    g = torch.Generator().manual_seed(8)
    T, r = 3, 16
    k = torch.randn(1, T, 1, r, generator=g) * 100
    q = torch.randn(1, T, 1, r, generator=g)
    v = torch.randn(1, T, 1, 4, generator=g)
    y, st = ska_chunked(q, k, v, eps=1e-12, power_steps=2)
    assert torch.linalg.cholesky_ex(st.G)[1].item() != 0, "this G should defeat a plain Cholesky"
    assert torch.isfinite(y).all()
    assert torch.isfinite(safe_cholesky(st.G)).all()


def test_float32_inputs_keep_float32_and_match_float64():
    q, k, v, beta, w = make(70, seed=9)
    y64, _ = ska_chunked(q, k, v, beta, weights=w, mode="chunk", chunk_size=16, eps=0.1)
    y32, st = ska_chunked(q.float(), k.float(), v.float(), beta.float(), weights=w.float(), mode="chunk", chunk_size=16, eps=0.1)
    assert y32.dtype == torch.float32 and st.G.dtype == torch.float32
    assert_close("y", y64, y32, 1e-4)


def test_state_zeros_and_helpers():
    st = SKAState.zeros(2, 3, 4, 5, eps=0.5)
    assert torch.equal(st.G[1, 2], 0.5 * torch.eye(4))
    assert st.shape == (2, 3, 4, 5)
    assert st.to(dtype=torch.float64).G.dtype == torch.float64
    assert not st.detach().G.requires_grad


def test_decode_step_keeps_the_carried_inverse_symmetric_and_close_in_float32():
    """The Sherman-Morrison term formed as c (g g^T): exactly symmetric in float32, so the carried G^-1 does not
    drift (written (c g) g^T it grew to 2e-3 after 4,096 tokens; lab 02, section 8)."""
    from echo_tutor.ska import ops

    g = torch.Generator().manual_seed(5)
    T, H, r, P, eps = 1024, 2, 16, 4, 1e-3
    k = torch.nn.functional.normalize(torch.randn(T, H, r, generator=g, dtype=torch.float64), dim=-1)
    b = torch.rand(T, H, generator=g, dtype=torch.float64)
    G64 = eps * torch.eye(r, dtype=torch.float64).expand(H, r, r).clone()
    state = [G64.float(), G64.inverse().float(), torch.zeros(H, r, r), torch.zeros(H, P, r), torch.zeros(H, r)]
    ones = torch.ones(H)
    for t in range(T):
        k32 = k[t].float()
        state = list(ops.decode_step(*state, k32, k32, torch.zeros(H, P), b[t].float(), ones, 0, ones)[1:])
        G64 = G64 + b[t][:, None, None] * k[t][:, :, None] * k[t][:, None, :]
    Ginv = state[1]
    assert torch.equal(Ginv, Ginv.mT)
    exact = torch.linalg.inv(G64)
    assert ((Ginv.double() - exact).norm() / exact.norm()) < 1e-5


def test_state_to_and_detach_carry_every_field():
    """SKAState.to / detach build the state field by field (Dynamo at the torch floor cannot trace
    dataclasses.replace): every field must come through, the optional tensors included."""
    import dataclasses

    st = SKAState.zeros(2, 3, 4, 5)
    st.count = 7
    st.key_scale = torch.ones(2, 3)
    st.G_inv = torch.eye(4).expand(2, 3, 4, 4).clone().requires_grad_()
    for out in (st.to(torch.float64), st.detach()):
        for f in dataclasses.fields(SKAState):
            a, b = getattr(st, f.name), getattr(out, f.name)
            if isinstance(a, torch.Tensor):
                assert isinstance(b, torch.Tensor) and torch.equal(a.double(), b.double()), f.name
            else:
                assert a == b, f.name
    assert st.to(torch.float64).G_inv.dtype == torch.float64 and not st.detach().G_inv.requires_grad
    assert len(st.tensors()) == 6


def test_token_statistics_are_the_states_written_one_token_at_a_time():
    """token_statistics (every prefix at once) and write_token (one token) build the same statistics, and the
    token-mode references read them: the conversion mixers (echo_tutor.convert) use these two, not a copy."""
    from echo_tutor.ska import token_statistics, write_token

    q, k, v, _, w = make(17, seed=3)
    G, M, C = token_statistics(k, v, w, eps=0.1)
    assert G.shape == (B, 17, H, R, R) and M.shape == (B, 17, H, R, R) and C.shape == (B, 17, H, P, R)
    st = SKAState.zeros(B, H, R, P, eps=0.1, dtype=torch.float64)
    for t in range(17):
        st = write_token(st, k[:, t], v[:, t], w[:, t], w[:, t])
        for name, got, ref in (("G", st.G, G[:, t]), ("M", st.M, M[:, t]), ("C", st.C, C[:, t])):
            assert_close(f"{name} at t={t}", ref, got)
    assert st.count == 17
    y_ref, st_ref = ska_recurrent(q, k, v, weights=w, eps=0.1, power_steps=1)
    assert_close("final G", G[:, -1], st_ref.G)
    y = ska_readout(G, M, C, q[..., None, :], power_steps=1)[..., 0, :]  # every token reads its own statistics
    assert_close("readout", y_ref, y)


def test_write_token_leaves_the_state_it_was_given():
    from echo_tutor.ska import write_token

    st = SKAState.zeros(1, 1, 2, 2)
    new = write_token(st, torch.ones(1, 1, 2), torch.ones(1, 1, 2))
    assert torch.equal(st.G, 1e-3 * torch.eye(2)[None, None]) and st.count == 0
    assert torch.equal(new.G, st.G + 1) and new.count == 1 and torch.equal(new.k_prev, torch.ones(1, 1, 2))


def test_token_statistics_bad_arguments():
    from echo_tutor.ska import token_statistics

    with pytest.raises(ValueError, match="k"):
        token_statistics(torch.zeros(2, 3, 4), torch.zeros(2, 3, 1, 4))
    with pytest.raises(ValueError, match="v"):
        token_statistics(torch.zeros(2, 3, 1, 4), torch.zeros(2, 5, 1, 4))
    with pytest.raises(ValueError, match="eps"):
        token_statistics(torch.zeros(2, 3, 1, 4), torch.zeros(2, 3, 1, 4), eps=0.0)
