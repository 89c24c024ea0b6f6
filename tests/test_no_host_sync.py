"""No host synchronisation in the hot path: the mixers' and models' ``forward`` and ``step`` never read a
tensor's values on the host (``.item()``, ``bool(t)``, ``.cpu()``, ...) unless the value checks are asked for.

On a CUDA tensor each such read makes the host wait for the device; under torch.compile it breaks the graph.
The default mode ("auto") runs the value checks on CPU tensors only, so the count below forces "off", which is
what a CUDA tensor gets by default; ``test_auto_mode_reads_only_cpu_tensors`` shows that equivalence."""

import contextlib

import pytest
import torch

from echo_tutor._checks import host_checks, reads_on_host
from echo_tutor.attention import CausalSelfAttention, LinearAttention
from echo_tutor.errors import BadArgumentError
from echo_tutor.models.presets import LAB_PRESETS, PRESETS, build
from echo_tutor.ska import SpectralKoopmanAttention
from echo_tutor.ssm import Mamba2

HOST_READS = ("__bool__", "item", "cpu", "tolist", "numpy", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_host_reads():
    """Count the calls of the Tensor methods that read values on the host, inside the block."""
    calls: list[str] = []
    saved = {m: getattr(torch.Tensor, m) for m in HOST_READS}

    def wrap(m, f):
        def counted(self, *a, **k):
            calls.append(m)
            return f(self, *a, **k)
        return counted

    for m, f in saved.items():
        setattr(torch.Tensor, m, wrap(m, f))
    try:
        yield calls
    finally:
        for m, f in saved.items():
            setattr(torch.Tensor, m, f)


def test_the_counter_counts():  # the test below cannot pass by a counter that sees nothing
    x = torch.ones(3)
    with count_host_reads() as calls:
        bool(x.sum() > 0), x.sum().item(), x.cpu()
    assert calls == ["__bool__", "item", "cpu"]


MIXERS = {
    "ska chunk": lambda: SpectralKoopmanAttention(16, 2, 6, power_steps=1, mode="chunk", chunk_size=8),
    "ska token": lambda: SpectralKoopmanAttention(16, 2, 6, power_steps=2, mode="token", chunk_size=8,
                                                  spectral_norm=True, write_gate=True),
    "mamba2": lambda: Mamba2(16, d_state=8, headdim=8),
    "attention": lambda: CausalSelfAttention(16, 2),
    "attention, window": lambda: CausalSelfAttention(16, 2, window=5),
    "linear attention": lambda: LinearAttention(16, 2, chunk_size=8),
}


@pytest.mark.parametrize("name", list(MIXERS))
def test_mixers_forward_and_step_read_nothing_on_the_host(name):
    torch.manual_seed(0)
    m = MIXERS[name]()
    x = torch.randn(2, 19, 16)
    with host_checks("off"), count_host_reads() as calls:
        y, st = m(x)
        y.sum().backward()
        for t in range(3):
            _, st = m.step(x[:, t], st)
    assert calls == [], f"{name}: host reads {calls}"


@pytest.mark.parametrize("preset", list(LAB_PRESETS) + list(PRESETS))
def test_models_forward_and_step_read_nothing_on_the_host(preset):
    torch.manual_seed(0)
    overrides = dict(d_model=16, n_heads=2, d_state=8, ska_rank=6) if preset in PRESETS else dict(d_model=16, ska_rank=6)
    model = build(preset, vocab_size=32, **overrides)
    ids = torch.randint(0, 32, (2, 21))
    with host_checks("off"), count_host_reads() as calls:
        logits, _ = model(ids, mask=torch.ones(2, 21))
        logits.logsumexp(-1).mean().backward()
        st = model.init_state(2)
        for t in range(3):
            _, st = model.step(ids[:, t], st)
    assert calls == [], f"{preset}: host reads {calls}"


def test_auto_mode_reads_only_cpu_tensors():
    cpu, other = torch.zeros(2), torch.zeros(2, device="meta")
    with host_checks("auto"):
        assert reads_on_host(cpu) and not reads_on_host(other)
    with host_checks("on"):
        assert reads_on_host(other)
    with host_checks("off"):
        assert not reads_on_host(cpu)


def test_value_checks_still_catch_bad_input_on_cpu_by_default():
    m = SpectralKoopmanAttention(16, 2, 6)
    with pytest.raises(BadArgumentError, match="x contains NaN"):
        m(torch.full((1, 4, 16), float("nan")))
    model = build("echo", vocab_size=32, d_model=16, ska_rank=6)
    with pytest.raises(BadArgumentError, match=r"ids must hold token ids in \[0, 32\)"):
        model(torch.tensor([[1, 40]]))
    with host_checks("off"), pytest.raises(BadArgumentError, match="host_checks|mode must be one of"):
        host_checks("sometimes").__enter__()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_reads_nothing_on_the_host_by_default():
    model = build("echo", vocab_size=32, d_model=16, ska_rank=6).cuda()
    ids = torch.randint(0, 32, (2, 21), device="cuda")
    with count_host_reads() as calls:
        model(ids)[0].sum().backward()
    assert calls == []


def test_value_checks_on_do_read_on_the_host():  # so the counts above can fail
    m = MIXERS["ska chunk"]()
    with host_checks("on"), count_host_reads() as calls:
        m(torch.randn(1, 9, 16))
    assert "__bool__" in calls
