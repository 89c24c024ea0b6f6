import math

import pytest
import torch

from echo_tutor.koopman import dmd, koopman_operator, koopman_spectrum
from echo_tutor.ska import ska_chunked


def rotation(theta, rho):
    c, s = math.cos(theta), math.sin(theta)
    return rho * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


@pytest.mark.parametrize("theta,rho", [(0.3, 0.9), (1.1, 0.99), (2.5, 0.7)])
def test_dmd_recovers_damped_rotation(theta, rho):
    A = rotation(theta, rho)
    Z = [torch.tensor([1.0, 0.5], dtype=torch.float64)]
    for _ in range(30):
        Z.append(A @ Z[-1])
    Z = torch.stack(Z)
    res = dmd(Z[:-1], Z[1:])
    true = torch.tensor([rho * complex(math.cos(theta), math.sin(theta)), rho * complex(math.cos(theta), -math.sin(theta))],
                        dtype=torch.complex128)
    got = res.eigenvalues
    # match the conjugate pair regardless of order
    err = min((got - true).abs().max(), (got - true.flip(0)).abs().max())
    assert err < 1e-8
    assert torch.allclose(res.operator, A, atol=1e-8)


def test_rank_truncated_dmd_on_embedded_system():
    """A 2-D rotation observed through a random 6x2 lift: rank-2 exact DMD recovers its eigenvalues."""
    g = torch.Generator().manual_seed(0)
    A = rotation(0.4, 0.95)
    lift = torch.randn(6, 2, generator=g, dtype=torch.float64)
    z = torch.tensor([1.0, -0.3], dtype=torch.float64)
    Z = []
    for _ in range(40):
        Z.append(lift @ z)
        z = A @ z
    Z = torch.stack(Z)
    res = dmd(Z[:-1], Z[1:], rank=2)
    assert res.modes.shape == (6, 2)
    assert torch.allclose(res.eigenvalues.abs(), torch.full((2,), 0.95, dtype=torch.float64), atol=1e-8)
    assert abs(abs(res.eigenvalues[0].angle()) - 0.4) < 1e-8
    # the modes are eigenvectors of the full operator
    for i in range(2):
        assert torch.allclose(res.operator.to(res.modes.dtype) @ res.modes[:, i], res.eigenvalues[i] * res.modes[:, i], atol=1e-8)


def test_ska_state_holds_the_dmd_operator():
    """Keys that follow k_t = A k_{t-1}: the state's M G^-1 is the DMD fit of the key trajectory, with
    one difference: G also counts the last key (k_{T-1} k_{T-1}^T), a term that fades as T grows."""
    A = rotation(0.5, 0.999)
    k = [torch.tensor([1.0, 0.0], dtype=torch.float64)]
    for _ in range(399):
        k.append(A @ k[-1])
    k = torch.stack(k)  # [T, 2]
    eps = 1e-9
    v = torch.randn(1, 400, 1, 3, dtype=torch.float64)
    _, st = ska_chunked(k[None, :, None], k[None, :, None], v, eps=eps)
    op = koopman_operator(st)
    assert op.A.shape == (1, 1, 2, 2)
    X, Y = k[:-1], k[1:]
    exact = (Y.T @ X) @ torch.linalg.inv(X.T @ X + torch.outer(k[-1], k[-1]) + eps * torch.eye(2, dtype=torch.float64))
    assert torch.allclose(op.A[0, 0], exact, atol=1e-10)
    assert torch.allclose(op.A[0, 0], dmd(X, Y).operator, atol=5e-3)  # the boundary term, ~1/T
    ev = koopman_spectrum(st)
    assert ev.shape == (1, 1, 2) and ev.is_complex()
    assert torch.allclose(ev.abs(), torch.full_like(ev.abs(), 0.999), atol=5e-3)
    assert abs(abs(ev[0, 0, 0].angle()) - 0.5) < 5e-3
    # whitened and plain operators are similar: same spectrum, A = L A_w L^-1
    assert torch.allclose(torch.linalg.eigvals(op.A).abs().sort().values, ev.abs().sort().values, atol=1e-8)
    assert torch.allclose(op.L @ op.A_w @ torch.linalg.inv(op.L), op.A, atol=1e-8)


def test_dmd_with_ridge_shrinks_and_rank_truncates():
    from echo_tutor.koopman import oscillators

    Y, true = oscillators([0.25, 1.1], [0.98, 0.85], 200, dim=6, seed=0)
    est = dmd(Y[:-1], Y[1:], rank=4).eigenvalues
    for t in true:
        assert (est - t).abs().min() < 1e-6  # 0.85^200 makes late snapshots tiny: conditioning
    shrunk = dmd(Y[:-1], Y[1:], eps=1e3, rank=4).eigenvalues
    assert shrunk.abs().max() < est.abs().max()


def test_damped_rotation_generator():
    from echo_tutor.koopman import damped_rotation

    Z = damped_rotation(0.3, 0.9, 10)
    assert Z.shape == (10, 2) and torch.allclose(Z[1].norm(), torch.tensor(0.9, dtype=torch.float64))
    noisy = damped_rotation(0.3, 0.9, 10, noise=0.1, seed=1)
    assert not torch.allclose(noisy, Z) and torch.equal(noisy, damped_rotation(0.3, 0.9, 10, noise=0.1, seed=1))
    with pytest.raises(ValueError, match="rho must be > 0"):
        damped_rotation(0.3, -1.0, 10)


def test_model_spectra_per_head_and_errors():
    from echo_tutor.koopman import model_spectra
    from echo_tutor.models import build

    m = build("synth1m-echo", vocab_size=32, d_model=32, n_heads=4, d_state=8, ska_rank=6)
    sp = model_spectra(m, torch.randint(0, 32, (40,)))
    assert sorted(sp) == [2, 3]
    assert all(v.shape == (4, 6) and v.is_complex() for v in sp.values())
    assert (sp[2].abs()[:, :-1] >= sp[2].abs()[:, 1:] - 1e-12).all(), "sorted by decreasing modulus"
    with pytest.raises(ValueError, match="no SKA mixer"):
        model_spectra(build("synth1m-ssm", vocab_size=32, d_model=32, n_heads=4, d_state=8), torch.randint(0, 32, (10,)))
    with pytest.raises(ValueError, match=r"ids must be a tensor of shape \[T\]"):
        model_spectra(m, torch.randint(0, 32, (2, 10)))


def test_mode_energies():
    from echo_tutor.koopman import mode_energies

    ev = torch.tensor([0.9 + 0.1j, 0.5, 0.1j], dtype=torch.complex128)
    e0 = mode_energies(ev, 0)
    assert torch.allclose(e0, torch.ones(3, dtype=torch.float64))
    e2 = mode_energies(ev, 2, gamma=1.0, sigma=1.2)
    assert torch.allclose(e2, (ev.abs() / 1.2) ** 2)
    # spectral radius stands in for sigma when not given (radius < 1 -> s = gamma)
    assert torch.allclose(mode_energies(ev, 1, gamma=0.5), 0.5 * ev.abs())
    with pytest.raises(ValueError, match="power_steps must be >= 0"):
        mode_energies(ev, -1)


def test_readout_weights_rebuild_the_ska_output():
    """sum_t a_t v_t (times eta) is the SKA block's output at a query, with the context's statistics."""
    from echo_tutor.koopman import offset_profile, readout_weights
    from echo_tutor.models import HybridConfig, HybridLM

    torch.manual_seed(0)
    m = HybridLM(HybridConfig(30, d_model=16, layout="mamba2,ska", n_heads=2, d_state=4, ska_rank=6,
                 mixer_kwargs={"ska": {"mode": "token", "power_steps": 2, "spectral_norm": False}})).double()
    ids = torch.randint(1, 30, (1, 14))
    n = 9
    w = readout_weights(m, ids, n)[1]  # [H, 5, 9]
    mix = m.blocks[1].mixer
    seen = {}
    h = mix.register_forward_pre_hook(lambda _m, a: seen.setdefault("x", a[0]))
    mask = (torch.arange(14) < n).double()[None]
    m(ids, mask=mask)
    h.remove()
    qn, kn, v, beta = mix.project(seen["x"])  # normalised as the layer reads them
    # the layer's output before W_O at the query positions, from the token-mode reference with the prefix mask
    from echo_tutor.ska.reference import ska_recurrent

    y, _ = ska_recurrent(qn, kn, v, beta, weights=mask[..., None].expand(1, 14, 2), power_steps=2, eps=mix.eps,
                         eta=mix.eta, gamma=mix._gamma(), spectral_norm=False)
    rebuilt = torch.einsum("hqt,thp->qhp", w, v[0, :n]) * mix.eta.detach().reshape(1, -1, 1)
    assert torch.allclose(rebuilt, y[0, n:], atol=1e-9)
    prof = offset_profile(w, ids[0, :n], ids[0, n:])
    assert set(prof) == set(range(-2, 4))
    with pytest.raises(ValueError, match="n_context must be < T"):
        readout_weights(m, ids, 14)
