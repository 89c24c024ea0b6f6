"""The conversion study on the real model (SmolLM2-135M, offline): exactness of a converted layer whose
window covers the context, the shipped mixers reproducing their recorded stage-1 error, and
`echo-tutor convert --fast` end to end, resumed from its records. All slow (loading SmolLM2, a study run)."""


import pytest
import torch

pytest.importorskip("transformers")

from echo_tutor.convert import MixerSpec  # noqa: E402
from echo_tutor.convert.study import (  # noqa: E402
    capture_inputs,
    layer_inputs,
    new_mixer,
    original_attention,
    relative_error,
    shipped_mixers,
)
from echo_tutor.echokv.model import calibration_text, text_windows  # noqa: E402
from echokv_fixtures import smol  # noqa: E402,F401  (fixture)




@pytest.mark.slow
def test_smollm2_window_covering_the_context_is_exact(smol):
    model, tok = smol
    ids = text_windows(tok, calibration_text("heldout"), 96, 2)
    X = capture_inputs(model, ids, [3])[3].float()
    rope = layer_inputs(model, 96, "cpu")
    attn = model.model.layers[3].self_attn
    ref = original_attention(attn, X, rope)
    for variant in ("window", "window+ska", "window+linear"):
        y = new_mixer(model, 3, MixerSpec(variant, window=96, sinks=0))(X, position_embeddings=rope)[0]
        torch.testing.assert_close(y, ref, atol=2e-4, rtol=1e-4)  # float16 capture, float32 compute
    y = new_mixer(model, 3, MixerSpec("window", window=32, sinks=4))(X, position_embeddings=rope)[0]
    assert (y - ref).abs().max() > 1e-2


@pytest.mark.slow
def test_shipped_mixers_reproduce_their_recorded_error(smol):
    from echo_tutor.pretrained import results

    model, tok = smol
    ship = results("convert")
    cfg = ship["config"]
    v = next(v for v in cfg["variants"] if v != "window")
    layer = ship["order"][0]
    ids = text_windows(tok, calibration_text("calib"), cfg["calib_len"], cfg["calib_windows"])
    X = capture_inputs(model, ids, [layer])[layer]
    held = X[-max(1, X.shape[0] // 4):]  # fit_layer's held-out quarter
    m = shipped_mixers(model, v, [layer])[layer]
    err = relative_error(m, model.model.layers[layer].self_attn, held, layer_inputs(model, held.shape[1], "cpu"))
    want = ship["fit"][v][layer]["rel_err_after"]
    assert abs(err - want) < 0.02 * want + 1e-3, (err, want)  # float16 shipping of the mixer's parameters
