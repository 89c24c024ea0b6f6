"""Converted attention layers (echo_tutor.convert) on the tiny GQA Llama: exactness, streaming, state bytes,
stage 1, bad arguments. The SmolLM2 study itself is `echo-tutor convert` (tests/test_convert_smollm2.py)."""

import json
import random

import pytest
import torch
from echokv_fixtures import tiny  # noqa: F401  (fixture)

from echo_tutor.convert import VARIANTS, ConvertedAttention, MixerSpec
from echo_tutor.convert.study import (
    capture_inputs,
    converted,
    fit_layer,
    greedy,
    layer_inputs,
    mixer_bytes,
    new_mixer,
    original_attention,
    parse_variant,
    state_bytes,
)
from echo_tutor.echokv.model import copy_batch
from echo_tutor.experiments.convert import ConvertRecipe
from echo_tutor.experiments.convert_report import format_summary, summarize

SPECS = [MixerSpec("window", window=8, sinks=2), MixerSpec("ska", rank=8, power_steps=0),
         MixerSpec("ska", rank=8, power_steps=1), MixerSpec("window+ska", window=8, sinks=2, rank=8, power_steps=1),
         MixerSpec("window+ska", window=8, sinks=0, rank=8, power_steps=0),
         MixerSpec("window+linear", window=8, sinks=2, rank=8),
         MixerSpec("window+ska", window=8, sinks=2, rank=8, power_steps=1, sparse=4),  # the sparse cache
         MixerSpec("window+linear", window=8, sinks=2, rank=8, sparse=4),
         MixerSpec("window+ska", window=8, sinks=2, rank=8, power_steps=1, fixed_gate=0.5)]  # the gate fixed


def _x(model, T=40, B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, model.config.hidden_size, generator=g)
    return x, layer_inputs(model, T, "cpu")


def _perturb(m: ConvertedAttention) -> None:
    """Move the mixer away from its init so that every part (gate, linear weight, features) matters."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        if hasattr(m, "gate_b"):
            m.gate_b.fill_(0.0)
            m.gate_w.copy_(0.05 * torch.randn(m.gate_w.shape, generator=g))
        if hasattr(m, "lin_b"):
            m.lin_b.fill_(0.5)
        if hasattr(m, "phi_q"):
            m.phi_q.add_(0.1 * torch.randn(m.phi_q.shape, generator=g))


@pytest.mark.parametrize("variant, sparse", [("window", 0), ("window+ska", 0), ("window+linear", 0),
                                             ("window+ska", 4), ("window+linear", 4)])
def test_window_covering_the_context_is_the_original_attention(tiny, variant, sparse):  # noqa: F811
    x, rope = _x(tiny, T=48)
    attn = tiny.model.layers[1].self_attn
    ref = original_attention(attn, x, rope)
    m = new_mixer(tiny, 1, MixerSpec(variant, window=48, sinks=0, rank=8, sparse=sparse))
    _perturb(m)
    y = m(x, position_embeddings=rope)[0]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


def test_a_short_window_is_not_the_original(tiny):  # noqa: F811 (the test above cannot pass by accident)
    x, rope = _x(tiny, T=48)
    attn = tiny.model.layers[1].self_attn
    ref = original_attention(attn, x, rope)
    y = new_mixer(tiny, 1, MixerSpec("window", window=8, sinks=0))(x, position_embeddings=rope)[0]
    assert (y - ref).abs().max() > 1e-3


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_step_decoding_equals_the_parallel_forward(tiny, spec):  # noqa: F811
    x, rope = _x(tiny, T=40)
    m = new_mixer(tiny, 2, spec)
    _perturb(m)
    y = m(x, position_embeddings=rope)[0]
    st = m.init_state(2)
    ys = []
    for t in range(x.shape[1]):
        yt, st = m.step(x[:, t], (rope[0][:, t], rope[1][:, t]), st)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y, atol=2e-5, rtol=1e-4)
    assert st.count == 40


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_state_bytes_stop_growing(tiny, spec):  # noqa: F811
    m = new_mixer(tiny, 0, spec)
    x, rope = _x(tiny, T=300, B=1)
    st = m.init_state(1)
    sizes = {}
    for t in range(300):
        _, st = m.step(x[:, t], (rope[0][:, t], rope[1][:, t]), st)
        if t + 1 in (100, 300):
            sizes[t + 1] = st.nbytes
    assert sizes[100] == sizes[300] == m.state_nbytes(1)
    # the model-level count: converted layers hold the same bytes at 1k and at 16k tokens
    kv_1k, kv_16k = state_bytes(tiny, None, 0, 1024), state_bytes(tiny, None, 0, 16384)
    assert kv_16k == 16 * kv_1k
    n = len(tiny.model.layers)
    assert state_bytes(tiny, spec, n, 1024) == state_bytes(tiny, spec, n, 16384) == n * mixer_bytes(tiny, spec)


def test_state_bytes_formula():
    # SmolLM2's shape: 3 KV heads of 64; W = 64, A = 4, r = 32: K/V rows + pending features + G, M, C, k_prev
    spec = MixerSpec("window+ska", window=64, sinks=4, rank=32)
    assert ConvertedAttention.state_nbytes_for(spec, 3, 64) == 4 * (2 * 68 * 3 * 64 + 64 * 3 * 32 + 3 * (2 * 32 * 32 + 64 * 32 + 32))


def test_prefill_then_stream_through_the_model_matches_recomputing(tiny):  # noqa: F811
    g = torch.Generator().manual_seed(5)
    ids = copy_batch(g, 1, 40, tiny.config.vocab_size)
    mixers = {0: new_mixer(tiny, 0, SPECS[3]), 2: new_mixer(tiny, 2, SPECS[5])}
    for m in mixers.values():
        _perturb(m)
    with converted(tiny, mixers):
        fast = greedy(tiny, ids, 6)
        x, slow = ids, []
        for _ in range(6):
            nxt = tiny(x).logits[:, -1].argmax(-1, keepdim=True)
            slow.append(nxt)
            x = torch.cat([x, nxt], 1)
    assert torch.equal(fast, torch.cat(slow, 1))
    assert not isinstance(tiny.model.layers[0].self_attn, ConvertedAttention)  # restored


def test_stage1_lowers_the_heldout_error(tiny):  # noqa: F811
    g = torch.Generator().manual_seed(7)
    ids = copy_batch(g, 12, 64, tiny.config.vocab_size)  # copies at distance 32: beyond a window of 8
    X = capture_inputs(tiny, ids, [1])[1]
    m, info = fit_layer(tiny, 1, MixerSpec("window+ska", window=8, sinks=0, rank=8, power_steps=0), X[:8],
                        heldout=X[8:], steps=60, lr=2e-2)
    assert info["rel_err_after"] < 0.8 * info["rel_err_before"], info
    assert any(p.requires_grad for p in m.parameters())
    assert not any(p.requires_grad for p in m.q_proj.parameters())  # the model's own projections stay frozen


def test_stage2_lowers_the_heldout_kl_and_trains_only_the_mixers(tiny):  # noqa: F811
    from echo_tutor.convert.distill import distill, token_kl

    g = torch.Generator().manual_seed(11)
    ids = copy_batch(g, 10, 64, tiny.config.vocab_size)
    mixers = {i: new_mixer(tiny, i, MixerSpec("window+ska", window=8, sinks=0, rank=8, power_steps=0)) for i in (1, 2)}
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    grads = {n: p.requires_grad for n, p in tiny.named_parameters()}
    info = distill(tiny, mixers, ids[:8], heldout=ids[8:], steps=40, lr=1e-2)
    assert info["kl_after"] < 0.8 * info["kl_before"], info
    assert len(info["losses"]) == 40
    for n, p in tiny.named_parameters():  # the pretrained weights did not move and are as trainable as before
        assert torch.equal(p, before[n]) and p.requires_grad == grads[n], n
    assert all(not isinstance(layer.self_attn, ConvertedAttention) for layer in tiny.model.layers)
    t = torch.log_softmax(torch.randn(2, 5, 7), -1)
    assert float(token_kl(t, t)) == pytest.approx(0.0, abs=1e-6) and float(token_kl(t, torch.zeros(2, 5, 7))) > 0
    with pytest.raises(ValueError, match="mixers must name"):
        distill(tiny, {}, ids)
    with pytest.raises(ValueError, match="ids must be a tensor"):
        distill(tiny, mixers, ids[:1])
    with pytest.raises(ValueError, match="lr must be a positive"):
        distill(tiny, mixers, ids, lr=0)
    with pytest.raises(ValueError, match="stage2_variants"):
        ConvertRecipe("x", "x", stage2_variants=["window"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(variant="mamba"), "variant must be one of"),
    (dict(window=0), "window must be >= 1"),
    (dict(rank=0), "rank must be >= 1"),
    (dict(sinks=-1), "sinks must be >= 0"),
    (dict(power_steps=-1), "power_steps must be >= 0"),
    (dict(eps=0.0), "eps"),
    (dict(variant="window+linear", rank=7), "rank must be even"),
    (dict(sparse=-1), "sparse must be >= 0"),
    (dict(variant="window", sparse=4), "sparse: a cache of the worst-recalled pairs needs statistics"),
    (dict(variant="ska", sparse=4), "sparse: a cache"),
    (dict(variant="window+linear", fixed_gate=0.5), "fixed_gate: only 'window\\+ska' has a gate"),
    (dict(fixed_gate=1.5), "fixed_gate must be a number in \\[0, 1\\]"),
])
def test_bad_specs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixerSpec(**kwargs)


def test_bad_layers_and_names(tiny):  # noqa: F811
    with pytest.raises(ValueError, match=r"layer must be an int in \[0, 3\]"):
        new_mixer(tiny, 4, MixerSpec())
    with pytest.raises(ValueError, match="variant must be one of"):
        parse_variant("window+mamba:K1")
    with pytest.raises(ValueError, match="':K<n>'"):
        parse_variant("window+ska:1")
    with pytest.raises(ValueError, match="counts"):
        ConvertRecipe("x", "x", counts=[0])
    with pytest.raises(ValueError, match="variants"):
        ConvertRecipe("x", "x", variants=[])
    assert parse_variant("window+ska:K0").power_steps == 0
    assert VARIANTS == ("window", "ska", "window+ska", "window+linear")


def test_cli_bad_arguments_exit_2(capsys):
    from echo_tutor.cli import main

    assert main(["convert", "--variants", "window+mamba"]) == 2
    assert "variant must be one of" in capsys.readouterr().err
    for argv in (["convert", "--counts", "0"], ["convert", "--window", "0"], ["convert", "--rank", "0"]):
        with pytest.raises(SystemExit) as exc:  # argparse: positive ints only
            main(argv)
        assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def _fake_result(rng: random.Random):
    full = [3.0 + rng.random() for _ in range(12)]
    sweep = {"window": {"1": [x + 0.01 for x in full], "4": [x + 0.3 for x in full]},
             "window+ska:K1": {"1": [x + 0.005 for x in full], "4": [x + 0.1 + 0.01 * rng.random() for x in full]}}
    return {"full_window_nll": full, "sweep_window_nll": sweep, "labels": {"window": "window", "window+ska:K1": "wska"},
            "needle": {"full": {"256": {"correct": 3, "trials": 3}}, "window": {"256": {"correct": 0, "trials": 3}}},
            "needle_layers": [0, 1],
            "stage2": {"window+ska:K1": {"4": {"window_nll": [x + 0.05 for x in full], "kl_before": 0.1, "kl_after": 0.05}}},
            "needle_stage2": {"window+ska:K1": {"256": {"correct": 2, "trials": 3}}}}


def test_summary_budgets_and_verdicts():
    r = _fake_result(random.Random(0))
    s = summarize(r)
    assert s["budget"] == {"window": {"5%": 1, "20%": 1}, "window+ska:K1": {"5%": 1, "20%": 4}}
    v4 = next(v for v in s["versus"] if v["n"] == 4)
    assert v4["a"] == "window+ska:K1" and v4["verdict"] == "better" and v4["hi"] < 0
    (s2,) = s["stage2"]
    assert s2["dnll"] < 0 and s2["verdict"] == "better" and s2["ratio"] < s2["stage1_ratio"]
    text = format_summary(r)
    assert "| wska | 4 |" in text and "0/3" in text and "| wska, stage 2 | 2/3 |" in text
    json.dumps(s)


def test_gate_is_the_weight_of_the_statistics(tiny):  # noqa: F811
    x, rope = _x(tiny, T=40)
    m = new_mixer(tiny, 1, MixerSpec("window+ska", window=8, sinks=2, rank=8, power_steps=1))
    _perturb(m)
    g = m.gate(x)
    assert g.shape == (2, tiny.config.num_attention_heads, 40)
    assert torch.all(g[..., :10] == 0) and torch.all((g[..., 10:] > 0) & (g[..., 10:] < 1))
    with torch.no_grad():
        m.gate_b.fill_(1e4)
    assert torch.allclose(m.gate(x)[..., 10:], torch.ones(1))
    assert not hasattr(new_mixer(tiny, 1, MixerSpec("window", window=8)), "gate")  # only window+ska has one


def test_one_class_per_variant(tiny):  # noqa: F811
    from echo_tutor.convert import SKAAttention, WindowAttention, WindowLinearAttention, WindowSKAAttention

    want = {"window": WindowAttention, "ska": SKAAttention, "window+ska": WindowSKAAttention,
            "window+linear": WindowLinearAttention}
    attn = tiny.model.layers[1].self_attn
    layout = dict(n_q_heads=tiny.config.num_attention_heads, n_kv_heads=tiny.config.num_key_value_heads,
                  head_dim=tiny.config.head_dim)
    for variant, cls in want.items():
        m = ConvertedAttention(attn, MixerSpec(variant, rank=8), **layout)
        assert type(m) is cls and isinstance(m, ConvertedAttention)
    own = {n for n, p in new_mixer(tiny, 1, MixerSpec("window")).named_parameters() if p.requires_grad}
    assert own == set()  # the window alone learns nothing
    own = {n for n, p in new_mixer(tiny, 1, MixerSpec("window+ska", rank=8)).named_parameters() if p.requires_grad}
    assert own == {"phi_k", "phi_q", "eta", "gamma", "gate_w", "gate_b"}
    with pytest.raises(ValueError, match="variant 'window'"):
        WindowAttention(attn, MixerSpec("ska", rank=8), **layout)
    with pytest.raises(ValueError, match="spec must be a MixerSpec"):
        ConvertedAttention(attn, "window+ska", **layout)


def test_the_decode_state_lives_in_the_cache(tiny):  # noqa: F811
    from transformers.cache_utils import DynamicCache

    from echo_tutor.convert import ConvertedCache, MixerSlot

    g = torch.Generator().manual_seed(6)
    ids = copy_batch(g, 1, 60, tiny.config.vocab_size)
    spec = SPECS[3]
    mixers = {0: new_mixer(tiny, 0, spec)}
    with converted(tiny, mixers):
        cache = ConvertedCache(tiny)
        assert isinstance(cache.layers[0], MixerSlot) and not isinstance(cache.layers[1], MixerSlot)
        tiny(ids[:, :40], cache=cache, use_cache=True)
        assert cache.get_seq_length() == 40  # layer 0 is converted: its slot counts the tokens it read
        sizes = []
        for t in range(40, 60):
            tiny(ids[:, t:t + 1], cache=cache, use_cache=True, position_ids=torch.tensor([[t]]))
            sizes.append(cache.layers[0].nbytes)
        assert sizes[0] == sizes[-1] == mixers[0].state_nbytes(1)  # the converted layer's share stops growing
        assert cache.nbytes > cache.layers[0].nbytes
        with pytest.raises(ValueError, match="ConvertedCache"):  # another cache has no state to continue from
            plain = DynamicCache()
            tiny(ids[:, :40], cache=plain, use_cache=True)
            tiny(ids[:, 40:41], cache=plain, use_cache=True, position_ids=torch.tensor([[40]]))
        with pytest.raises(ValueError, match="MixerState"):
            cache.layers[0].update(torch.zeros(1), torch.zeros(1))
    with pytest.raises(ValueError, match="no mixer slot"):
        ConvertedCache(tiny).mixer_slot(0)  # made after the layers were put back
