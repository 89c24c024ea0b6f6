"""Every preset compiles as one graph (``torch.compile(..., fullgraph=True)``): forward, backward and ``step``.

Dynamo's tracing is what ``fullgraph`` tests (a graph break raises); the "eager" and "aot_eager" backends run
the captured graph without Inductor's code generation, so this stays fast on the CPU. The slow test compiles
for real (Inductor) through ``train(model, task, TrainConfig(compile=True))``."""

import dataclasses
import importlib

import pytest
import torch

from echo_tutor.errors import BadArgumentError
from echo_tutor.models.presets import LAB_PRESETS, PRESETS, build
from echo_tutor.tasks import make_task
from echo_tutor.train import TrainConfig, train


def small(preset):
    kw = dict(d_model=16, n_heads=2, d_state=8, ska_rank=6) if preset in PRESETS else dict(d_model=16, ska_rank=6)
    torch.manual_seed(0)
    return build(preset, vocab_size=32, **kw)


# The lab presets in the quick loop; the synth1m ones (the same mixers, wider) with the slow tests (make test).
@pytest.mark.parametrize("preset", list(LAB_PRESETS) + [pytest.param(p, marks=pytest.mark.slow) for p in PRESETS])
def test_every_preset_traces_as_one_graph(preset):
    torch._dynamo.reset()
    model = small(preset)
    ids = torch.randint(0, 32, (2, 21))
    want = model(ids)[0]
    got = torch.compile(model, fullgraph=True, backend="eager")(ids)[0]
    torch.testing.assert_close(got, want)
    st_e, st_c = model.init_state(2), model.init_state(2)
    step = torch.compile(model.step, fullgraph=True, backend="eager")
    for t in range(3):
        want, st_e = model.step(ids[:, t], st_e)
        got, st_c = step(ids[:, t], st_c)
        torch.testing.assert_close(got, want)


def _aot_backend_loads() -> str | None:
    """Why torch's "aot_eager" backend cannot load here, or None. At the floors (torch 2.4.1 with the triton
    extra's 3.2.0) it cannot: torch 2.4's inductor reads triton's ``AttrsDescriptor`` as a dataclass, which it
    stopped being in triton 3.2. torch.compile's backward there needs torch's own triton (3.0.0)."""
    try:
        importlib.import_module("torch._inductor.debug")  # what aot_eager imports first
    except Exception as e:  # noqa: BLE001
        return f"torch {torch.__version__}'s aot_eager backend does not load beside this triton: {e!r}"
    return None


@pytest.mark.parametrize("preset", ["echo", pytest.param("synth1m-echo", marks=pytest.mark.slow)])
def test_backward_traces_as_one_graph(preset):
    why = _aot_backend_loads()
    if why:
        pytest.skip(why)
    torch._dynamo.reset()
    model = small(preset)
    ids = torch.randint(0, 32, (2, 21))
    model(ids)[0].logsumexp(-1).mean().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.compile(model, fullgraph=True, backend="aot_eager")(ids)[0].logsumexp(-1).mean().backward()
    for g, w in zip((p.grad for p in model.parameters()), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_compile_must_be_a_bool():
    task = make_task("mqar", vocab_size=32, num_kv_pairs=2, seq_len=16)
    with pytest.raises(BadArgumentError, match="compile must be True or False"):
        train(small("echo"), task, TrainConfig(steps=1, compile="yes"), progress=False)


@pytest.mark.slow
def test_train_compiled_matches_eager(monkeypatch):
    """TrainConfig(compile=True) trains through torch.compile(fullgraph=True), as eager does. Dynamo traces
    the whole step here; the aot_eager backend runs the traced graph without inductor's C++ build (30-130 s
    on a 2-core CPU, the rest of this file's time). ``make gpu-check`` trains compiled with inductor."""
    task = make_task("mqar", vocab_size=32, num_kv_pairs=2, seq_len=16)
    cfg = TrainConfig(steps=3, batch_size=4, eval_every=3, eval_examples=8)
    kw = dict(progress=False, device="cpu")
    eager = train(small("echo"), task, cfg, **kw)
    torch._dynamo.reset()
    seen = []
    real = torch.compile

    def compile_aot_eager(model, **options):
        seen.append(options)
        return real(model, backend="aot_eager", **options)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    compiled = train(small("echo"), task, dataclasses.replace(cfg, compile=True), **kw)
    assert seen == [{"fullgraph": True}]
    for a, b in zip(eager.history, compiled.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


@pytest.mark.parametrize("preset", ["echo", "ssm+attn"])
def test_padding_for_compile_keeps_the_loss(preset):
    from echo_tutor.models.presets import LAB_RECIPE
    from echo_tutor.tasks import IGNORE
    from echo_tutor.train.loop import pad_for_compile

    model = small(preset)
    x, y = make_task(**{**LAB_RECIPE.task, "vocab_size": 32, "gap": [37]}).sample(3, 0)
    xp, yp = pad_for_compile(x, y)
    assert xp.shape[1] % 64 == 0 and xp.shape[1] > x.shape[1] and (yp[:, x.shape[1]:] == IGNORE).all()
    loss = lambda a, b: torch.nn.functional.cross_entropy(model(a)[0][b != IGNORE], b[b != IGNORE])  # noqa: E731
    torch.testing.assert_close(loss(xp, yp), loss(x, y), rtol=1e-5, atol=1e-6)
