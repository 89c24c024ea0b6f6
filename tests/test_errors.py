"""Bad input gets a ValueError that names the argument."""

import math

import pytest
import torch

from echo_tutor.koopman import dmd, koopman_operator
from echo_tutor.ska import SKAState, SpectralKoopmanAttention, ska_chunked, ska_recurrent

q = torch.randn(2, 5, 3, 4)
k = torch.randn(2, 5, 3, 4)
v = torch.randn(2, 5, 3, 6)
nan_k = k.clone()
nan_k[0, 1, 0, 0] = math.nan
inf_v = v.clone()
inf_v[1, 2, 0, 0] = math.inf

CASES = [
    ("k", dict(k=k[0]), "k must have 4 dims"),
    ("q", dict(q=torch.randn(2, 5, 3, 5)), "q has shape"),
    ("v", dict(v=torch.randn(2, 4, 3, 6)), "v has shape"),
    ("k", dict(k=nan_k), "k contains NaN"),
    ("v", dict(v=inf_v), "v contains NaN or Inf"),
    ("q", dict(q=torch.ones(2, 5, 3, 4, dtype=torch.long)), "q must be a floating-point"),
    ("k", dict(q=torch.randn(2, 5, 3, 0), k=torch.randn(2, 5, 3, 0)), "rank r >= 1"),
    ("k", dict(q=torch.randn(2, 0, 3, 4), k=torch.randn(2, 0, 3, 4), v=torch.randn(2, 0, 3, 6)), "T >= 1"),
    ("eps", dict(eps=0.0), "eps must be a finite number > 0"),
    ("eps", dict(eps=-1e-3), "eps must be a finite number > 0"),
    ("eps", dict(eps=math.nan), "eps must be a finite number > 0"),
    ("power_steps", dict(power_steps=-1), "power_steps must be >= 0"),
    ("power_steps", dict(power_steps=1.5), "power_steps must be an int"),
    ("mode", dict(mode="chunks"), "mode must be one of"),
    ("chunk_size", dict(chunk_size=0), "chunk_size must be >= 1"),
    ("beta", dict(beta=torch.rand(2, 5, 2)), "beta has shape"),
    ("weights", dict(weights=torch.rand(2, 5)), "weights must have 3 dims"),
    ("eta", dict(eta=torch.ones(4)), r"eta must be a float or a tensor of shape \[\] or \[H=3\]"),
    ("state", dict(state=SKAState.zeros(2, 3, 5, 6)), "state has"),
    ("state", dict(state="G"), "state must be an SKAState"),
]


@pytest.mark.parametrize("fn", [ska_recurrent, ska_chunked], ids=["recurrent", "chunked"])
@pytest.mark.parametrize("arg,override,msg", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_ska_functions_reject_bad_input(fn, arg, override, msg):
    kw = dict(q=q, k=k, v=v)
    kw.update(override)
    with pytest.raises(ValueError, match=msg):
        fn(**kw)


def test_chunk_mode_state_must_sit_on_a_chunk_boundary():
    _, st = ska_chunked(q, k, v, mode="token")  # 5 tokens
    with pytest.raises(ValueError, match="chunk_size"):
        ska_chunked(q, k, v, mode="chunk", chunk_size=4, state=st)


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(rank=0), "rank must be >= 1"),
        (dict(rank=-3), "rank must be >= 1"),
        (dict(n_heads=0), "n_heads must be >= 1"),
        (dict(d_model=30, n_heads=4), "head_dim"),
        (dict(eps=0), "eps must be"),
        (dict(key_norm="max"), "key_norm must be one of"),
        (dict(mode="fast"), "mode must be one of"),
        (dict(backend="cuda"), "backend must be one of"),
        (dict(gamma_range=(1.5, 0.5)), "gamma_range"),
        (dict(power_steps=-2), "power_steps"),
    ],
)
def test_layer_rejects_bad_config(kwargs, msg):
    cfg = dict(d_model=32, n_heads=4, rank=8)
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=msg):
        SpectralKoopmanAttention(**cfg)


def test_layer_rejects_bad_input():
    layer = SpectralKoopmanAttention(32, 4, 8)
    with pytest.raises(ValueError, match="x must have 3 dims"):
        layer(torch.randn(5, 32))
    with pytest.raises(ValueError, match="d_model=32"):
        layer(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match="x contains NaN"):
        layer(torch.full((2, 5, 32), math.nan))
    with pytest.raises(ValueError, match="mask must have shape"):
        layer(torch.randn(2, 5, 32), mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="x_t must have 2 dims"):
        layer.step(torch.randn(2, 1, 32), layer.init_state(2))
    with pytest.raises(ValueError, match="state must be an SKAState"):
        layer.step(torch.randn(2, 32), None)


def test_koopman_tools_reject_bad_input():
    with pytest.raises(ValueError, match="X must have 2 dims"):
        dmd(torch.randn(3, 4, 5), torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="Y must have the same shape"):
        dmd(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(ValueError, match="eps must be a number >= 0"):
        dmd(torch.randn(10, 3), torch.randn(10, 3), eps=-1)
    with pytest.raises(ValueError, match="rank must be <="):
        dmd(torch.randn(10, 3), torch.randn(10, 3), rank=4)
    with pytest.raises(ValueError, match="state must be an SKAState"):
        koopman_operator(torch.eye(3))


def test_more_public_functions_reject_bad_input():
    from echo_tutor.attention import apply_rope
    from echo_tutor.experiments import ablation
    from echo_tutor.koopman import oscillators
    from echo_tutor.models import prefix_mask
    from echo_tutor.train import sweep

    with pytest.raises(ValueError, match="tasks must be drawn from"):
        ablation.RECIPES["ablation/small"].only(tasks=["sorting"])
    with pytest.raises(ValueError, match="even head size"):
        apply_rope(torch.randn(1, 2, 3, 5), torch.arange(3))
    with pytest.raises(ValueError, match="positions must be a 1-D tensor of length T=3"):
        apply_rope(torch.randn(1, 2, 3, 4), torch.arange(4))
    with pytest.raises(ValueError, match="thetas and rhos must be non-empty lists of equal length"):
        oscillators([0.1, 0.2], [0.9], 10)
    with pytest.raises(ValueError, match="labels must have 2 dims"):
        prefix_mask(torch.tensor([1, -100]))
    with pytest.raises(ValueError, match="run must return a dict"):
        sweep([{"a": 1}], lambda a: a, progress=False)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        SKAState.zeros(1, 2, 0, 3)
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        SKAState.zeros(1, 2, 3, 3, eps=0.0)
