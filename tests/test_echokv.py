"""EchoKV-lite: capture, atlas, selection, reconstructors, the cache modes, baselines, evaluation.

Everything runs on the tiny GQA Llama trained in seconds (``tiny_gqa_model``); the SmolLM2 checks
(bit-identical full mode, bytes at 2k tokens) load the model from the installed wheel, offline.
"""

import copy

import pytest
import torch

pytest.importorskip("transformers")

from echo_tutor.echokv import (  # noqa: E402
    EchoKVCache,
    KVCapture,
    Reconstructor,
    SlotMoments,
    apply_rope,
    attention_layout,
    calibration_text,
    capture_kv,
    fit_reconstructor,
    kept_counts,
    layer_summary,
    pairwise_cka,
    pairwise_cosine,
    pairwise_r2,
    rope_cos_sin,
    select_slots,
    similarity_atlas,
    slot_errors,
    train_mlp,
    text_windows,
    tiny_gqa_model,
    undo_rope,
)
from echo_tutor.echokv import baselines as B  # noqa: E402
from echo_tutor.echokv.evaluate import (  # noqa: E402
    distill, error_by_position, paired_difference, perplexity, pre_vs_post_rope, prefill,
)
from echo_tutor.echokv.fit import ReconstructorSpec  # noqa: E402
from echo_tutor.echokv.model import _copy_batch  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return tiny_gqa_model()


@pytest.fixture(scope="module")
def data(tiny):
    g = torch.Generator().manual_seed(11)
    cal = _copy_batch(g, 16, 64, tiny.config.vocab_size)
    held = _copy_batch(g, 6, 64, tiny.config.vocab_size)
    cap = capture_kv(tiny, cal, cache=False)
    return cal, held, cap


@pytest.fixture(scope="module")
def rec(data):
    return fit_reconstructor(data[2], 0.5)


def _prompts(vocab, n=3, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (1, L), generator=g) for L in (7, 23, 41)][:n]


# ---------------------------------------------------------------- layout, RoPE, capture
def test_layout_and_rejects_other_models(tiny):
    lay = attention_layout(tiny)
    assert (lay.n_layers, lay.n_kv_heads, lay.n_q_heads, lay.head_dim) == (4, 2, 4, 16)
    with pytest.raises(ValueError, match="Llama-style"):
        attention_layout(torch.nn.Linear(3, 3))
    from echo_tutor.models import build
    with pytest.raises(ValueError, match="model"):
        attention_layout(build("echo", vocab_size=16, d_model=32))
    broken = copy.deepcopy(tiny)
    del broken.model.layers[1].self_attn.k_proj
    with pytest.raises(ValueError, match=r"layers\[1\]"):
        attention_layout(broken)


def test_rope_roundtrip_and_convention_match_the_model(tiny, data):
    """Captured pre-RoPE keys, rotated by our apply_rope, equal the keys the model caches."""
    cal = data[0][:2, :20]
    cap = capture_kv(tiny, cal, cache=False)
    keys, _ = prefill(tiny, cal)
    cos, sin = rope_cos_sin(tiny, torch.arange(20))
    for l in range(4):
        pre = cap.keys[l].permute(1, 0, 2, 3)                       # [W, H, T, D]
        torch.testing.assert_close(apply_rope(pre, cos, sin), keys[l], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(undo_rope(keys[l], cos, sin), pre, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cap.values[l].permute(1, 0, 2, 3), prefill(tiny, cal)[1][l])


def test_capture_disk_cache(tiny, data, tmp_path, monkeypatch):
    monkeypatch.setenv("ECHO_TUTOR_CACHE", str(tmp_path))
    ids = data[0][:3, :16]
    first = capture_kv(tiny, ids)
    assert len(list(tmp_path.glob("kv-*.pt"))) == 1
    second = capture_kv(tiny, ids)
    assert torch.equal(first.keys, second.keys) and torch.equal(first.values, second.values)
    with pytest.raises(ValueError, match="ids"):
        capture_kv(tiny, ids.float())


def test_calibration_text_is_offline_disjoint_and_deterministic():
    a, b = calibration_text("calib"), calibration_text("heldout")
    assert len(a) > 50_000 and len(b) > 30_000
    assert a == calibration_text("calib")
    assert a[:2000] not in b
    with pytest.raises(ValueError, match="split"):
        calibration_text("train")


# ---------------------------------------------------------------- atlas and moments
def _toy_capture(seed=0, L=3, H=2, W=8, T=32, D=4, noise=0.1):
    """Slot (l, 1) is an exact linear map of slot (l, 0) plus noise; layers are independent."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, W, T, D, generator=g)
    A = torch.randn(L, D, D, generator=g)
    y = torch.einsum("lwtd,lde->lwte", x, A) + noise * torch.randn(L, W, T, D, generator=g)
    keys = torch.stack([x, y], 1)                                   # [L, 2, W, T, D]
    return KVCapture(keys, keys.clone())


def test_r2_matches_explicit_lstsq():
    cap = _toy_capture()
    mom = SlotMoments(cap, "K", lam=1e-9)
    fit, held = cap.split(0.75)
    X, Y = fit.slots("K").double(), held.slots("K").double()
    # predict slot 1 from slots 0 and 2 (intercept included), score on the held-out windows
    Z = torch.cat([X[0], X[2], torch.ones(X.shape[1], 1, dtype=X.dtype)], 1)
    W = torch.linalg.lstsq(Z, X[1]).solution
    Zh = torch.cat([Y[0], Y[2], torch.ones(Y.shape[1], 1, dtype=Y.dtype)], 1)
    sse = ((Zh @ W - Y[1]) ** 2).sum()
    sst = ((Y[1] - Y[1].mean(0)) ** 2).sum()
    assert mom.r2([0, 2], 1) == pytest.approx(float(1 - sse / sst), abs=1e-6)
    # the pairwise atlas is the single-input case
    r2 = pairwise_r2(cap, "K", lam=1e-3)
    mom3 = SlotMoments(cap, "K", lam=1e-3)
    assert r2[0, 1].item() == pytest.approx(mom3.r2([0], 1), abs=1e-5)
    assert r2[0, 1] > 0.95 and r2[0, 1] > r2[0, 2] + 0.5   # same layer: linear; other layer: noise


def test_cka_cosine_properties(data):
    cap = data[2]
    cka, cos = pairwise_cka(cap, "V"), pairwise_cosine(cap, "V")
    S = cap.keys.shape[0] * cap.keys.shape[1]
    assert cka.shape == cos.shape == (S, S)
    torch.testing.assert_close(cka.diagonal(), torch.ones(S), atol=1e-5, rtol=0)
    torch.testing.assert_close(cos.diagonal(), torch.ones(S), atol=1e-5, rtol=0)
    torch.testing.assert_close(cka, cka.T, atol=1e-5, rtol=0)
    atlas = similarity_atlas(cap, "K")
    assert set(atlas) == {"r2", "cosine", "cka"}
    summ = layer_summary(atlas["r2"], n_heads=2)
    assert summ.shape == (4, 4)
    with pytest.raises(ValueError, match="kind"):
        pairwise_cosine(cap, "Q")
    with pytest.raises(ValueError, match="n_heads"):
        layer_summary(atlas["r2"], n_heads=3)


# ---------------------------------------------------------------- selection and reconstructors
@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "half", True])
def test_ratio_must_be_in_unit_interval(data, bad):
    cap = data[2]
    for fn in (lambda: select_slots(cap, bad), lambda: fit_reconstructor(cap, bad), lambda: kept_counts(8, bad),
               lambda: B.per_head_svd(cap, bad), lambda: B.streaming_llm(64, bad), lambda: B.random_drop(cap, bad)):
        with pytest.raises(ValueError, match="ratio"):
            fn()


def test_selection_budgets_and_methods(data):
    cap = data[2]
    for method in ("greedy", "fixed", "random"):
        kept = select_slots(cap, 0.5, method=method)
        assert len(kept["K"]) == 4 and len(kept["V"]) == 4
        assert all(0 <= s < 8 for s in kept["K"] + kept["V"])
    kept = select_slots(cap, 0.5, key_ratio=0.25)
    assert (len(kept["K"]), len(kept["V"])) == (2, 6)
    with pytest.raises(ValueError, match="key_ratio"):
        select_slots(cap, 0.25, key_ratio=1.0)       # V would get -0.5
    with pytest.raises(ValueError, match="method"):
        select_slots(cap, 0.5, method="best")
    assert select_slots(layout=(4, 2), ratio=0.5, method="fixed") == select_slots(cap, 0.5, method="fixed")


def test_greedy_keeps_one_of_each_predictable_pair():
    cap = _toy_capture(noise=0.01)
    kept = select_slots(cap, 0.5, window=0)            # 3 of 6 K slots: one per layer is enough
    assert sorted(s // 2 for s in kept["K"]) == [0, 1, 2]


def test_ridge_reconstructor_matches_lstsq():
    cap = _toy_capture(noise=0.01)
    rec = fit_reconstructor(cap, 0.5, kept={"K": [0, 2, 4], "V": [1, 3, 5]}, window=0, lam=1e-9)
    X = cap.slots("K").double()
    Z = torch.cat([X[0], torch.ones(X.shape[1], 1, dtype=X.dtype)], 1)
    W = torch.linalg.lstsq(Z, X[1]).solution
    got = rec.rebuild("K", 1, {0: cap.slots("K")[0]})
    torch.testing.assert_close(got.double(), Z @ W, atol=1e-4, rtol=1e-4)
    err = slot_errors(rec, cap)
    assert err["K"]["rel_err"].shape == (3, 2)
    assert (err["K"]["rel_err"][:, 0] == 0).all() and (err["K"]["rel_err"][:, 1] < 0.05).all()
    # the MLP branch starts at zero: rank > 0 gives the same output as the ridge map
    rec_mlp = fit_reconstructor(cap, 0.5, kept=rec.kept, window=0, lam=1e-9, rank=4)
    torch.testing.assert_close(rec_mlp.rebuild("K", 1, {0: cap.slots("K")[0]}), got)


def test_bad_reconstructor_arguments(data):
    with pytest.raises(ValueError, match="window"):
        fit_reconstructor(data[2], 0.5, window=-1)
    with pytest.raises(ValueError, match="rank"):
        fit_reconstructor(data[2], 0.5, rank=1.5)


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


def _two_phase(model, cache, x, split):
    model(x[:, :split], cache=cache, use_cache=True)
    outs = [model(x[:, split:split + 5], cache=cache, use_cache=True).logits]
    for t in range(split + 5, x.shape[1]):                                   # token-by-token decode
        outs.append(model(x[:, t:t + 1], cache=cache, use_cache=True).logits)
    return torch.cat(outs, 1)


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
    before = comp.nbytes()
    assert before == comp.full_nbytes()
    sim.compress_now()
    comp.compress_now()
    assert comp.mode == "compressed" and comp.nbytes() == before // 2
    a = tiny(x[:, 30:], cache=sim, use_cache=True).logits
    b = tiny(x[:, 30:], cache=comp, use_cache=True).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    full = EchoKVCache(tiny, None)
    tiny(x[:, :30], cache=full, use_cache=True)
    assert (tiny(x[:, 30:], cache=full, use_cache=True).logits - b).abs().max() > 0   # it did compress
    assert comp.nbytes() == comp.full_nbytes() // 2


def test_compress_mid_generation(tiny, rec):
    x = _prompts(tiny.config.vocab_size)[2]
    cache = EchoKVCache(tiny, rec, "full")
    out = tiny.generate(x, max_new_tokens=6, do_sample=False, cache=cache)
    full_bytes = cache.nbytes()
    cache.compress_now()
    assert cache.nbytes() == full_bytes // 2
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


def test_distill_trains_only_the_reconstructor(tiny, rec, data):
    r = copy.deepcopy(rec)
    before_model = [p.clone() for p in tiny.parameters()]
    before_rec = [p.clone() for p in r.parameters()]
    losses = distill(tiny, r, data[0], 40, steps=3, lr=1e-3)
    assert len(losses) == 3 and all(l >= 0 for l in losses)
    assert all(torch.equal(a, b) for a, b in zip(before_model, tiny.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_rec, r.parameters()))
    assert not any(p.requires_grad for p in tiny.parameters())


# ---------------------------------------------------------------- the real model (offline)
@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    from echo_tutor.echokv import load_smollm2
    try:
        return load_smollm2()
    except ImportError as e:
        pytest.skip(str(e))


def test_smollm2_full_mode_bit_identical(smol):
    model, tok = smol
    lay = attention_layout(model)
    assert (lay.n_layers, lay.n_kv_heads, lay.n_q_heads, lay.head_dim) == (30, 3, 9, 64)
    for text in ("The capital of France is", "def fibonacci(n):\n    ", "Keys are easier to predict than"):
        ids = tok(text, return_tensors="pt").input_ids
        plain = model(ids, use_cache=False).logits
        got = model(ids, cache=EchoKVCache(model), use_cache=True).logits
        assert (plain - got).abs().max().item() == 0.0


def test_smollm2_compressed_bytes_at_2k_tokens(smol):
    model, _ = smol
    kept = select_slots(layout=(30, 3), ratio=0.5, method="fixed")
    rec = Reconstructor(ReconstructorSpec(30, 3, 64, kept))
    cache = EchoKVCache(model, rec, "compressed")
    ids = torch.randint(0, 49152, (1, 2048), generator=torch.Generator().manual_seed(0))
    model(ids[:, :2040], cache=cache, use_cache=True)
    for t in range(2040, 2048):
        model(ids[:, t : t + 1], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 2048
    frac = cache.nbytes() / cache.full_nbytes()
    assert abs(frac - rec.fraction_kept()) / rec.fraction_kept() < 0.02
    assert cache.full_nbytes() == 2 * 30 * 3 * 2048 * 64 * 4


def test_train_mlp_lowers_the_reconstruction_loss(data):
    cap = data[2]
    rec = fit_reconstructor(cap, 0.5, rank=4)
    losses = train_mlp(rec, cap, steps=40, lr=1e-2, batch=256)
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])
    with pytest.raises(ValueError, match="MLP branch"):
        train_mlp(fit_reconstructor(cap, 0.5), cap, steps=1)


def test_smollm2_compressed_with_every_slot_is_identical(smol):
    model, tok = smol
    kept = select_slots(layout=(30, 3), ratio=1.0, method="fixed")
    rec = Reconstructor(ReconstructorSpec(30, 3, 64, kept))
    ids = tok("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt").input_ids
    full = _two_phase(model, EchoKVCache(model), ids, 20)
    comp = _two_phase(model, EchoKVCache(model, rec, "compressed"), ids, 20)
    assert (full - comp).abs().max().item() == 0.0


def test_cli_echokv_rejects_bad_flags(capsys):
    from echo_tutor.cli import main

    with pytest.raises(SystemExit) as e:
        main(["echokv", "--stage2-steps", "-3"])
    assert e.value.code == 2


class _Tok:
    def __call__(self, text, return_tensors=None):
        return type("Enc", (), {"input_ids": torch.arange(len(text.split()))[None]})()


def test_rebuild_heads_checks_shapes():
    from echo_tutor.echokv.ops import rebuild_heads

    x, cs = torch.randn(1, 2, 5, 8), torch.randn(5, 8)
    W, b = torch.randn(3, 2, 8, 8), torch.randn(3, 8)
    assert rebuild_heads(x, cs, cs, W, b).shape == (1, 3, 5, 8)
    cases = [((torch.randn(2, 5, 8), cs, cs, W, b), "x must have 4 dims"),
             ((torch.randn(1, 2, 5, 7), torch.randn(5, 7), torch.randn(5, 7), W, b), "even"),
             ((x, torch.randn(4, 8), cs, W, b), "cos must have shape"),
             ((x, cs, cs, torch.randn(3, 1, 8, 8), b), "W must have shape"),
             ((x, cs, cs, W, torch.randn(2, 8)), "b must have shape")]
    for args, msg in cases:
        with pytest.raises(ValueError, match=msg):
            rebuild_heads(*args)


def test_more_bad_arguments_name_themselves(tiny, rec, data):
    cap = data[2]
    cases = [
        (lambda: select_slots(cap, 0.5, window=-2), "window"),
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
