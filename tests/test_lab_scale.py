"""The lab scale of the recall experiments: query layouts of MQAR-gap, sliding-window attention,
lab presets and checkpoint loading errors."""

import subprocess
import sys

import pytest
import torch

from conftest import assert_close, scan_steps
from echo_tutor.attention import CausalSelfAttention, KVCache
from echo_tutor.models import LAB_PRESETS, LAB_RECIPE, LAB_SCALE, HybridConfig, HybridLM, build, count_parameters, load
from echo_tutor.tasks import IGNORE, make_task, mqar_gap


# ------------------------------------------------------------------------------------------ MQAR-gap layouts
def test_hidden_values_put_pads_after_queries_and_keep_the_labels():
    x_shown, y_shown = mqar_gap(64, 6, 10, 5, seed=4)
    x, y = mqar_gap(64, 6, 10, 5, seed=4, show_values=False)
    assert torch.equal(y, y_shown)  # same draws, same answers
    q0 = 2 * 6 + 10
    assert torch.equal(x[:, :q0], x_shown[:, :q0]) and torch.equal(x[:, q0::2], x_shown[:, q0::2])
    assert (x[:, q0 + 1::2] == 0).all() and (x_shown[:, q0 + 1::2] != 0).all()
    # every answer is the value bound to the query key in the context
    for b in range(5):
        ctx = dict(zip(x[b, :12:2].tolist(), x[b, 1:12:2].tolist()))
        for t in range(q0, x.shape[1], 2):
            assert y[b, t] == ctx[int(x[b, t])]


def test_random_queries_draw_bound_keys_with_replacement():
    x, y = mqar_gap(128, 8, 4, 200, seed=1, queries="random")
    keys = x[:, :16:2]
    asked = x[:, 20::2]
    assert all(set(asked[b].tolist()) <= set(keys[b].tolist()) for b in range(200))
    repeats = sum(len(set(asked[b].tolist())) < 8 for b in range(200))
    assert repeats > 150  # 8 draws from 8 keys repeat with probability 1 - 8!/8^8 = 0.9976
    once, _ = mqar_gap(128, 8, 4, 200, seed=1)
    assert all(sorted(once[b, 20::2].tolist()) == sorted(once[b, :16:2].tolist()) for b in range(200))


@pytest.mark.parametrize("kw, msg", [(dict(queries="all"), "queries must be 'once' or 'random'"),
                                     (dict(distractors="keys"), "distractors must be")])
def test_mqar_gap_rejects_unknown_layouts(kw, msg):
    with pytest.raises(ValueError, match=msg):
        mqar_gap(64, 4, 8, 2, seed=0, **kw)


# ------------------------------------------------------------------------------------ sliding-window attention
def _naive_window_attention(layer, x, window):
    B, T, d = x.shape
    H, D = layer.n_heads, layer.head_dim
    from echo_tutor.attention import apply_rope

    q, k, v = layer.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
    pos = torch.arange(T)
    q, k = apply_rope(q, pos), apply_rope(k, pos)
    s = q @ k.transpose(-1, -2) / D ** 0.5
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    s = s.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))
    return layer.out((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, d))


@pytest.mark.parametrize("window", [1, 3, 8, 40])
def test_window_attention_matches_a_naive_masked_softmax(window):
    torch.manual_seed(0)
    layer = CausalSelfAttention(16, 2, window=window).double()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    y, cache = layer(x)
    assert_close("window attention", y, _naive_window_attention(layer, x, window))
    assert cache.length == min(23, window) and cache.position == 23 and cache.dropped == 23 - cache.length


def test_window_attention_decodes_with_a_bounded_cache():
    torch.manual_seed(1)
    layer = CausalSelfAttention(16, 2, window=5).double()
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    y, _ = layer(x)
    st = layer.init_state(2)
    outs = []
    for t in range(17):
        o, st = layer.step(x[:, t], st)
        outs.append(o)
        assert st.length <= 5
    assert_close("step vs forward", torch.stack(outs, 1), y)
    # prefill 9 tokens then a block of 8: the same outputs again
    y1, st = layer(x[:, :9])
    y2, st = layer(x[:, 9:], st)
    assert_close("prefill + block", torch.cat([y1, y2], 1), y)
    assert layer.state_nbytes(1, 1000) == 2 * 5 * 16 * 8


def test_window_is_checked():
    with pytest.raises(ValueError, match="window"):
        CausalSelfAttention(16, 2, window=0)


def test_window_model_forgets_beyond_its_window():
    """A token more than `window` back cannot change the window model's output (it can for full attention)."""
    torch.manual_seed(2)
    kw = dict(d_model=16, n_heads=2, d_state=4)
    swa = HybridLM(HybridConfig(30, layout="attn", mixer_kwargs={"attn": {"window": 6}}, **kw)).double()
    full = HybridLM(HybridConfig(30, layout="attn", **kw)).double()
    full.load_state_dict(swa.state_dict())
    ids = torch.randint(1, 30, (1, 20))
    ids2 = ids.clone()
    ids2[0, 2] = (ids2[0, 2] + 1) % 30
    assert_close("swa at t >= 9", swa(ids)[0][:, 9:], swa(ids2)[0][:, 9:], 1e-12)
    assert (full(ids)[0][:, 9:] - full(ids2)[0][:, 9:]).abs().max() > 1e-6


# ------------------------------------------------------------------------------------------------ lab presets
def test_lab_presets_share_the_lab_scale():
    for name in LAB_PRESETS:
        m = build(name, scale="lab")
        assert m.config.d_model == LAB_SCALE["d_model"] and len(m.layout) == 2 and m.layout[0] == "mamba2"
        assert 100_000 < count_parameters(m) < 160_000
    ks = {n: build(n, scale="lab").blocks[1].mixer.power_steps for n in ("echo", "echo-k2", "ssm+ridge")}
    assert ks == {"echo": 1, "echo-k2": 2, "ssm+ridge": 0}
    assert build("echo-r64", scale="lab").blocks[1].mixer.rank == 64
    assert build("ssm+swa", scale="lab").blocks[1].mixer.window == 256
    assert build("ssm+attn", scale="lab").blocks[1].mixer.window is None
    assert not build("ssm+attn", scale="lab").blocks[1].mixer.rope and not build("ssm+swa", scale="lab").blocks[1].mixer.rope
    task = make_task(**{k: v for k, v in LAB_RECIPE.task.items()})
    x, y = task.sample(2, 0)
    assert x.shape[0] == 2 and (y != IGNORE).any()


def test_build_rejects_unknown_scales_and_presets():
    with pytest.raises(ValueError, match="scale must be one of"):
        build("echo", scale="huge")
    with pytest.raises(ValueError, match="'synth1m-attn' is a synth1m-scale preset, not scale='lab'"):
        build("synth1m-attn", scale="lab")


@pytest.mark.parametrize("preset", ["ssm+swa", "echo"])
def test_lab_models_step_equals_forward(preset):
    torch.manual_seed(0)
    m = build(preset, scale="lab", vocab_size=40, mixer_kwargs={"ska": {"mode": "token"}, "attn": {"window": 5}}
              if preset == "ssm+swa" else {"ska": {"mode": "token"}}).double()
    for b, n in zip(m.blocks, m.layout):
        if n == "ska":
            torch.nn.init.normal_(b.mixer.w_o.weight, std=0.2)
    ids = torch.randint(0, 40, (2, 13), generator=torch.Generator().manual_seed(1))
    outs, _ = scan_steps(m, ids, m.init_state(2))
    assert_close("logits", m(ids)[0], outs)


# ------------------------------------------------------------------------------------- checkpoints as input
def _bad_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    good = tmp_path / "good.pt"
    HybridLM(HybridConfig(20, d_model=8, layout="mamba2", n_heads=2, d_state=4)).save(good)
    trunc = tmp_path / "truncated.pt"
    trunc.write_bytes(good.read_bytes()[:300])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    damaged = tmp_path / "damaged.pt"
    blob = torch.load(good, weights_only=True)
    blob["state_dict"].pop(next(iter(blob["state_dict"])))
    torch.save(blob, damaged)
    return {"text": text, "truncated": trunc, "foreign": foreign, "damaged": damaged, "missing": tmp_path / "nope.pt"}


def test_load_rejects_what_is_not_a_checkpoint_in_one_line(tmp_path):
    msgs = {"text": "not a readable torch checkpoint", "truncated": "not a readable torch checkpoint",
            "foreign": "not an echo_tutor HybridLM checkpoint", "damaged": "damaged HybridLM checkpoint",
            "missing": "is not a file"}
    for kind, path in _bad_files(tmp_path).items():
        with pytest.raises(ValueError, match=msgs[kind]) as e:
            load(path)
        assert str(e.value).startswith("path: ") and "\n" not in str(e.value), (kind, str(e.value))


def test_cli_eval_on_a_text_file_exits_2_with_one_line(tmp_path):
    bad = _bad_files(tmp_path)["text"]
    r = subprocess.run([sys.executable, "-m", "echo_tutor.cli", "eval", "--model", str(bad), "--gaps", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "not a readable torch checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- closed-form memories (lab 03)
from echo_tutor.memories import horizon, recall_accuracy, state_floats  # noqa: E402


def test_closed_form_memories_show_their_phenomena():
    kw = dict(n_pairs=8, r=32, trials=16)
    assert recall_accuracy("ridge", gap=4096, **kw) == 1.0  # gated statistics never fade
    assert recall_accuracy("window", gap=40, window=64, **kw) == 1.0  # binding 8 + 40 tokens back: inside
    assert recall_accuracy("window", gap=64, window=64, **kw) < 0.1  # every binding > 64 tokens back
    decay = [recall_accuracy("decay", gap=g, lam=0.98, **kw) for g in (0, 32, 128)]
    assert decay[0] == 1.0 and decay[2] < 0.1 and decay[0] >= decay[1] >= decay[2]
    assert recall_accuracy("ridge", gap=4096, gate=False, **kw) < 0.2  # ungated: distractors bury the bindings
    assert recall_accuracy("ridge", n_pairs=256, gap=0, r=16, trials=4) < 0.3  # capacity: n >> r
    assert recall_accuracy("decay", gap=5, seed=3) == recall_accuracy("decay", gap=5, seed=3)  # seeded


def test_closed_form_memories_reject_bad_input():
    with pytest.raises(ValueError, match="memory must be one of"):
        recall_accuracy("cache")
    with pytest.raises(ValueError, match="lam must be in"):
        recall_accuracy("decay", lam=1.5)
    with pytest.raises(ValueError, match="gap"):
        recall_accuracy("ridge", gap=-1)
    with pytest.raises(ValueError, match="lam must be in"):
        horizon(1.0)
    assert horizon(0.5, 0.25) == pytest.approx(2.0)
    assert state_floats("window", window=64, context=1000) == 64 * 64 and state_floats("ridge") == 32 * 32 + 32 * 32


def test_lab_tools_reject_bad_input():
    from echo_tutor.experiments import lab_task, recall_breakdown, ssm_decay
    from echo_tutor.koopman import offset_profile

    m = build("ssm", scale="lab")
    with pytest.raises(ValueError, match="task must be an echo_tutor.tasks.Task"):
        recall_breakdown(m, "mqar_gap")
    with pytest.raises(ValueError, match="num_examples"):
        recall_breakdown(m, lab_task(4, 8), num_examples=0)
    with pytest.raises(ValueError, match=r"ids must be an integer tensor of shape \[B, T\]"):
        ssm_decay(m, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="context_ids must be a 1-D tensor of length 4"):
        offset_profile(torch.zeros(2, 3, 4), torch.arange(5), torch.arange(3))
    with pytest.raises(ValueError, match="show_values must be True or False"):
        mqar_gap(64, 4, 8, 2, seed=0, show_values="no")
    assert lab_task(8, 256).kwargs["show_values"] is False
