"""EchoKV-lite stage 1: layout, RoPE and capture, the similarity atlas, slot selection, the
reconstructors and the rebuild op; and that the package imports without the ``echokv`` extra.

The model tests run on the tiny GQA Llama trained in seconds (``tiny_gqa_model``, skipped without
transformers); the others need torch only.
"""

import copy
import os
import subprocess
import sys

import pytest
import torch

from echo_tutor.echokv import (
    KVCapture,
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
    undo_rope,
)
from echo_tutor.echokv import baselines as B
from echo_tutor.echokv.evaluate import prefill

from echokv_fixtures import data, tiny  # noqa: F401  (pytest fixtures)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    kept = select_slots(cap, 0.5, layer_window=0)      # 3 of 6 K slots: one per layer is enough
    assert sorted(s // 2 for s in kept["K"]) == [0, 1, 2]


def test_ridge_reconstructor_matches_lstsq():
    cap = _toy_capture(noise=0.01)
    rec = fit_reconstructor(cap, 0.5, kept={"K": [0, 2, 4], "V": [1, 3, 5]}, layer_window=0, lam=1e-9)
    X = cap.slots("K").double()
    Z = torch.cat([X[0], torch.ones(X.shape[1], 1, dtype=X.dtype)], 1)
    W = torch.linalg.lstsq(Z, X[1]).solution
    got = rec.rebuild("K", 1, {0: cap.slots("K")[0]})
    torch.testing.assert_close(got.double(), Z @ W, atol=1e-4, rtol=1e-4)
    err = slot_errors(rec, cap)
    assert err["K"]["rel_err"].shape == (3, 2)
    assert (err["K"]["rel_err"][:, 0] == 0).all() and (err["K"]["rel_err"][:, 1] < 0.05).all()
    # the MLP branch starts at zero: rank > 0 gives the same output as the ridge map
    rec_mlp = fit_reconstructor(cap, 0.5, kept=rec.kept, layer_window=0, lam=1e-9, rank=4)
    torch.testing.assert_close(rec_mlp.rebuild("K", 1, {0: cap.slots("K")[0]}), got)


def test_bad_reconstructor_arguments(data):
    with pytest.raises(ValueError, match="layer_window must be"):
        fit_reconstructor(data[2], 0.5, layer_window=-1)
    with pytest.raises(ValueError, match="rank"):
        fit_reconstructor(data[2], 0.5, rank=1.5)


@pytest.mark.slow
def test_train_mlp_lowers_the_reconstruction_loss(data):
    cap = data[2]
    rec = fit_reconstructor(cap, 0.5, rank=4)
    losses = train_mlp(rec, cap, steps=40, lr=1e-2, batch=256)
    assert len(losses) == 40 and sum(losses[-5:]) < sum(losses[:5])
    with pytest.raises(ValueError, match="MLP branch"):
        train_mlp(fit_reconstructor(cap, 0.5), cap, steps=1)


# ---------------------------------------------------------------- the rebuild op, imports
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


_NO_TRANSFORMERS = """
import importlib.util, sys
sys.modules["transformers"] = None          # as if the echokv extra were not installed
import echo_tutor.echokv
import echo_tutor.echokv.ops
from echo_tutor.echokv import EchoKVCache
if importlib.util.find_spec("triton") is not None:
    import echo_kernels.echokv
    assert callable(echo_kernels.echokv.forward)
try:
    EchoKVCache(None)
except ImportError as e:
    print(e)
else:
    raise SystemExit("EchoKVCache(...) did not raise ImportError without transformers")
"""


def test_echokv_imports_without_transformers():
    """The echokv extra is optional: ``echo_tutor.echokv``, its rebuild op and the Triton kernel that
    imports it load without transformers; only building a cache asks for the extra."""
    out = subprocess.run([sys.executable, "-c", _NO_TRANSFORMERS], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "EchoKVCache needs the echokv extra: pip install 'echo_tutor[echokv]'" in out.stdout
