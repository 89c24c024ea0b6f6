"""The retrieval probe (echo_tutor.convert.passkey): prompts of both formats, exact-match reading, and the
readout-shut control, on the tiny GQA Llama (fast) and SmolLM2's tokenizer (slow: it loads the model)."""

import random

import pytest
import torch
from echokv_fixtures import smol, tiny  # noqa: F401  (fixtures)

from echo_tutor.convert import MixerSpec
from echo_tutor.convert.passkey import (
    key_positions,
    make_case,
    plain_source,
    read_key,
    readout_shut,
    retrieval_mass,
)
from echo_tutor.convert.study import layer_inputs, new_mixer


def test_read_key_takes_the_first_five_digit_number():
    assert read_key(" The pass key is 41032. 41032 is") == "41032"
    assert read_key("1234567 then 54321") == "54321"  # a longer number is not a key
    assert read_key("I do not know.") is None


@pytest.mark.parametrize("spec", [MixerSpec("window+ska", window=8, sinks=2, rank=8, power_steps=1),
                                  MixerSpec("window+linear", window=8, sinks=2, rank=8)], ids=lambda s: s.variant)
def test_a_shut_readout_forgets_what_left_the_window(tiny, spec):  # noqa: F811
    """With the readout on, changing tokens that left the window changes the last outputs (the statistics
    carry them); shut, it does not (only the window and the sinks are read); step decoding agrees."""
    T, W, A = 40, spec.window, spec.sinks
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, T, tiny.config.hidden_size, generator=g)
    x2 = x.clone()
    x2[:, A:T - W - 2] += torch.randn(1, T - W - 2 - A, x.shape[-1], generator=g)
    rope = layer_inputs(tiny, T, "cpu")
    m = new_mixer(tiny, 1, spec)
    with torch.no_grad():
        for p in (getattr(m, "gate_b", None), getattr(m, "lin_b", None)):
            if p is not None:
                p.fill_(1.0)
        last = lambda h: m(h, position_embeddings=rope)[0][:, -2:]  # noqa: E731
        assert (last(x) - last(x2)).abs().max() > 1e-4
        with readout_shut({1: m}):
            torch.testing.assert_close(last(x), last(x2), atol=1e-6, rtol=1e-6)
            st, ys = m.init_state(1), []
            for t in range(T):
                y, st = m.step(x[:, t], (rope[0][:, t], rope[1][:, t]), st)
                ys.append(y)
            torch.testing.assert_close(torch.stack(ys, 1), m(x, position_embeddings=rope)[0], atol=2e-5, rtol=1e-4)
        assert m.readout_on  # restored


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["chat", "plain"])
@pytest.mark.parametrize("keys", [1, 3])
def test_prompts_are_about_the_length_asked_and_hold_the_keys(smol, fmt, keys):  # noqa: F811
    _, tok = smol
    src = plain_source(tok) if fmt == "plain" else None
    for length in (1024, 2048):
        case = make_case(tok, length, random.Random(0), fmt=fmt, keys=keys, source_ids=src)
        text = tok.decode(case.ids[0])
        assert 0.85 * length <= case.ids.shape[1] <= 1.02 * length
        assert case.key in text and all(k in text for k in case.others) and len(case.others) == keys - 1
        assert (f"the {case.name} door" in text.split(case.key)[0]) if keys > 1 else case.name == ""
        again = make_case(tok, length, random.Random(0), fmt=fmt, keys=keys, source_ids=src)
        assert torch.equal(again.ids, case.ids)  # the same seed, the same prompt


@pytest.mark.slow
def test_bad_probe_arguments(smol):  # noqa: F811
    _, tok = smol
    with pytest.raises(ValueError, match="fmt"):
        make_case(tok, 1024, random.Random(0), fmt="html")
    with pytest.raises(ValueError, match="keys"):
        make_case(tok, 1024, random.Random(0), keys=0)
    with pytest.raises(ValueError, match="source_ids"):
        make_case(tok, 1024, random.Random(0), fmt="plain")


@pytest.mark.slow
def test_the_chat_format_keeps_its_own_filler(smol):  # noqa: F811
    """Given the plain format's filler, a chat prompt still hides its key in lab 08's repeated filler."""
    _, tok = smol
    case = make_case(tok, 1024, random.Random(1), fmt="chat", source_ids=plain_source(tok))
    assert tok.decode(case.ids[0]).count("The grass is green.") > 20


@pytest.mark.slow
def test_key_positions_spell_the_key_and_the_retrieval_layers_read_it(smol):  # noqa: F811
    model, tok = smol
    case = make_case(tok, 512, random.Random(3), fmt="plain", source_ids=plain_source(tok))
    pos = key_positions(tok, case)
    assert tok.decode(case.ids[0, pos]).replace(" ", "") == case.key  # the plain format states it once
    mass = retrieval_mass(model, tok, [case], beyond=0)
    assert mass.shape == (len(model.model.layers),) and (mass >= 0).all() and (mass <= 1).all()
    # a deterministic fact of SmolLM2 (measured in docs/results.md): layers 20-23 read the key when the answer
    # begins, the early layers barely do
    assert set(mass.argsort(descending=True)[:4].tolist()) & {20, 21, 22, 23} and mass[:10].max() < 0.02
    assert retrieval_mass(model, tok, [case], beyond=10_000).sum() == 0  # nothing that far back
    with pytest.raises(ValueError, match="cases"):
        retrieval_mass(model, tok, [])
