"""Compositions at equal bytes (echo_tutor.convert.compose) on the tiny GQA Llama: a KIVI context inside the
forward pass equals lab 06's KIVI baseline on a prefilled cache; methods chained; the figure's byte counts."""

import math

import pytest
import torch
from echokv_fixtures import tiny  # noqa: F401  (fixture)

from echo_tutor.convert.compose import (
    KiviContext,
    equal_bytes_points,
    kivi_fraction,
    kivi_layers,
    then,
)
from echo_tutor.convert.study import (
    converted,
    layer_inputs,
    new_mixer,
    original_attention,
    parse_variant,
    window_nll,
)
from echo_tutor.echokv import baselines as B
from echo_tutor.echokv.evaluate import perplexity
from echo_tutor.echokv.model import copy_batch


def llama_layout(m):
    c = m.config
    return dict(n_q_heads=c.num_attention_heads, n_kv_heads=c.num_key_value_heads,
                head_dim=c.hidden_size // c.num_attention_heads)


def test_a_context_left_unquantised_is_the_original_attention(tiny):  # noqa: F811
    x = torch.randn(2, 40, tiny.config.hidden_size, generator=torch.Generator().manual_seed(0))
    rope = layer_inputs(tiny, 40, "cpu")
    attn = tiny.model.layers[2].self_attn
    ref = original_attention(attn, x, rope)
    exact = KiviContext(attn, bits=4, ctx_len=0, **llama_layout(tiny))(x, position_embeddings=rope)[0]
    torch.testing.assert_close(exact, ref, atol=1e-5, rtol=1e-5)
    lossy = KiviContext(attn, bits=2, ctx_len=32, **llama_layout(tiny))(x, position_embeddings=rope)[0]
    assert (lossy - ref).abs().max() > 1e-3  # (the test above cannot pass by quantising nothing anywhere)


def test_kivi_in_the_forward_pass_equals_the_kivi_baseline_on_a_prefilled_cache(tiny):  # noqa: F811
    ids = copy_batch(torch.Generator().manual_seed(5), 4, 96, tiny.config.vocab_size)
    ctx = 64
    table = perplexity(tiny, ids, ctx, [B.kivi(4)])
    with kivi_layers(tiny, list(range(len(tiny.model.layers))), bits=4, ctx_len=ctx):
        ours = window_nll(tiny, ids, ctx)
    assert ours == pytest.approx(table["KIVI 4-bit (g=32)"]["window_nll"], abs=2e-4)
    assert table["KIVI 4-bit (g=32)"]["window_nll"] != pytest.approx(table["full"]["window_nll"], abs=1e-6)
    assert all(type(b.self_attn).__name__ != "KiviContext" for b in tiny.model.layers)  # restored


def test_converted_layers_beside_kivi_layers(tiny):  # noqa: F811
    ids = copy_batch(torch.Generator().manual_seed(6), 2, 80, tiny.config.vocab_size)
    spec = parse_variant("window+ska:K1", window=8, sinks=2, rank=8)
    with converted(tiny, {1: new_mixer(tiny, 1, spec)}), kivi_layers(tiny, [0, 2, 3], bits=8, ctx_len=64):
        both = window_nll(tiny, ids, 64)
    with converted(tiny, {1: new_mixer(tiny, 1, spec)}):
        conv = window_nll(tiny, ids, 64)
    assert both == pytest.approx(conv, abs=5e-3) and both != conv  # 8 bits: close, not equal


def test_then_chains_two_methods():
    k = [torch.randn(1, 2, 40, 8)]
    v = [torch.randn(1, 2, 40, 8)]
    m = then(B.kivi(4), B.streaming_llm(40, 0.5), "x")
    assert m.fraction == pytest.approx(kivi_fraction(4) * 0.5) and kivi_fraction(4) == 0.3125
    k2, v2, keep = m.apply(k, v, None, None)
    k1, v1, _ = B.kivi(4).apply(k, v, None, None)
    assert torch.equal(k2[0], k1[0]) and torch.equal(v2[0], v1[0]) and int(keep.sum()) == 20


def test_bad_arguments(tiny):  # noqa: F811
    attn = tiny.model.layers[0].self_attn
    with pytest.raises(ValueError, match="bits must be one of"):
        KiviContext(attn, bits=5, ctx_len=8, **llama_layout(tiny))
    with pytest.raises(ValueError, match="ctx_len must be >= 0"):
        KiviContext(attn, bits=4, ctx_len=-1, **llama_layout(tiny))
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 3\]"):
        with kivi_layers(tiny, [7], bits=4, ctx_len=8):
            pass
    with pytest.raises(ValueError, match="tokens must be >= 1"):
        equal_bytes_points({}, 0)


def test_equal_bytes_points_count_bytes_at_16_bits():
    full = [2.0, 2.1]
    res = {"cost_nll": [0.0] * 4, "layer_kv_bytes_per_token": 2 * 2 * 16 * 4, "mixer_state_bytes": {"w": 8000},
           "labels": {"w": "W"}, "full_window_nll": full, "sweep_window_nll": {"w": {"2": [2.2, 2.3]}},
           "stage2": {"w": {"2": {"window_nll": [2.1, 2.2]}}},
           "compose": {"bits": 4, "converted_kivi": {"w": {"2": [2.3, 2.4]}},
                       "echokv": {"full": {"fraction": 1.0, "window_nll": full},
                                  "KIVI 4-bit (g=32)": {"fraction": 0.3125, "window_nll": full},
                                  "echokv-lite ridge, greedy @0.5": {"fraction": 0.5, "window_nll": full},
                                  "echokv-lite ridge, greedy @0.5 + KIVI 4-bit": {"fraction": 0.15625, "window_nll": full}}}}
    pts = {p["name"]: p for p in equal_bytes_points(res, 1000)}
    layer16 = 2 * 2 * 16 * 2 * 1000  # K and V, 2 KV heads of 16, 2 bytes, 1000 tokens
    assert pts["full attention"]["mb"] == pytest.approx(4 * layer16 / 1e6)
    assert pts["W, 2 layers"]["mb"] == pytest.approx((2 * layer16 + 2 * 4000) / 1e6)
    assert pts["W, 2 layers, stage 2"]["mb"] == pts["W, 2 layers"]["mb"]
    assert pts["W, 2 layers + KIVI 4-bit"]["mb"] == pytest.approx((2 * layer16 * 0.3125 + 2 * 4000) / 1e6)
    assert pts["echokv-lite ridge, greedy @0.5 + KIVI 4-bit"]["family"] == "EchoKV-lite + KIVI"
    assert pts["KIVI 4-bit (g=32)"]["family"] == "KIVI" and "full" not in pts
    assert math.isclose(pts["echokv-lite ridge, greedy @0.5"]["mb"], 0.5 * pts["full attention"]["mb"])
