import pytest
import torch

from conftest import assert_close, scan_steps
from echo_tutor.ssm import Mamba2, mamba_ssm_available, segsum, ssd_chunked, ssd_recurrent


def make(T, B=2, H=3, P=4, N=5, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, P, generator=g, dtype=torch.float64)
    a = -torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
    c = torch.randn(B, T, H, N, generator=g, dtype=torch.float64)
    h0 = torch.randn(B, H, P, N, generator=g, dtype=torch.float64)
    if grad:
        for t in (x, a, b, c, h0):
            t.requires_grad_(True)
    return x, a, b, c, h0


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200], ids=lambda t: f"T{t}")
def test_ssd_recurrent_equals_chunked_forward_and_backward(T):
    x, a, b, c, h0 = make(T, grad=True)
    y1, s1 = ssd_recurrent(x, a, b, c, initial_state=h0)
    y2, s2 = ssd_chunked(x, a, b, c, chunk_size=64, initial_state=h0)
    assert_close("y", y1, y2)
    assert_close("final state", s1, s2)
    dy, ds = torch.randn_like(y1), torch.randn_like(s1)
    g1 = torch.autograd.grad((y1 * dy).sum() + (s1 * ds).sum(), (x, a, b, c, h0))
    g2 = torch.autograd.grad((y2 * dy).sum() + (s2 * ds).sum(), (x, a, b, c, h0))
    for name, u, w in zip(("dx", "da", "db", "dc", "dh0"), g1, g2):
        assert_close(name, u, w, 1e-8)


def test_ssd_is_decaying_attention():
    """The quadratic form: y_t = sum_{s<=t} exp(a_{s+1}+...+a_t) (c_t . b_s) x_s."""
    x, a, b, c, _ = make(9, B=1, H=1)
    y, _ = ssd_chunked(x, a, b, c, chunk_size=4)
    L = torch.exp(segsum(a[0, :, 0]))  # [T, T]
    scores = (c[0, :, 0] @ b[0, :, 0].T) * L
    assert_close("quadratic", scores @ x[0, :, 0], y[0, :, 0])


def layer(**kw):
    torch.manual_seed(0)
    return Mamba2(32, d_state=8, headdim=16, chunk_size=16, **kw).double()


def test_mamba2_step_scan_equals_forward():
    m = layer()
    u = torch.randn(2, 37, 32, dtype=torch.float64)
    y, st_f = m(u)
    ys, st = scan_steps(m, u, m.init_state(2))
    assert_close("y", y, ys)
    assert_close("ssm state", st_f.ssm, st.ssm)
    assert_close("conv state", st_f.conv, st.conv)


def test_mamba2_forward_in_pieces_equals_one_call():
    m = layer()
    u = torch.randn(1, 50, 32, dtype=torch.float64)
    y, _ = m(u)
    y1, st = m(u[:, :21])
    y2, _ = m(u[:, 21:], st)
    assert_close("pieces", y, torch.cat([y1, y2], 1))


def test_mamba2_is_causal():
    m = layer()
    u = torch.randn(2, 40, 32, dtype=torch.float64)
    u2 = u.clone()
    u2[:, 25:] += 1.0
    assert_close("prefix", m(u)[0][:, :25], m(u2)[0][:, :25], 1e-12)


def test_mamba2_init_and_state_size():
    m = Mamba2(128, d_state=16, headdim=64)
    A = -torch.exp(m.A_log)
    assert ((A <= -1) & (A >= -16)).all()
    dt = torch.nn.functional.softplus(m.dt_bias)
    assert ((dt >= 1e-4 - 1e-7) & (dt <= 0.1 + 1e-6)).all()
    assert m.n_heads == 4
    conv_dim = 256 + 2 * 16
    assert m.state_nbytes() == (conv_dim * 3 + 4 * 64 * 16) * 4
    _, s1 = m(torch.randn(1, 10, 128))
    _, s2 = m(torch.randn(1, 500, 128))
    assert s1.nbytes == s2.nbytes == m.state_nbytes()


def test_mamba2_backend_falls_back_on_cpu():
    m = Mamba2(32, headdim=16, backend="reference")
    m(torch.randn(1, 5, 32))
    assert m.last_backend == "reference"
    if not mamba_ssm_available():
        m = Mamba2(32, headdim=16, backend="auto")
        m(torch.randn(1, 5, 32))
        assert m.last_backend == "reference"


@pytest.mark.gpu
def test_mamba_ssm_matches_reference_on_gpu():
    """Same weights, mamba-ssm's fused scan vs our chunked SSD (needs CUDA + mamba-ssm)."""
    if not mamba_ssm_available():
        pytest.skip("mamba-ssm is not installed (pip install --no-build-isolation causal-conv1d mamba-ssm)")
    torch.manual_seed(0)
    ref = Mamba2(128, d_state=16, headdim=64, backend="reference").cuda()
    fast = Mamba2(128, d_state=16, headdim=64, backend="mamba_ssm").cuda()
    fast.load_state_dict(ref.state_dict())
    u = torch.randn(2, 300, 128, device="cuda")
    y_ref, s_ref = ref(u)
    y_fast, s_fast = fast(u)
    assert fast.last_backend == "mamba_ssm" and ref.last_backend == "reference"
    assert_close("y", y_ref, y_fast, 2e-3)
    assert_close("ssm state", s_ref.ssm, s_fast.ssm, 2e-3)


def test_ssd_and_mamba_reject_bad_input():
    x, a, b, c, _ = make(5)
    with pytest.raises(ValueError, match="a has shape"):
        ssd_chunked(x, a[:, :4], b, c)
    with pytest.raises(ValueError, match="c has shape"):
        ssd_recurrent(x, a, b, c[..., :3])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        ssd_chunked(x, a, b, c, chunk_size=0)
    with pytest.raises(ValueError, match="initial_state has shape"):
        ssd_chunked(x, a, b, c, initial_state=torch.zeros(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="headdim=48 must divide"):
        Mamba2(32, headdim=48)
    with pytest.raises(ValueError, match="backend must be one of"):
        Mamba2(32, headdim=16, backend="cuda")
    with pytest.raises(ValueError, match="u must have last dim"):
        Mamba2(32, headdim=16)(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="state must be a Mamba2State"):
        Mamba2(32, headdim=16).step(torch.randn(1, 32), None)
