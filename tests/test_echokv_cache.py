"""EchoKV-lite at work: the cache modes, the baselines, evaluation and stage 2, argument checks.

Everything runs on the tiny GQA Llama trained in seconds (``tiny_gqa_model``).
"""

import copy

import pytest
import torch

pytest.importorskip("transformers")

from echo_tutor.echokv import (  # noqa: E402
    EchoKVCache,
    Reconstructor,
    calibration_text,
    capture_kv,
    fit_reconstructor,
    rope_cos_sin,
    select_slots,
    text_windows,
    tiny_gqa_model,
)
from echo_tutor.echokv import baselines as B  # noqa: E402
from echo_tutor.echokv.evaluate import (  # noqa: E402
    distill, error_by_position, paired_difference, perplexity, pre_vs_post_rope, prefill,
)
from echo_tutor.echokv.reconstructor import ReconstructorSpec  # noqa: E402

from echokv_fixtures import _two_phase, data, rec, tiny  # noqa: E402,F401  (pytest fixtures)


def _prompts(vocab, n=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, L), generator=g) for L in (7, 23, 41)][:n]


# ---------------------------------------------------------------- the cache
def test_full_mode_is_bit_identical(tiny, rec):
    for x in _prompts(tiny.config.vocab_size):
        plain = tiny(x, use_cache=False).logits
        got = tiny(x, cache=EchoKVCache(tiny, rec, "full"), use_cache=True).logits
        assert (plain - got).abs().max().item() == 0.0
    x = _prompts(tiny.config.vocab_size)[1]
    a = tiny.generate(x, max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True)
    b = tiny.generate(x, max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True,
                      cache=EchoKVCache(tiny, rec, "full"))
    assert torch.equal(a.sequences, b.sequences)
    assert all(torch.equal(s, t) for s, t in zip(a.scores, b.scores))


def test_compressed_with_every_slot_retained_is_identical(tiny, data):
    rec_all = fit_reconstructor(data[2], 1.0)
    x = data[1][:2, :40]
    full = _two_phase(tiny, EchoKVCache(tiny, None, "full"), x, 20)
    comp = _two_phase(tiny, EchoKVCache(tiny, rec_all, "compressed"), x, 20)
    assert (full - comp).abs().max().item() == 0.0


def test_compressed_equals_simulated_and_saves_bytes(tiny, rec, data):
    x = data[1][:2, :40]
    sim = EchoKVCache(tiny, rec, "simulated")
    comp = EchoKVCache(tiny, rec, "full")
    tiny(x[:, :30], cache=sim, use_cache=True)
    tiny(x[:, :30], cache=comp, use_cache=True)
    before = comp.nbytes
    assert before == comp.full_nbytes
    sim.compress_now()
    comp.compress_now()
    assert comp.mode == "compressed" and comp.nbytes == before // 2
    a = tiny(x[:, 30:], cache=sim, use_cache=True).logits
    b = tiny(x[:, 30:], cache=comp, use_cache=True).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    full = EchoKVCache(tiny, None)
    tiny(x[:, :30], cache=full, use_cache=True)
    assert (tiny(x[:, 30:], cache=full, use_cache=True).logits - b).abs().max() > 0   # it did compress
    assert comp.nbytes == comp.full_nbytes // 2


def test_compress_mid_generation(tiny, rec):
    x = _prompts(tiny.config.vocab_size)[2]
    cache = EchoKVCache(tiny, rec, "full")
    out = tiny.generate(x, max_new_tokens=6, do_sample=False, cache=cache)
    full_bytes = cache.nbytes
    cache.compress_now()
    assert cache.nbytes == full_bytes // 2
    out2 = tiny.generate(out, max_new_tokens=6, do_sample=False, cache=cache)
    assert out2.shape[1] == out.shape[1] + 6 and torch.equal(out2[:, : out.shape[1]], out)
    assert cache.get_seq_length() == out2.shape[1] - 1


def test_cache_rejects_bad_arguments(tiny, rec):
    with pytest.raises(ValueError, match="mode"):
        EchoKVCache(tiny, rec, "lossy")
    with pytest.raises(ValueError, match="reconstructor"):
        EchoKVCache(tiny, None, "compressed")
    with pytest.raises(ValueError, match="compress_now"):
        EchoKVCache(tiny, None, "full").compress_now()
    other = Reconstructor(ReconstructorSpec(3, 2, 16, {"K": [0], "V": [0]}))
    with pytest.raises(ValueError, match="fitted for"):
        EchoKVCache(tiny, other, "compressed")
    with pytest.raises(ValueError, match="Llama-style"):
        EchoKVCache(torch.nn.Linear(2, 2), rec)


# ---------------------------------------------------------------- baselines and evaluation
def test_baselines_at_full_budget_are_lossless(tiny, data):
    cap = data[2]
    cal = data[0][:2, :32]
    keys, values = prefill(tiny, cal)
    cos, sin = rope_cos_sin(tiny, torch.arange(32))
    for m in (B.per_head_svd(cap, 1.0), B.cross_layer_svd(cap, 1.0), B.streaming_llm(32, 1.0), B.kivi(8, group=32)):
        k2, v2, keep = m.apply(keys, values, cos, sin)
        tol = 0.05 if "KIVI" in m.name else 1e-3
        for a, b in zip(keys + values, k2 + v2):
            assert ((a - b).norm() / a.norm()).item() < tol, m.name
        if keep is not None:
            assert keep.all()


def test_kivi_levels_and_streaming_mask(tiny, data):
    keys, values = prefill(tiny, data[0][:1, :64])
    cos, sin = rope_cos_sin(tiny, torch.arange(64))
    k2, v2, _ = B.kivi(2, group=32).apply(keys, values, cos, sin)
    # keys: per channel, groups of 32 tokens -> at most 4 distinct values per (channel, group)
    g = k2[0][0, 0, :32, 0]
    assert g.unique().numel() <= 4
    assert v2[0][0, 0, 0, :32].unique().numel() <= 4
    assert B.kivi(2, group=32).fraction == pytest.approx((2 + 1) / 16)
    m = B.streaming_llm(64, 0.25, sinks=4)
    _, _, keep = m.apply(keys, values, cos, sin)
    assert keep.sum().item() == 16 and keep[0, :4].all() and keep[0, -12:].all()
    with pytest.raises(ValueError, match="bits"):
        B.kivi(5)


def test_perplexity_table(tiny, rec, data):
    cap, held = data[2], data[1]
    res = perplexity(tiny, held, 40, [B.echokv_method(rec), B.streaming_llm(40, 1.0, sinks=4), B.random_drop(cap, 0.5)])
    assert res["full"]["delta_ppl"] == 0.0
    assert res[B.streaming_llm(40, 1.0).name]["ppl"] == pytest.approx(res["full"]["ppl"], rel=1e-6)
    assert res["echokv-lite"]["fraction"] == 0.5
    # on this model the ridge maps are far better than filling dropped slots with their mean
    assert res["echokv-lite"]["ppl"] < res["random-drop (mean)"]["ppl"]
    assert len(res["full"]["window_nll"]) == held.shape[0]
    cmp = paired_difference(res, "echokv-lite", "random-drop (mean)")
    assert cmp["mean_nll_diff"] < 0 and cmp["ci95"][0] <= cmp["mean_nll_diff"] <= cmp["ci95"][1]
    with pytest.raises(ValueError, match="not in the table"):
        paired_difference(res, "echokv-lite", "H2O")
    with pytest.raises(ValueError, match="ctx_len"):
        perplexity(tiny, held, 63, [])
    with pytest.raises(ValueError, match="ids"):
        perplexity(tiny, held.float(), 10, [])


def test_error_by_position_and_rope_ablation(tiny, rec, data):
    cal, held, cap = data
    e = error_by_position(rec, tiny, capture_kv(tiny, held, cache=False), "K")
    assert e.shape == (64,) and (e >= 0).all()
    res = pre_vs_post_rope(tiny, cap, capture_kv(tiny, held, cache=False), 0.5)
    # fitting before RoPE is position-invariant; a map fitted on rotated keys is not
    assert res["pre"].mean() < res["post"].mean()


@pytest.mark.slow
def test_distill_trains_only_the_reconstructor(tiny, rec, data):
    r = copy.deepcopy(rec)
    before_model = [p.clone() for p in tiny.parameters()]
    before_rec = [p.clone() for p in r.parameters()]
    losses = distill(tiny, r, data[0], 40, steps=3, lr=1e-3)
    assert len(losses) == 3 and all(l >= 0 for l in losses)
    assert all(torch.equal(a, b) for a, b in zip(before_model, tiny.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_rec, r.parameters()))
    assert not any(p.requires_grad for p in tiny.parameters())


# ---------------------------------------------------------------- argument checks, CLI, study
def test_cli_echokv_rejects_bad_flags(capsys):
    from echo_tutor.cli import main

    with pytest.raises(SystemExit) as e:
        main(["echokv", "--stage2-steps", "-3"])
    assert e.value.code == 2


def test_paired_difference_is_the_packages_paired_ci():
    """One interval rule: paired_difference's interval is ``stats.paired_ci`` of the per-window NLLs (the
    bootstrap at 24 windows, as shipped; Student's t below 10), and its other keys follow from the same numbers."""
    from echo_tutor.stats import N_BOOT, paired_ci

    assert N_BOOT == 10_000
    g = torch.Generator().manual_seed(5)
    for n in (24, 5):
        a, b = ((2 + torch.rand(n, generator=g, dtype=torch.float64)).tolist() for _ in range(2))
        got = paired_difference({"x": {"window_nll": a}, "y": {"window_nll": b}}, "x", "y")
        m, lo, hi = paired_ci(a, b)
        assert list(got) == ["a", "b", "mean_nll_diff", "ci95", "windows", "a_better_windows"]
        assert got["mean_nll_diff"] == m and got["ci95"] == [lo, hi] and lo < m < hi
        assert got["windows"] == n and got["a_better_windows"] == sum(x < y for x, y in zip(a, b))


class _Tok:
    def __call__(self, text, return_tensors=None):
        return type("Enc", (), {"input_ids": torch.arange(len(text.split()))[None]})()


def test_more_bad_arguments_name_themselves(tiny, rec, data):
    cap = data[2]
    cases = [
        (lambda: select_slots(cap, 0.5, layer_window=-2), "layer_window must be"),
        (lambda: B.kivi(2, group=0), "group"),
        (lambda: B.kivi(2, residual=-1), "residual"),
        (lambda: B.streaming_llm(0, 0.5), "ctx_len"),
        (lambda: B.streaming_llm(64, 0.5, sinks=-1), "sinks"),
        (lambda: B.cross_layer_svd(cap, 0.5, group=0), "group"),
        (lambda: distill(tiny, rec, data[0], 40, steps=0), "steps"),
        (lambda: distill(tiny, "rec", data[0], 40, steps=1), "Reconstructor"),
        (lambda: calibration_text("test"), "split"),
        (lambda: tiny_gqa_model(steps=-1), "steps"),
        (lambda: capture_kv(tiny, data[0][:2], batch_size=0, cache=False), "batch_size"),
        (lambda: text_windows(_Tok(), "a b c", 0, 1), "seq_len"),
    ]
    for fn, word in cases:
        with pytest.raises(ValueError, match=word):
            fn()


def test_method_family_gives_one_colour_per_family_and_names_unknown_methods():
    from echo_tutor.echokv.study import METHOD_FAMILIES, method_family

    assert len({c for _, _, c in METHOD_FAMILIES}) == len(METHOD_FAMILIES)
    assert method_family("echokv-lite stage 2, greedy @0.5")[1] == "EchoKV-lite stage 2 (greedy)"
    assert method_family("full")[2] == "#000000"
    with pytest.raises(ValueError, match="name: no family"):
        method_family("h2o @0.5")
