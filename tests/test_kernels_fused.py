"""The fused chunk-mode SKA kernels (kernels/echo_kernels/ska/fused.py) against the PyTorch reference: forward and
gradients (every input, the state's statistics and a learned per-head eta included), on awkward sizes,
float32 and float16 inputs, both on-chip solvers. Under TRITON_INTERPRET=1 on a CPU (conftest.py)."""

import pytest
import torch

pytest.importorskip("triton")

import echo_kernels.ska as kska  # noqa: E402
from echo_tutor.ska import SKAState, ska_chunked  # noqa: E402
from echo_tutor.ska import ops as twin  # noqa: E402

from conftest import assert_close  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _case(B, T, H, r, P, dtype, seed, with_state):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, r, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, r, generator=g), dim=-1)
    v = torch.randn(B, T, H, P, generator=g)
    beta, w = torch.rand(B, T, H, generator=g), 0.5 + torch.rand(B, T, H, generator=g)
    xs = [x.to(dtype).to(DEV).requires_grad_() for x in (q, k, v, beta, w)]
    eta = (0.5 + torch.rand(H, generator=g)).to(DEV).requires_grad_()
    state = None
    if with_state:  # a state left by 3 earlier chunks of keys, each statistic differentiable
        kp = torch.nn.functional.normalize(torch.randn(B, 48, H, r, generator=g), dim=-1)
        G = 1e-3 * torch.eye(r) + torch.einsum("bthi,bthj->bhij", kp, kp)
        M = torch.einsum("bthi,bthj->bhij", kp[:, 1:], kp[:, :-1])
        C = torch.randn(B, H, P, r, generator=g)
        state = SKAState(*(x.to(DEV).requires_grad_() for x in (G, M, C)), kp[:, -1].to(DEV), 48, None)
    return xs, eta, state


def _run(fn, xs, eta, state, kw):
    q, k, v, beta, w = xs
    y, new = fn(q, k, v, beta, weights=w, eta=eta, state=state, **kw)
    g = torch.Generator().manual_seed(99)
    wy = torch.randn(y.shape, generator=g).to(DEV)
    loss = (y.float() * wy).sum() + new.G.pow(2).sum() * 1e-3 + new.M.sum() + (new.C * 0.1).sum()
    leaves = [*xs, eta] + ([state.G, state.M, state.C] if state is not None else [])
    return y, new, torch.autograd.grad(loss, leaves)


NAMES = ["dq", "dk", "dv", "dbeta", "dweights", "deta", "dG0", "dM0", "dC0"]


@pytest.mark.parametrize("solver", ["chol", "gj", "ns"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("K,spectral", [(0, False), (1, True), (3, False)])
def test_fused_forward_and_gradients_match_the_reference(solver, dtype, K, spectral):
    xs, eta, state = _case(2, 53, 2, 5, 7, dtype, seed=K, with_state=K == 1)
    kw = dict(mode="chunk", chunk_size=16, power_steps=K, spectral_norm=spectral, eps=1e-2)
    y1, s1, g1 = _run(lambda *a, **k: kska.forward(*a, solver=solver, **k), xs, eta, state, kw)
    y2, s2, g2 = _run(ska_chunked, xs, eta, state, kw)
    assert y1.dtype == dtype and y1.shape == y2.shape and s1.count == s2.count
    tol = 1e-4 if dtype == torch.float32 else 2e-3            # fp16 y is rounded to fp16 by both
    assert_close("y", y2.float(), y1.float(), tol)
    for name in ("G", "M", "C", "k_prev"):
        assert_close(name, getattr(s2, name).float(), getattr(s1, name).float(), 1e-5)
    for name, a, b in zip(NAMES, g1, g2):
        assert_close(name, b.float(), a.float(), 1e-4)


@pytest.mark.parametrize("shape", [(1, 40, 1, 3, 17, 32), (1, 16, 3, 20, 5, 16), (2, 17, 1, 1, 1, 16)])
def test_fused_awkward_sizes(shape):
    B, T, H, r, P, S = shape
    xs, eta, state = _case(B, T, H, r, P, torch.float32, seed=sum(shape), with_state=False)
    kw = dict(mode="chunk", chunk_size=S, power_steps=2)
    y1, _, g1 = _run(kska.forward, xs, eta, state, kw)
    y2, _, g2 = _run(ska_chunked, xs, eta, state, kw)
    assert_close("y", y2, y1, 1e-4)
    for name, a, b in zip(NAMES, g1, g2):
        assert_close(name, b, a, 1e-4)


def test_stats_prefix_and_readout_alone_match_their_twins():
    g = torch.Generator().manual_seed(3)
    N, T, r, P, S = 3, 48, 6, 9, 16
    ok, kk, kl = (torch.randn(N, T, r, generator=g).requires_grad_() for _ in range(3))
    ov = torch.randn(N, T, P, generator=g).requires_grad_()
    X0 = [torch.eye(r).expand(N, r, r) * 2, torch.randn(N, r, r, generator=g), torch.randn(N, P, r, generator=g)]
    got = kska.stats_prefix(ok, kk, kl, ov, *X0, S)
    Gc, Mc, Cc = twin.chunk_stats(ok, kk, kl, ov, S)
    want = [*zip(*(twin.exclusive_prefix(x0, xc) for x0, xc in zip(X0, (Gc, Mc, Cc))))]
    want = [*want[0], *want[1]]
    for name, a, b in zip(["Gx", "Mx", "Cx", "Gt", "Mt", "Ct"], got, want):
        assert_close(name, b, a, 1e-5)
    ws = [torch.randn(x.shape, generator=g) for x in want]
    for name, a, b in zip(["dok", "dkk", "dkl", "dov"],
                          torch.autograd.grad(sum((x * w).sum() for x, w in zip(got, ws)), (ok, kk, kl, ov)),
                          torch.autograd.grad(sum((x * w).sum() for x, w in zip(want, ws)), (ok, kk, kl, ov))):
        assert_close(name, b, a, 1e-5)
    A = torch.randn(N * 3, r, r, generator=g)
    Gx = A @ A.transpose(-1, -2) / r + 0.5 * torch.eye(r)          # the readout needs a positive definite G
    Mx, Cx = want[1].reshape(-1, r, r).detach(), want[2].reshape(-1, P, r).detach()
    qx = torch.randn(N * 3, S, r, generator=g)
    s = torch.rand(N * 3, generator=g)
    for solver in kska.SOLVERS:
        y = kska.readout(Gx, Mx, Cx, qx, 2, s, solver=solver)
        assert_close(f"readout {solver}", twin.readout_inverse(torch.linalg.inv(Gx), Mx, Cx, qx, 2, s), y, 1e-4)


def test_newton_schulz_needs_its_iterations_and_the_eliminations_do_not():
    """An ill-conditioned G (cond ~ 1e5): Newton-Schulz from I/||G||_F is far off after 8 steps and exact
    to rounding after 30; Cholesky and Gauss-Jordan are exact to rounding. The test can fail: it checks the solver, not a constant."""
    g = torch.Generator().manual_seed(0)
    r, S = 16, 16
    U = torch.linalg.qr(torch.randn(r, r, generator=g))[0]
    G = (U * torch.logspace(-3, 2, r)) @ U.T
    M, C = torch.randn(1, r, r, generator=g), torch.randn(1, 4, r, generator=g)
    q, s = torch.randn(1, S, r, generator=g), torch.ones(1)
    want = twin.readout_inverse(torch.linalg.inv(G.double())[None].float(), M, C, q, 0, s)
    err = lambda y: float((y - want).norm() / want.norm())  # noqa: E731
    assert err(kska.readout(G[None], M, C, q, 0, s, solver="gj")) < 1e-3
    assert err(kska.readout(G[None], M, C, q, 0, s, solver="chol")) < 1e-3
    assert err(kska.readout(G[None], M, C, q, 0, s, solver="ns", ns_iters=30)) < 1e-3
    assert err(kska.readout(G[None], M, C, q, 0, s, solver="ns", ns_iters=8)) > 0.1


def test_fused_bad_arguments_raise_value_errors():
    x = torch.randn(2, 32, 4)
    with pytest.raises(ValueError, match="chunk_size"):
        kska.stats_prefix(x, x, x, x, torch.eye(4).expand(2, 4, 4), torch.zeros(2, 4, 4), torch.zeros(2, 4, 4), 24)
    with pytest.raises(ValueError, match="solver"):
        kska.readout(torch.eye(4)[None], torch.zeros(1, 4, 4), torch.zeros(1, 3, 4), torch.zeros(1, 16, 4), 1,
                     torch.ones(1), solver="cholesky")
    with pytest.raises(ValueError, match="queries per chunk"):
        kska.readout(torch.eye(4)[None], torch.zeros(1, 4, 4), torch.zeros(1, 3, 4), torch.zeros(1, 12, 4), 1,
                     torch.ones(1))
    q = torch.randn(1, 8, 1, 4)
    with pytest.raises(ValueError, match=r"q has shape \(1, 8, 1, 4\)"):
        kska.forward(q, q[..., :3], q, mode="chunk", chunk_size=16)


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_layer_trains_through_the_fused_kernels_like_the_reference(monkeypatch, spectral_norm):
    """Every parameter gradient of an SKA layer (learned eta and gamma included) through backend="triton"
    (forced: on a CPU the kernels run in the interpreter) equals the reference's."""
    import echo_tutor.ska.layer as layer_mod
    from echo_tutor.ska import SpectralKoopmanAttention

    torch.manual_seed(0)
    kw = dict(power_steps=2, mode="chunk", chunk_size=16, spectral_norm=spectral_norm)
    ref = SpectralKoopmanAttention(24, 2, 6, backend="reference", **kw)
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tri = SpectralKoopmanAttention(24, 2, 6, backend="triton", **kw)
    tri.load_state_dict(ref.state_dict())
    monkeypatch.setattr(layer_mod, "resolve_backend",
                        lambda requested, op, device: "reference" if requested == "reference" else "triton")
    x = torch.randn(2, 45, 24)
    losses = []
    for m in (ref, tri):
        y, _ = m(x)
        losses.append(y.pow(2).mean())
        losses[-1].backward()
    assert tri.last_backend == "triton"
    assert_close("loss", losses[0], losses[1], 1e-5)
    for (name, a), b in zip(ref.named_parameters(), tri.parameters()):
        if a.grad is None:                       # gamma, without the spectral norm
            assert b.grad is None and not spectral_norm, name
            continue
        assert_close(f"d{name}", a.grad, b.grad, 1e-4)


@pytest.mark.parametrize("spectral_iters", [3, None])
def test_learned_gamma_gets_its_gradient_on_chip_and_from_the_exact_svd(spectral_iters):
    """The spectral scale (gamma / max(1, sigma))^K: estimated on chip by power iterations, or from
    PyTorch's exact SVD when spectral_iters=None; gamma's and eta's gradients as the reference's."""
    xs, _, state = _case(1, 40, 3, 4, 5, torch.float32, seed=7, with_state=False)
    q, k, v, beta, _ = xs
    gam = torch.tensor([0.5, 0.9, 1.3], requires_grad=True)
    eta = torch.tensor([1.0, 0.6, 2.0], requires_grad=True)
    kw = dict(mode="chunk", chunk_size=16, power_steps=3, spectral_norm=True, spectral_iters=spectral_iters,
              eta=eta, gamma=gam)
    outs = []
    for fn in (ska_chunked, kska.forward):
        y, _ = fn(q, k, v, beta, **kw)
        outs.append((y, *torch.autograd.grad(y.pow(2).sum(), (q, k, gam, eta))))
    for name, a, b in zip(["y", "dq", "dk", "dgamma", "deta"], *outs):
        assert_close(name, a, b, 1e-4)


# ---------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["chol", "gj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_fused_forward_and_backward_realistic(solver, dtype):
    """The fused kernels compiled for the GPU at the benchmark's sizes (r = 64, chunks of 64, K = 2: the same
    specialisations benchmarks/kernels.py times, so the GPU report compiles them once), forward and gradients
    against the reference."""
    g = torch.Generator().manual_seed(0)
    B, T, H, r, P = 2, 1024, 4, 64, 64
    q = torch.randn(B, T, H, r, generator=g)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, r, generator=g), dim=-1)
    v = torch.randn(B, T, H, P, generator=g)
    xs = [x.cuda().to(dtype).requires_grad_() for x in (q, k, v)]
    kw = dict(mode="chunk", chunk_size=64, spectral_norm=True, power_steps=2)  # the benchmark's kernels: compiled once
    outs = []
    for fn in (ska_chunked, lambda *a, **k: kska.forward(*a, solver=solver, **k)):
        y, _ = fn(*xs, **kw)
        outs.append((y, *torch.autograd.grad(y.float().pow(2).sum(), xs)))
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    for name, a, b in zip(["y", "dq", "dk", "dv"], *outs):
        assert_close(f"gpu {name}", a.float(), b.float(), tol)


class _NoResources:
    """Stands in for a Triton kernel that the device cannot fit: launching raises OutOfResources."""

    def __getitem__(self, grid):
        from triton.runtime.errors import OutOfResources

        def launch(*args, **kwargs):
            raise OutOfResources(232448, 101376, "shared memory")
        return launch


@pytest.mark.parametrize("kernel", ["_stats_prefix_fwd", "_stats_prefix_bwd", "_readout_fwd", "_readout_bwd"])
def test_a_kernel_the_gpu_cannot_fit_falls_back_to_its_twin(monkeypatch, kernel):
    """Each fused step, when its kernel raises OutOfResources, runs its PyTorch twin (echo_tutor.ska.ops) with a
    warning, and the forward and every gradient still equal the reference's: the twins of the backward are tested
    here against the reference, not only against the kernels."""
    import echo_kernels.ska.fused as fused

    monkeypatch.setattr(fused, kernel, _NoResources())
    monkeypatch.setattr(fused, "_WARNED", set())
    xs, eta, state = _case(2, 37, 2, 5, 7, torch.float32, seed=11, with_state=True)
    kw = dict(mode="chunk", chunk_size=16, power_steps=2, spectral_norm=True, eps=1e-2)
    with pytest.warns(RuntimeWarning, match="PyTorch twin"):
        y1, s1, g1 = _run(kska.forward, xs, eta, state, kw)
    y2, s2, g2 = _run(ska_chunked, xs, eta, state, kw)
    assert_close("y", y2, y1, 1e-4)
    assert_close("G", s2.G, s1.G, 1e-5)
    for name, a, b in zip(NAMES, g1, g2):
        assert_close(name, b, a, 1e-4)


def test_singular_gram_stays_finite_and_spectral_scale_above_one_matches():
    """Keys in a 3-dimensional subspace of r = 8 with a ridge of 1e-9: G is singular to float32. The eliminations
    floor their pivots (the reference jitters), so the output is finite. And with M scaled so that
    sigma_max(L^-1 M L^-T) > 1, the on-chip spectral scale equals the twin's."""
    g = torch.Generator().manual_seed(5)
    N, r, P, S = 2, 8, 4, 16
    basis = torch.randn(3, r, generator=g)
    kk = torch.randn(N, S, 3, generator=g) @ basis
    G = kk.transpose(-1, -2) @ kk + 1e-9 * torch.eye(r)
    M, C, q = torch.randn(N, r, r, generator=g), torch.randn(N, P, r, generator=g), torch.randn(N, S, r, generator=g)
    for solver in ("chol", "gj"):
        y = kska.readout(G, M, C, q, 1, torch.ones(N), solver=solver)
        assert torch.isfinite(y).all(), solver
    A = torch.randn(N, r, r, generator=g)
    G2 = A @ A.transpose(-1, -2) / r + torch.eye(r)
    M2 = 5.0 * torch.randn(N, r, r, generator=g)
    gam = torch.tensor([0.7, 1.2])
    want = twin.spectral_scale(G2, M2, 2, gam, 6)
    sig = twin.sigma_max(twin.whiten(M2, torch.linalg.cholesky(G2)), 6) if hasattr(twin, "sigma_max") else None
    assert sig is None or bool((sig > 1.5).all())
    y_twin, _, s_twin, _ = twin.readout_forward(G2, M2, C, q, 2, torch.ones(N), gam, 6)
    assert_close("scale", want, s_twin, 1e-6)
    assert_close("y with sigma > 1", y_twin, kska.readout(G2, M2, C, q, 2, torch.ones(N), gam, spectral_iters=6), 1e-4)
