"""The mixer interface (echo_tutor.models.mixer.Mixer): every built-in mixer implements it with one signature
per method, and a mixer defined here, registered by name, trains inside a HybridLM with no change to
models/blocks.py or models/hybrid.py."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from conftest import scan_steps
from echo_tutor.errors import BadArgumentError
from echo_tutor.models import HybridConfig, HybridLM, Mixer, build, mixer_names, register_mixer, state_nbytes
from echo_tutor.models.mixer import MIXER_BUILDERS
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, train

BUILT_IN = ("mamba2", "ska", "attn", "linear_attn")
SIGNATURES = {"forward": ["state", "mask"], "step": ["state"], "init_state": ["batch", "device", "dtype"],
              "state_nbytes": ["batch", "context"]}


def _mixers():
    model = HybridLM(HybridConfig(32, d_model=32, layout=",".join(BUILT_IN), n_heads=2, ska_rank=8, d_state=8))
    return {name: blk.mixer for name, blk in zip(BUILT_IN, model.blocks)}


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_built_in_mixer_implements_the_interface(name):
    m = _mixers()[name]
    assert isinstance(m, Mixer)
    for method, params in SIGNATURES.items():
        got = list(inspect.signature(getattr(m, method)).parameters)
        assert got[-len(params):] == params, f"{name}.{method}{tuple(got)}: expected it to end with {params}"
    x = torch.randn(2, 7, 32)
    mask = torch.ones(2, 7)
    y, st = m(x, None, mask=mask)
    assert y.shape == x.shape
    y2, _ = scan_steps(m, x, m.init_state(2, device="cpu", dtype=torch.float32))
    torch.testing.assert_close(y2, y, atol=1e-4, rtol=1e-4)
    assert m.state_nbytes(2, context=7) == state_nbytes(st)


@dataclass
class EMAState:
    h: torch.Tensor  # [B, d]


class EMAMixer(nn.Module):
    """A toy mixer for the test: a learned per-channel exponential moving average of the inputs."""

    def __init__(self, d_model: int, decay: float = 0.9) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.full((d_model,), float(torch.logit(torch.tensor(decay)))))
        self.out = nn.Linear(d_model, d_model, bias=False)

    def init_state(self, batch, device=None, dtype=None):
        return EMAState(torch.zeros(batch, self.out.in_features, device=device, dtype=dtype or torch.float32))

    def state_nbytes(self, batch=1, context=0):
        return batch * self.out.in_features * 4

    def step(self, x_t, state):
        a = torch.sigmoid(self.logit)
        h = a * state.h + (1 - a) * x_t
        return self.out(h), EMAState(h)

    def forward(self, x, state=None, mask=None):
        state = state or self.init_state(x.shape[0], x.device, x.dtype)
        ys = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            ys.append(y)
        return torch.stack(ys, 1), state


@pytest.fixture
def ema_registered():
    register_mixer("ema", lambda cfg, kw: EMAMixer(cfg.d_model, **kw))
    yield
    MIXER_BUILDERS.pop("ema")


def test_a_new_mixer_trains_inside_a_hybrid_lm(ema_registered):
    assert "ema" in mixer_names() and isinstance(EMAMixer(8), Mixer)
    model = HybridLM(HybridConfig(16, d_model=32, layout="ema,attn", n_heads=2, mixer_kwargs={"ema": {"decay": 0.8}}))
    assert isinstance(model.blocks[0].mixer, EMAMixer)
    task = make_task("mqar", vocab_size=16, seq_len=24, num_kv_pairs=2)
    res = train(model, task, TrainConfig(steps=40, batch_size=16, lr=3e-3, seed=0), progress=False)
    losses = [h["loss"] for h in res.history]
    assert res.steps_done == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    ids = torch.randint(0, 16, (2, 9))
    logits, _ = model(ids)
    st = model.init_state(2)
    for t in range(9):
        step_logits, st = model.step(ids[:, t], st)
    torch.testing.assert_close(step_logits, logits[:, -1], atol=1e-4, rtol=1e-4)


def test_an_unknown_or_bad_mixer_name_is_refused():
    with pytest.raises(BadArgumentError, match="unknown mixer name"):
        build("echo", vocab_size=16, layout="mamba2,nope")
    with pytest.raises(BadArgumentError, match="name must be a non-empty mixer name"):
        register_mixer("a,b", lambda cfg, kw: None)
