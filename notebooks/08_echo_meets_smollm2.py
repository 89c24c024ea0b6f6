# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Lab 08: Echo meets a real LM, SmolLM2's attention replaced by fixed-state mixers
#
# Labs 02 to 05 trained SKA from scratch on synthetic recall; lab 06 compressed a real model's KV cache.
# Here the two meet: we take the pretrained [SmolLM2-135M](../docs/course.md#glossary)-Instruct of lab 06 and
# **replace the attention of some of its layers** by mixers whose inference state does not grow with the
# context. We know of one published conversion into a ridge-regression readout (Priming, arXiv 2605.08301,
# converts attention into Gated KalmaNet, an online ridge regression) and of none into SKA's Koopman power
# filter; LoLCATs, Mamba-in-the-Llama, Liger, Llamba and Hedgehog convert into linear attention, Mamba or
# gated recurrences ([R70](../docs/claims.md#R70)). So the numbers in this lab are new: read them as one
# careful measurement at 135M parameters, not as a law.
#
# A converted layer keeps the layer's own `q_proj`, `k_proj`, `v_proj`, `o_proj` (frozen) and changes what a
# query reads:
#
# | mixer | a query at t reads | state at any context length |
# |---|---|---|
# | `window` | softmax over the first A tokens (*sinks*) and the last W tokens | (A + W) K/V rows |
# | `window+ska` | the same softmax, plus SKA's readout `C G^-1 (M G^-1)^K q` of statistics of every other past token, mixed by a learned gate | (A + W) rows + O(r^2) per KV head |
# | `window+linear` | the same softmax, plus linear attention over every other past token, one shared normaliser (LoLCATs' form) | (A + W) rows + O(r D) per KV head |
# | `ska` | SKA alone over all past tokens | O(r^2) per KV head |
#
# **Stage 1** is LoLCATs' attention transfer: each converted layer alone is fitted to reproduce that layer's
# attention output on captured inputs (MSE); only the mixer's own small parameters (feature maps `phi`, gate,
# output scale) train. Then layers are converted **cheapest first**, and **stage 2** trains the mixers of a set
# of converted layers together on the original model's next-token distribution (KL), every pretrained weight
# frozen (LoLCATs' second step is a LoRA fine-tune instead). The shipped study (`echo-tutor convert`, run in
# resumable pieces on 2 CPU cores; the first cell prints its compute time) is what most figures show; every
# section also runs something live, and in section 3 you convert and fit a layer yourself.

# %%
import math
import random
import time

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import torch
from IPython.display import Markdown, display
from plotly.subplots import make_subplots

from echo_tutor import labs
from echo_tutor.convert import ConvertedAttention, MixerSpec
from echo_tutor.convert.compose import equal_bytes_points
from echo_tutor.convert.layers import relative_error
from echo_tutor.convert.passkey import key_positions, make_case, probe_retrieval
from echo_tutor.convert.study import (
    capture_inputs, converted, greedy, layer_inputs, mixer_bytes, needle_probe, needle_prompt, new_mixer,
    original_attention, parse_variant, shipped_mixers, state_bytes, window_nll,
)
from echo_tutor.echokv import calibration_text, load_smollm2, text_windows
from echo_tutor.echokv.study import method_family
from echo_tutor.experiments.convert_report import summarize
from echo_tutor.labs import lab08
from echo_tutor.pretrained import results

FAST = labs.FAST
torch.manual_seed(0)
print(f"FAST={FAST}  solutions={'on' if labs.SOLUTIONS else 'off'}  threads={torch.get_num_threads()}")
t0 = time.time()
model, tok = load_smollm2()
model.requires_grad_(False)
SHIP = results("convert")
CFG = SHIP["config"]
N_LAYERS = len(model.model.layers)
N_KV = model.config.num_key_value_heads
HEAD_DIM = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
LABEL = SHIP["labels"]
VARIANTS = list(SHIP["sweep_window_nll"])
SKA = next(v for v in VARIANTS if v.startswith("window+ska") and v.endswith("K1"))
print(f"SmolLM2 loaded in {time.time() - t0:.1f} s: {N_LAYERS} layers, {model.config.num_attention_heads} query heads, "
      f"{N_KV} KV heads of {HEAD_DIM}; shipped study: W={CFG['window']}, sinks={CFG.get('sinks', 4)}, r={CFG['rank']}, "
      f"variants {VARIANTS}, {SHIP['cell_seconds'] / 3600:.1f} h of compute ({SHIP['device']})")

# %% [markdown]
# ## 1. What a converted layer reads
#
# Every past token is read by exactly one part: the softmax (the sinks and the window) or the statistics.
# Nothing is dropped, but the statistics only keep `O(r^2)` numbers about everything they hold.
#
# ### Your turn 1: `visible_parts` (a warm-up)
# Return an int tensor `[T, T]` (query t, token s): 0 where t cannot read s (the future), 1 where the
# softmax reads it (the first `sinks` tokens, and the last `window` tokens up to and including t itself),
# 2 where only the statistics hold it. Work out the inequalities yourself: the checker tries windows longer
# than T, no sinks, more sinks than the window, and the heat map's own `(96, 16, 4)`.

# %%
def visible_parts(T, window, sinks):
    """-> int64 [T, T]: 0 nothing, 1 softmax, 2 statistics"""
    # YOUR CODE HERE
    raise NotImplementedError


visible_parts = labs.exercise(visible_parts, "lab08")
lab08.check_visible_parts(visible_parts)

# %%
parts = visible_parts(96, 16, 4)
fig = go.Figure(go.Heatmap(z=parts.numpy(), colorscale=[[0, "#f7f7f7"], [0.5, "#1f77b4"], [1, "#ff7f0e"]],
                           zmin=0, zmax=2, showscale=False, hovertemplate="query %{y}, token %{x}: %{z}<extra></extra>"))
fig.update_layout(title="what a query reads (T = 96, W = 16, 4 sinks): blue softmax, orange statistics, grey nothing",
                  height=430, width=520, yaxis=dict(autorange="reversed", title="query t"), xaxis_title="token s",
                  margin=dict(t=60, l=60, r=20, b=50))
fig.show()
counts = torch.bincount(parts.flatten(), minlength=3)
print(f"of the {int(counts[1] + counts[2])} (query, past token) pairs, the softmax reads {int(counts[1])}, the statistics {int(counts[2])}")
assert counts[1] + counts[2] == 96 * 97 // 2

# %% [markdown]
# ### Why there are sinks
#
# The first design had no sinks: the window alone (LoLCATs' 64 tokens). The cell below measures, on
# calibration text, how far a layer's output moves when its softmax sees only the window (relative error
# `||y - y_orig||^2 / ||y_orig||^2`, 1.0 is as bad as outputting zero), without and with the first 4 tokens.
# SmolLM2's heads park much of their attention on the first tokens (StreamingLLM's *attention sinks*, lab 06);
# take them away and the mass spreads over the window.

# %%
probe_layers = [2, 5, 14, 25]
cal_ids = text_windows(tok, calibration_text("calib"), 256 if FAST else 512, 4 if FAST else 8)
X = capture_inputs(model, cal_ids, probe_layers)
rope = layer_inputs(model, cal_ids.shape[1], "cpu")


def rel_err(mixer, layer):
    with torch.no_grad():
        tgt = original_attention(model.model.layers[layer].self_attn, X[layer].float(), rope)
        y = mixer(X[layer].float(), position_embeddings=rope)[0]
    return float((y - tgt).square().sum() / tgt.square().sum())


sink_err = {a: [rel_err(new_mixer(model, i, MixerSpec("window", window=CFG["window"], sinks=a)), i) for i in probe_layers]
            for a in (0, 4)}
fig = go.Figure([go.Bar(name=f"window {CFG['window']}, {a} sinks", x=[f"layer {i}" for i in probe_layers], y=sink_err[a])
                 for a in (0, 4)])
fig.update_layout(title="a layer's output error with a window only (log scale)", yaxis=dict(type="log", title="relative error"),
                  height=360, width=640, barmode="group")
fig.show()
for i, e0, e4 in zip(probe_layers, sink_err[0], sink_err[4]):
    print(f"layer {i:2d}: no sinks {e0:.3f}   4 sinks {e4:.3f}")
assert all(e4 < e0 for e0, e4 in zip(sink_err[0], sink_err[4]))

# %% [markdown]
# ## 2. A state that stops growing
#
# ### Your turn 2: `converted_state_bytes`
# The float32 bytes of one converted `window+ska` layer's decode state (batch 1) once its window is full,
# for `n_kv_heads` KV heads of size `head_dim` and SKA features of size `rank`. Work out what the next decode
# step needs, part by part:
#
# * the softmax reads the sinks and the window: what does it keep of each of those tokens?
# * the statistics are SKA's of lab 02, per KV head (the query heads of a group share them): which sums, of
#   what shapes, and what does the next token's `M` term need from the token before it?
# * when a token leaves the window it is written into the statistics as its key *features* (`rank` numbers
#   per KV head, made from the key **before** RoPE), while the window keeps its key **after** RoPE. What must
#   wait beside the window, and for which tokens? (A token's value is needed for `C` too: is it already kept?)
#
# The checker names the part you miss or count twice.

# %%
def converted_state_bytes(window, sinks, rank, n_kv_heads, head_dim):
    """-> int, bytes"""
    # YOUR CODE HERE
    raise NotImplementedError


converted_state_bytes = labs.exercise(converted_state_bytes, "lab08")
lab08.check_converted_state_bytes(converted_state_bytes)

# %%
mine = converted_state_bytes(CFG["window"], CFG.get("sinks", 4), CFG["rank"], N_KV, HEAD_DIM)
spec_ska = parse_variant(SKA, window=CFG["window"], sinks=CFG.get("sinks", 4), rank=CFG["rank"], eps=CFG["eps"])
assert mine == mixer_bytes(model, spec_ska), (f"converted_state_bytes gives {mine} bytes for SmolLM2's layer, the "
                                              f"package counts {mixer_bytes(model, spec_ska)}")
kv_tok = 2 * N_KV * HEAD_DIM * 4
Ts = np.array([64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384])
fig = go.Figure([go.Scatter(x=Ts, y=Ts * kv_tok / 1e6, name="full attention layer (KV cache)", mode="lines+markers"),
                 go.Scatter(x=Ts, y=[state_bytes(model, spec_ska, N_LAYERS, int(T)) / N_LAYERS / 1e6 for T in Ts],
                            name=f"converted layer ({LABEL[SKA]})", mode="lines+markers")])
fig.update_layout(title="one layer's memory for its context", xaxis=dict(type="log", title="context tokens"),
                  yaxis=dict(type="log", title="MB (float32, batch 1)"), height=360, width=640)
fig.show()
cross = mine // kv_tok + 1   # the first whole token count whose cache holds more (lab 00's crossover)
print(f"a converted layer holds {mine / 1e3:.1f} kB at any length ({mine / kv_tok:.1f} tokens' worth of K and V); a full "
      f"layer's cache passes that at {cross} tokens ({cross * kv_tok / 1e3:.1f} kB) and holds {16384 * kv_tok / 1e6:.1f} MB at 16k")
assert (cross - 1) * kv_tok <= mine < cross * kv_tok

# %% [markdown]
# ## 3. Convert a layer yourself, and fit it (stage 1)
#
# A converted layer is a new module that takes the place of one layer's `self_attn`. It reads with the
# layer's own `q_proj`, `k_proj`, `v_proj`, `o_proj` (frozen: they carry what pretraining learned) and adds
# only the mixer's small parameters (feature maps, gate, output scales), initialised so that a fresh converted
# layer is almost the window alone. `echo_tutor.convert.ConvertedAttention` is that module
# (`help(ConvertedAttention)`); `MixerSpec` says which mixer.
#
# ### Your turn 3: `convert_layer`
# Write `convert_layer(model, layer, spec)`: the `ConvertedAttention` that can take the place of attention
# layer `layer` of `model`, with the mixer `spec`. What you have to find out and decide:
#
# * where a Llama-style model (Hugging Face's `LlamaForCausalLM`) keeps a layer's attention module;
# * its head layout: how many query heads, how many KV heads (SmolLM2 shares each KV head among three query
#   heads) and how wide a head is. Read them from the model you are given, not from SmolLM2's numbers: the
#   checker converts two other small Llamas, one whose head size is not `hidden_size / heads`;
# * what the new module must *share* with the layer rather than copy or make afresh.
#
# Return the module; do not put it into the model (`with converted(model, {layer: mixer}):` does that for a
# block and puts the original back after).

# %%
def convert_layer(model, layer, spec):
    """-> ConvertedAttention for attention layer `layer` of `model`, with the mixer `spec` (a MixerSpec)"""
    # YOUR CODE HERE
    raise NotImplementedError


convert_layer = labs.exercise(convert_layer, "lab08")
lab08.check_convert_layer(convert_layer)

# %% [markdown]
# **Your choice**: which layer, which mixer. The shipped study fitted every layer with every mixer, so
# whatever you pick has a shipped reference; section 4 will tell you whether your layer is a cheap one.
# The mixers with something to fit: `window+ska:K1` (the default), `window+ska:K0` (no power filter: SKA's
# readout with `K = 0` is ridge regression, [E18](../docs/claims.md#E18)) and `window+linear:K0`.

# %%
MY_LAYER = 5               # any of 0 .. 29
MY_VARIANT = SKA           # "window+ska:K1", "window+ska:K0" or "window+linear:K0"
spec_mine = parse_variant(MY_VARIANT, window=CFG["window"], sinks=CFG.get("sinks", 4), rank=CFG["rank"], eps=CFG["eps"])
X_mine = X[MY_LAYER] if MY_LAYER in X else capture_inputs(model, cal_ids, [MY_LAYER])[MY_LAYER]
my_mixer = convert_layer(model, MY_LAYER, spec_mine)
my_attn = model.model.layers[MY_LAYER].self_attn
print(my_mixer)
print("trainable:", {n: tuple(p.shape) for n, p in my_mixer.named_parameters() if p.requires_grad})

# %% [markdown]
# **Predict first.** Before any training, your converted layer reads the first 48 tokens of a calibration
# window (fewer than its 64-token window). How far is its output from the layer's original attention?

# %%
short_options = ["identical, to rounding", "close (about 1% off)", "far (10% or more off)"]
guess_short = labs.Prediction("A fresh converted layer (window 64 + 4 sinks, statistics for older tokens) reads 48 "
                              "tokens. How far is its output from the original attention's?", short_options)
guess_short.show()

# %%
err_short = relative_error(my_mixer, my_attn, X_mine[:, :48], layer_inputs(model, 48, "cpu"))
err_full = relative_error(my_mixer, my_attn, X_mine, rope)
print(f"relative error of your fresh layer {MY_LAYER} against its attention: {err_short:.1e} on 48 tokens, "
      f"{err_full:.3f} on {X_mine.shape[1]} tokens")
_ = guess_short.reveal(short_options[0] if err_short < 1e-5 else short_options[1] if err_short < 0.1 else short_options[2])
assert err_short < 1e-5, "convert_layer: on fewer tokens than the window, a converted layer must be the attention itself"

# %% [markdown]
# Within the window the converted layer *is* the attention: every past token is in the softmax, nothing is
# old enough for the statistics, and the gate has nothing to mix. Only past the window does it differ, which is
# what stage 1 has to repair.
#
# **Stage 1, live.** The loop below is the whole of stage 1: the layer's captured inputs, the original
# attention's output as the target, the relative squared error as the loss, Adam on the mixer's own parameters
# only (the shipped study's recipe: the steps, rate and batch of its config; the last quarter of the
# calibration windows held out). Before and after, the held-out perplexity of SmolLM2 with this one layer
# converted. FAST fits on 4 windows of 256 tokens instead of 8 of 512: with fewer tokens past the window there
# is less for the statistics to correct, so the errors start lower than the shipped fit's.

# %%
ev = dict(n=2, ctx=256, cont=64) if FAST else dict(n=8, ctx=CFG["ctx_len"], cont=CFG["eval_len"])
held = text_windows(tok, calibration_text("heldout"), ev["ctx"] + ev["cont"], ev["n"])
nll_orig = window_nll(model, held, ev["ctx"])
train_x, held_x = X_mine[:-max(1, len(X_mine) // 4)], X_mine[-max(1, len(X_mine) // 4):]
steps = CFG["fit_steps"]
t0 = time.time()
err_before = relative_error(my_mixer, my_attn, held_x, rope)
with converted(model, {MY_LAYER: my_mixer}):
    nll_init = window_nll(model, held, ev["ctx"])
losses = []
params = [p for p in my_mixer.parameters() if p.requires_grad]   # the mixer's own: phi, gate, eta, gamma
if spec_mine.variant != "window":
    opt = torch.optim.Adam(params, lr=CFG["fit_lr"])
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for step in range(steps):
            xb = train_x[torch.randint(0, len(train_x), (CFG["fit_batch"],), generator=gen)].float()
            with torch.no_grad():
                target = original_attention(my_attn, xb, rope)               # what the layer computed
            y = my_mixer(xb, position_embeddings=rope)[0]
            loss = (y - target).square().mean() / target.square().mean()    # relative squared error
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
err_after = relative_error(my_mixer, my_attn, held_x, rope)
with converted(model, {MY_LAYER: my_mixer}):
    nll_fit = window_nll(model, held, ev["ctx"])
fig = go.Figure(go.Scatter(y=losses, mode="lines+markers", name="training batches"))
fig.update_layout(title=f"stage 1 of layer {MY_LAYER} ({LABEL[MY_VARIANT]}): relative error on training batches",
                  xaxis_title="Adam step", yaxis_title="relative error", height=330, width=640)
fig.show()
ppl = lambda nll: float(np.exp(np.mean(nll)))  # noqa: E731
shipped_fit = SHIP["fit"][MY_VARIANT][MY_LAYER]
print(f"{len(losses)} Adam steps in {time.time() - t0:.1f} s; training loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses
      else "the window alone has nothing to fit")
print(f"held-out relative error of layer {MY_LAYER}: {err_before:.3f} at the init (almost the window alone) -> "
      f"{err_after:.3f} after stage 1; the shipped fit of this layer and mixer ({CFG['calib_windows']} windows of "
      f"{CFG['calib_len']}): {shipped_fit['rel_err_before']:.3f} -> {shipped_fit['rel_err_after']:.3f}")
print(f"held-out perplexity with this one layer converted ({ev['n']} windows): original {ppl(nll_orig):.3f}, "
      f"at the init {ppl(nll_init):.3f} (x{ppl(nll_init) / ppl(nll_orig):.4f}), after stage 1 {ppl(nll_fit):.3f} "
      f"(x{ppl(nll_fit) / ppl(nll_orig):.4f})")
if losses and not err_after < err_before:
    print(f"-> Stage 1 did not lower the held-out error here, where the shipped fit of this layer did "
          f"({shipped_fit['rel_err_before']:.3f} -> {shipped_fit['rel_err_after']:.3f}). With FAST's few short "
          "windows the fit can overfit its training batches: look at the loss curve, then rerun with more data "
          "(ECHO_TUTOR_FAST=0) or another layer. If your convert_layer passed its checker, the loop is the shipped "
          "study's own recipe.")

# %% [markdown]
# ## 4. Which layers are cheap to convert
#
# The shipped study converted each layer alone (`window+ska`, stage 1 done) and measured the rise of
# held-out NLL. Layers are then converted in that order, cheapest first, for every mixer.

# %%
cost = np.array(SHIP["cost_nll"])
fig = go.Figure(go.Bar(x=list(range(N_LAYERS)), y=cost, marker_color=["#2ca02c" if i in SHIP["order"][:8] else "#7f7f7f"
                                                                       for i in range(N_LAYERS)]))
fig.update_layout(title=f"held-out NLL rise with one layer converted ({LABEL[SHIP['config']['cost_variant']]}); "
                        "green: the 8 cheapest", xaxis_title="layer", yaxis_title="NLL rise (nats / token)",
                  height=360, width=700)
fig.show()
print("cheapest first:", SHIP["order"])
print(f"most expensive: layer {int(cost.argmax())} (+{cost.max():.3f} nats); cheapest: layer {int(cost.argmin())} ({cost.min():+.3f})")
print(f"your layer {MY_LAYER}: number {SHIP['order'].index(MY_LAYER) + 1} of {N_LAYERS} cheapest first "
      f"({cost[MY_LAYER]:+.4f} nats in the shipped study; live, on {ev['n']} short windows after your fit: "
      f"{np.mean(nll_fit) - np.mean(nll_orig):+.4f})")

# %% [markdown]
# ## 5. How many layers can go
#
# **Predict first.** With the window alone (no statistics at all), how many of the 30 layers can be
# converted before held-out perplexity rises by 5%?

# %%
S = summarize(SHIP)
budget_options = {"1 or 2": 2, "4": 4, "8": 8, "15": 15, "all 30": 30}
guess_budget = labs.Prediction("The window alone (W = 64 + 4 sinks, no statistics): how many layers, cheapest first, "
                               "before perplexity rises by 5%?", list(budget_options))
guess_budget.show()

# %%
rows = S["rows"]
fig = go.FigureWidget()
for v in VARIANTS:
    rs = [r for r in rows if r["variant"] == v]
    fig.add_trace(go.Scatter(x=[r["n"] for r in rs], y=[r["ratio"] for r in rs], name=LABEL[v], mode="lines+markers",
                             error_y=dict(type="data", symmetric=False, array=[r["hi"] - r["ratio"] for r in rs],
                                          arrayminus=[r["ratio"] - r["lo"] for r in rs])))
fig.add_hline(y=1.05, line_dash="dot", annotation_text="+5%")
fig.add_hline(y=1.20, line_dash="dash", annotation_text="+20%")
fig.update_layout(title=f"held-out perplexity / original ({len(SHIP['full_window_nll'])} windows, paired 95% intervals)",
                  xaxis=dict(title="converted layers (cheapest first)", tickvals=sorted({r["n"] for r in rows})),
                  yaxis=dict(title="x original"),
                  height=420, width=720)
display(fig)
for v, b in S["budget"].items():
    print(f"{LABEL[v]:28s} within +5%: {b['5%']:2d} layers   within +20%: {b['20%']:2d} layers")
win_budget = S["budget"]["window"]["5%"]
_ = guess_budget.reveal(next(o for o, n in budget_options.items() if win_budget <= n))

# %% [markdown]
# **Stage 2.** The shipped study then trained the mixers of the 8 and the 30 cheapest layers together for a
# few dozen steps on the original model's next-token distribution (KL per token on calibration text). The
# table pairs each stage-2 model with its own stage-1 model on the same held-out windows.

# %%
for r in S["stage2"]:
    word = {"better": "better", "worse": "worse"}.get(r["verdict"], "no difference shown")
    print(f"{r['label']:26s} {r['n']:2d} layers: x{r['stage1_ratio']:.3f} (stage 1) -> x{r['ratio']:.3f} [{r['lo']:.3f}, "
          f"{r['hi']:.3f}] (stage 2); held-out KL {r['kl_before']:.4f} -> {r['kl_after']:.4f} nats/token; "
          f"stage 2 - stage 1: {r['dnll']:+.4f} [{r['dlo']:+.4f}, {r['dhi']:+.4f}] nats ({word})")
S2_STEPS = CFG["stage2_steps"]
assert S["stage2"], "the shipped study has stage-2 results"

# %% [markdown]
# The slider picks a number of converted layers: the bars show each mixer's perplexity (shipped) and the
# bytes the whole model keeps for a 2k- and a 16k-token context (at 16 bits, as in section 6).

# %%
counts = sorted({r["n"] for r in rows})
n_slider = widgets.SelectionSlider(options=counts, value=counts[min(3, len(counts) - 1)], description="layers")
bar = go.FigureWidget(make_subplots(rows=1, cols=2, subplot_titles=("perplexity", "context memory (MB, 16-bit)")))
names = ["original", *[LABEL[v] for v in VARIANTS]]
bar.add_trace(go.Bar(x=names, y=[0] * len(names), showlegend=False), row=1, col=1)
for T, colour in ((2048, "#9ecae1"), (16384, "#08519c")):
    bar.add_trace(go.Bar(x=names, y=[0] * len(names), name=f"{T} tokens", marker_color=colour), row=1, col=2)
bar.update_layout(height=380, width=900, barmode="group")


def show_n(change=None):
    n = n_slider.value
    ppl = [S["full_ppl"], *[next(r["ppl"] for r in rows if r["variant"] == v and r["n"] == n) for v in VARIANTS]]
    with bar.batch_update():
        bar.data[0].y = ppl
        for j, T in enumerate((2048, 16384)):
            bar.data[1 + j].y = [state_bytes(model, None, 0, T, bytes_per=2) / 1e6,
                                 *[state_bytes(model, parse_variant(v, window=CFG["window"], sinks=CFG.get("sinks", 4),
                                                                    rank=CFG["rank"]), n, T, bytes_per=2) / 1e6 for v in VARIANTS]]


n_slider.observe(show_n, "value")
show_n()
display(widgets.VBox([n_slider, bar]))

# %% [markdown]
# A live check of the shipped numbers: the shipped stage-1 mixers, converted into this model, evaluated on a
# few held-out windows right now (FAST: 2 short windows; the shipped study used 24 windows of 512 + 128).
# With 2 windows, read the order of the mixers as noise, not as a result: the
# cell checks only that no mixer beats the original by more than 0.05 nats; the shipped sweep above, with its
# intervals over 24 windows, is the measurement.

# %%
n_live = 8
layers_live = sorted(SHIP["order"][:n_live])
t0 = time.time()
live = {"original": nll_orig}   # the held-out windows of section 3
for v in VARIANTS:
    mixers = shipped_mixers(model, v, layers_live) if v != "window" else {i: new_mixer(model, i, parse_variant(
        "window", window=CFG["window"], sinks=CFG.get("sinks", 4))) for i in layers_live}
    with converted(model, mixers):
        live[LABEL[v]] = window_nll(model, held, ev["ctx"])
print(f"{n_live} layers converted, {ev['n']} held-out windows, in {time.time() - t0:.1f} s:")
for k, nll in live.items():
    print(f"  {k:28s} perplexity {np.exp(np.mean(nll)):7.3f}   x original {np.exp(np.mean(nll) - np.mean(live['original'])):.3f}")
assert all(np.mean(nll) >= np.mean(live["original"]) - 0.05 for nll in live.values())

# %% [markdown]
# ## 6. At equal memory: converted layers beside lab 06's compressed caches, and stacked with them
#
# Every method on one figure: held-out perplexity against the bytes the model keeps for its context at 2k
# and at 16k tokens, **all counted at 16 bits** (KIVI's reference; a converted layer's state too). Lab 06's
# methods keep a *fraction* of the cache, so their bytes grow with the context; a converted layer's bytes do
# not. Two compositions that had not been measured before are measured in the shipped study:
# **converted layers + KIVI 4-bit** (the layers left as attention store their context at 4 bits) and
# **EchoKV-lite + KIVI 4-bit** (the heads EchoKV-lite keeps are stored at 4 bits; the discarded ones are rebuilt
# from them). The black staircase joins the best perplexity at each byte budget, whichever method it comes from.
#
# **What is measured and what is extrapolated**: every perplexity was measured with 512 tokens of context
# (lab 06's 24 held-out windows, the same ones for both studies); the bytes at 2k and 16k follow each method's
# rule (a kept fraction of the cache; a fixed state). Whether perplexity holds at 16k tokens is not measured.

# %%
EKV = results("echokv")
COLOURS = {"converted": "#1f77b4", "converted, stage 2": "#9467bd", "converted + KIVI": "#17becf",
           "EchoKV-lite": "#e377c2", "EchoKV-lite + KIVI": "#8c564b", "KIVI": "#ff7f0e", "full": "#000000"}


def all_points(T):
    """The shipped conversion study's points plus lab 06's stage-2 EchoKV-lite and StreamingLLM, at T tokens."""
    pts = equal_bytes_points(SHIP, T)
    full_mb = pts[0]["mb"]
    for name, r in EKV["perplexity"].items():
        if "stage 2" in name or "StreamingLLM" in name:
            fam = method_family(name)
            COLOURS.setdefault(fam[1], fam[2])
            pts.append({"name": name, "family": fam[1], "mb": r["fraction"] * full_mb, "nll": r["window_nll"]})
    for q in pts:
        q["ppl"] = float(np.exp(np.mean(q["nll"])))
    return pts


def frontier(pts):
    """The points no other point beats on both bytes and perplexity, by bytes."""
    best, out = float("inf"), []
    for q in sorted(pts, key=lambda q: (q["mb"], q["ppl"])):
        if q["ppl"] < best:
            best = q["ppl"]
            out.append(q)
    return out


fig = make_subplots(rows=1, cols=2, subplot_titles=("2,048 tokens of context", "16,384 tokens of context"), shared_yaxes=True)
fronts = {}
for col, T in enumerate((2048, 16384), start=1):
    pts = all_points(T)
    for fam in dict.fromkeys(q["family"] for q in pts):
        qs = [q for q in pts if q["family"] == fam]
        fig.add_trace(go.Scatter(x=[q["mb"] for q in qs], y=[q["ppl"] for q in qs], mode="markers", name=fam,
                                 marker=dict(color=COLOURS.get(fam, "#7f7f7f"), size=11 if fam == "full" else 8,
                                             symbol="star" if fam == "full" else "circle"),
                                 legendgroup=fam, showlegend=col == 1, hovertext=[q["name"] for q in qs]), row=1, col=col)
    fronts[T] = frontier(pts)
    fig.add_trace(go.Scatter(x=[q["mb"] for q in fronts[T]], y=[q["ppl"] for q in fronts[T]], mode="lines", line_shape="hv",
                             line=dict(color="black", width=1), name="best at each budget", legendgroup="front",
                             showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
fig.update_xaxes(type="log", title="MB kept for the context (16-bit, batch 1)")
fig.update_yaxes(type="log", title="held-out perplexity", col=1)
fig.update_layout(height=500, width=1000)
fig.show()
for T in (2048, 16384):
    print(f"best at each budget, {T} tokens:")
    for q in fronts[T]:
        print(f"  {q['mb']:8.2f} MB   perplexity {q['ppl']:7.3f}   {q['name']}")
full_ppl_ekv = EKV["perplexity"]["full"]["ppl"]
print(f"the two studies' original model on the same windows: perplexity {S['full_ppl']:.3f} here, {full_ppl_ekv:.3f} in lab 06's run")
assert abs(S["full_ppl"] - full_ppl_ekv) < 0.05 * full_ppl_ekv
assert all(a["mb"] < b["mb"] and a["ppl"] > b["ppl"] for a, b in zip(fronts[16384], fronts[16384][1:]))

# %% [markdown]
# ## 7. The needle a window cannot see
#
# Perplexity hides retrieval loss (Haller et al., arXiv 2504.14366, found conversions that look fine on
# perplexity and fail pass-key retrieval). A 5-digit pass key sits before a stretch of filler far longer than
# the window; the original model's accuracy is the ceiling. The shipped probe converts the 8 cheapest layers
# (the other 22 keep full attention) and asks 5 prompts at each distance.
#
# **Predict first**, for each mixer: with those 8 layers converted and the key at the probe's farthest
# distance (the question gives it: dozens of windows back), is it retrieved in most of the trials? Think about
# what each mixer keeps of a token that has left the window, and about the layers that still see everything.

# %%
ND = SHIP["needle"]
ND2 = {f"{v}, stage 2": r for v, r in SHIP.get("needle_stage2", {}).items()}
dists = list(ND["full"])
far = dists[-1]
NL = SHIP["needle_layers"]
LIN = next(v for v in VARIANTS if v.startswith("window+linear"))
needle_options = ["retrieved in most trials", "lost in most trials"]
guess_needle = {v: labs.Prediction(f"{LABEL[v]}, {len(NL)} of {N_LAYERS} layers converted, the key {far} filler tokens "
                                   f"back ({int(far) // CFG['window']} windows), {ND['full'][far]['trials']} trials:",
                                   needle_options) for v in ("window", SKA, LIN)}
for g_ in guess_needle.values():
    g_.show()

# %%
fig = go.Figure()
for v, r in {**ND, **ND2}.items():
    name = "original" if v == "full" else LABEL[v] if v in LABEL else f"{LABEL[v.split(',')[0]]}, stage 2"
    fig.add_trace(go.Bar(name=name, x=[f"{d} filler tokens" for d in dists], y=[r[d]["correct"] / r[d]["trials"] for d in dists],
                         text=[f"{r[d]['correct']}/{r[d]['trials']}" for d in dists], textposition="outside"))
fig.update_layout(title=f"pass key retrieved (layers {SHIP['needle_layers']} converted)", yaxis=dict(range=[0, 1.15], title="accuracy"),
                  barmode="group", height=380, width=760)
fig.show()
for v, g_ in guess_needle.items():  # the shipped outcome, whatever it is, against your guess
    r = ND[v][far]
    print(f"{LABEL[v]:28s} {r['correct']}/{r['trials']} at {far} filler tokens: ", end="")
    g_.reveal(needle_options[0] if r["correct"] > r["trials"] / 2 else needle_options[1])
t0 = time.time()
trials = 1 if FAST else 3
d0 = int(dists[0])
live_needle = {"original": needle_probe(model, tok, [d0], trials, seed=1)}
with converted(model, shipped_mixers(model, SKA, SHIP["needle_layers"])):
    live_needle[LABEL[SKA]] = needle_probe(model, tok, [d0], trials, seed=1)
print(f"live, {trials} new prompt(s) at {dists[0]} filler tokens ({time.time() - t0:.1f} s):",
      {k: f"{r[dists[0]]['correct']}/{trials}" for k, r in live_needle.items()})

# %% [markdown]
# **Why do SKA's statistics not carry the key?** In a `window+ska` layer a gate decides, per head and token,
# how much of the output comes from the statistics (`gate`) and how much from the softmax over the window
# (`1 - gate`). To read a key from far past the window, a head must take most of its output from the
# statistics at the question. The cell measures the gate of the shipped mixers at the last 8 tokens of a needle
# prompt with the key 256 filler tokens back (the question) and, for comparison, over held-out text.

# %%
ids_n, _ = needle_prompt(tok, d0, random.Random(2))
mx_n = shipped_mixers(model, SKA, NL)
with converted(model, mx_n):
    h_needle = capture_inputs(model, ids_n, NL)
    h_text = capture_inputs(model, held[:1], NL)
start = CFG["window"] + CFG.get("sinks", 4)
g_question = [float(mx_n[i].gate(h_needle[i])[..., -8:].mean()) for i in NL]
g_text = [float(mx_n[i].gate(h_text[i])[..., start:].mean()) for i in NL]
fig = go.Figure([go.Bar(name="needle prompt, the question's last 8 tokens", x=[f"layer {i}" for i in NL], y=g_question),
                 go.Bar(name="held-out text, every token past the window", x=[f"layer {i}" for i in NL], y=g_text)])
fig.update_layout(title="weight of the statistics in a converted layer's output (mean over heads)", barmode="group",
                  yaxis=dict(title="gate", range=[0, 1]), height=360, width=760)
fig.show()
print(f"gate at the question: {min(g_question):.3f} to {max(g_question):.3f} (mean {np.mean(g_question):.3f}); "
      f"on held-out text: mean {np.mean(g_text):.3f}")
assert np.mean(g_question) < 0.25 and np.mean(g_question) < np.mean(g_text) + 0.05

# %% [markdown]
# At the question the statistics get a small share of each converted layer's output, no larger than on
# ordinary text. Stage 1 trained the gate to *correct* the window a little, which is what reproducing a
# layer's output on ordinary text asks for, and the gate sees only the current token, not whether the
# statistics hold something worth reading. `window+linear` has no gate: its old tokens compete for the same
# softmax normaliser as the window's, so a strong match far back can take the attention mass. That is a
# likely reason why it kept the key here (we did not measure it separately). Stage 2 (the bars marked
# "stage 2" above) trains on next-token KL over ordinary text, not on retrieval. The Echo paper does without a
# gate for a related reason: its learned sigmoid gate failed under sparse supervision (2-4 answer tokens per
# sequence), and it adds SKA's output with a fixed scale instead ([E29](../docs/claims.md#E29)).

# %% [markdown]
# ### A lever, live: keep exactly what the statistics recall worst
#
# If the gate will not hand the question to the statistics, a converted layer can keep a few old tokens
# *exactly*: a sparse cache of S key/value pairs per KV head beside the window, read by the same softmax. LoLA
# (arXiv 2505.23666) picks the pairs a linear-attention state recalls worst, with no training
# ([R80](../docs/claims.md#R80)). SKA's state gives that error directly: every token that leaves the window is
# written into `G` and `C` as before and offered to the cache, scored by the ridge's **leave-one-out
# residual** `|v - C G^-1 k|^2 / (1 - h)^2` with `h = k^T G^-1 k` (dividing by `1 - h` gives what the statistics
# would predict had the pair never been written: a pair only the cache can recall keeps a large error). The
# cache keeps the S largest, re-scored as the statistics grow; S pairs cost the bytes of S more window tokens.
#
# ### Your turn 4: `loo_error` (the one that takes thought)
#
# Write `loo_error(G, C, k, v)`: for pairs that are **written in** the statistics `G` (`[..., r, r]`, `eps I`
# included) and `C` (`[..., D, r]`), given as `k` (`[..., m, r]`) and `v` (`[..., m, D]`), return `[..., m]`: the
# squared error with which a ridge fitted **without** each pair would predict its value. Refitting `m` times (one
# solve per pair, the statistics with its terms taken out) is correct but slow; there is a closed form with one
# inverse. Hint:
# write `G = G_j + k k^T`, apply Sherman-Morrison to `G^-1 k`, and compare the prediction with and without the
# pair; the leverage `h = k^T G^-1 k` appears. The checker compares with a ridge refitted without each pair, on
# fresh statistics and the shapes used below (SmolLM2's 3 KV heads, r = 32, D = 64, every old token of a prompt).

# %%
def loo_error(G, C, k, v):
    """G [..., r, r], C [..., D, r], k [..., m, r], v [..., m, D] -> [..., m]: each pair's leave-one-out error"""
    # YOUR CODE HERE
    raise NotImplementedError


loo_error = labs.exercise(loo_error, "lab08")
lab08.check_loo_error(loo_error)

# %% [markdown]
# The cell converts **one layer** (`LEVER_LAYER`, one of the 8 above; change it) with the shipped `window+ska`
# mixer and a cache of 16 pairs, reads one chat prompt with the key some 840 tokens back, and plots each
# token's error when it left the window, per KV head, with the key's tokens marked and the cached ones circled.

# %%
LEVER_LAYER = 5
SPARSE = 16
case = make_case(tok, 1024, random.Random(1), fmt="chat")  # the key some 840 tokens back
kpos = key_positions(tok, case)
lever_mx = shipped_mixers(model, f"{SKA}:S{SPARSE}", [LEVER_LAYER])
with converted(model, lever_mx):
    h_lever = capture_inputs(model, case.ids, [LEVER_LAYER])[LEVER_LAYER]
trace = lever_mx[LEVER_LAYER].sparse_trace(h_lever)
err, held_tok = trace["error"][0], trace["held"][0]  # [Hkv, T]
fig = make_subplots(rows=N_KV, cols=1, shared_xaxes=True, subplot_titles=[f"KV head {h}" for h in range(N_KV)])
for h in range(N_KV):
    t_all = torch.arange(err.shape[1])
    fig.add_trace(go.Scatter(x=t_all.tolist(), y=err[h].tolist(), mode="lines", line=dict(width=1, color="#999"),
                             name="recall error when the token left the window", showlegend=h == 0), row=h + 1, col=1)
    fig.add_trace(go.Scatter(x=kpos, y=err[h, kpos].tolist(), mode="markers", marker=dict(color="crimson", size=7),
                             name="the key's tokens", showlegend=h == 0), row=h + 1, col=1)
    hp = torch.nonzero(held_tok[h]).flatten().tolist()
    fig.add_trace(go.Scatter(x=hp, y=err[h, hp].tolist(), mode="markers", name=f"held in the cache at the question",
                             marker=dict(symbol="circle-open", size=11, color="black"), showlegend=h == 0), row=h + 1, col=1)
    fig.update_yaxes(type="log", row=h + 1, col=1)
fig.update_layout(title=f"layer {LEVER_LAYER}, {LABEL[SKA]} with a cache of {SPARSE} pairs: a chat prompt of "
                  f"{case.ids.shape[1]} tokens", height=170 * N_KV + 120, width=820)
fig.show()
kept = [int(held_tok[h, kpos].sum()) for h in range(N_KV)]
print(f"the key is spelled by tokens {kpos}; held at the question, per KV head: {kept} of {len(kpos)}")
assert held_tok.sum(-1).eq(SPARSE).all() and not held_tok[:, -CFG["window"]:].any()

# your loo_error against the statistics of the whole prompt: where do the key's tokens rank among the old ones?
mx_l, A_, W_ = lever_mx[LEVER_LAYER], CFG.get("sinks", 4), CFG["window"]
T_ = case.ids.shape[1]
with torch.no_grad():
    x_ = h_lever.float()
    kf_ = mx_l.features(mx_l.k_proj(x_).view(1, T_, N_KV, HEAD_DIM), mx_l.phi_k)[:, A_:T_ - W_].transpose(1, 2)
    v_ = mx_l.v_proj(x_).view(1, T_, N_KV, HEAD_DIM)[:, A_:T_ - W_].transpose(1, 2)  # [1, Hkv, n, D]
    G_ = CFG["eps"] * torch.eye(CFG["rank"]) + kf_.transpose(-1, -2) @ kf_  # [1, Hkv, r, r]
    C_ = v_.transpose(-1, -2) @ kf_  # [1, Hkv, D, r]
    e_ = loo_error(G_, C_, kf_, v_)  # [1, Hkv, n]
ranks = (e_[0, :, :, None] < e_[0, :, None, :]).sum(-1) + 1  # 1 = recalled worst
for h in range(N_KV):
    print(f"  KV head {h}: the key's tokens rank {sorted(ranks[h, [i - A_ for i in kpos if A_ <= i < T_ - W_]].tolist())} "
          f"of {kf_.shape[2]} old tokens by your leave-one-out error")

# %% [markdown]
# In the figure the key's tokens stand far above the filler's errors, which fall as the statistics learn the
# repeated sentences; the cache's other slots go to the prompt's first tokens (the chat template and the
# instruction, which the filler never repeats). Now the whole probe, live: the 8 converted layers with and without the cache, on new chat prompts (FAST: one
# prompt each; the answers are printed). Below it, the shipped study (`echo-tutor passkey`, 8 prompts a cell,
# 1,024 and 2,048 tokens, 8 and 15 converted layers; the plain format only at 8 layers for the cache), where the
# cached mixer stands beside the window over as many exact tokens (`window:W80`), the same bytes spent on a
# longer window beside the statistics (`window+ska:K1:W80`), its readout-shut control, and the gate fixed at 0.5
# (`window+ska:K1:G50`), with Wilson intervals.

# %%
t0 = time.time()
n_live = 1 if FAST else 4
live_lever = {}
for name, variant in ((LABEL[SKA], SKA), (f"{LABEL[SKA]}, cache of {SPARSE}", f"{SKA}:S{SPARSE}")):
    with converted(model, shipped_mixers(model, variant, NL)):
        r = probe_retrieval(model, tok, [1024], n_live, fmt="chat", seed=7)["1024"]
    live_lever[name] = f"{r['correct']}/{r['trials']} (answers {r['answers']}, keys {r['keys']})"
print(f"live, {n_live} chat prompt(s) of 1,024 tokens, layers {NL} converted ({time.time() - t0:.0f} s):")
for k, v in live_lever.items():
    print(f"  {k:40s} {v}")



def _name(r):
    return "original" if r["kind"] == "original" else r["variant"] + (" shut" if r["kind"] == "shut" else "")


PK = results("passkey")
rows = PK["summary"]["rows"]
ORDER = ["original", "window", "window:W80", "window+ska:K1", "window+ska:K1 shut", "window+ska:K1:S16",
         "window+ska:K1:S16 shut", "window+ska:K1:W80", "window+ska:K1:G50", "window+linear:K0"]
fig = make_subplots(rows=1, cols=2, subplot_titles=["chat", "plain"], shared_yaxes=True)
for j, fmt in enumerate(("chat", "plain")):
    for name in ORDER:
        rs = [r for r in rows if _name(r) == name and r["fmt"] == fmt]
        rs = [r for r in rs if r["kind"] != "original"] or [dict(r, count=c) for r in rs for c in (8, 15)]
        rs = sorted(rs, key=lambda r: (r["count"], r["length"]))
        fig.add_trace(go.Bar(name=name, x=[f"{r['count']} layers, {r['length']}" for r in rs],
                             y=[r["correct"] / r["trials"] for r in rs], showlegend=j == 0, legendgroup=name,
                             error_y=dict(type="data", symmetric=False,
                                          array=[r["ci95"][1] - r["correct"] / r["trials"] for r in rs],
                                          arrayminus=[r["correct"] / r["trials"] - r["ci95"][0] for r in rs])),
                      row=1, col=j + 1)
fig.update_layout(title=f"the shipped pass-key study: {rows[0]['trials']} prompts a cell, Wilson 95% intervals",
                  barmode="group", height=460, width=1150, yaxis=dict(range=[0, 1.05], title="key retrieved"))
fig.show()
for v in PK["summary"]["verdicts"]:
    if ":S" in v["variant"] and "shut_rate" in v:
        print(f"{v['variant']:22s} {v['count']:2d} layers {v['fmt']:5s} {v['length']}: {v['rate']:.2f} against the "
              f"window over as many tokens {v['window_rate']:.2f} and its readout shut {v['shut_rate']:.2f}: "
              f"{'keeps the needle' if v['keeps'] else 'does not keep the needle (sign tests)'}")
for q in PK["summary"]["perplexity"]:
    print(f"held-out perplexity at {q['context']} tokens, {q['count']} layers, {q['variant'] or 'original'}: "
          f"x{q['ratio']:.3f} [{math.exp(q['lo']):.3f}, {math.exp(q['hi']):.3f}] ({q['windows']} windows)")

# %% [markdown]
# What the shipped study shows (ours; 8 prompts a cell, so only large differences count, and the intervals say
# so). **The cache brings the key back, and SKA's statistics are what choose it**: with 15 layers converted, where
# every model without a cache loses the chat key (the window alone 1/8 and 0/8, the window over 80 tokens the
# same), window + SKA with its cache and its readout *shut* answers 6/8 and 5/8 (the original: 8/8, 6/8). The
# same 16 pairs' bytes spent on 16 more window tokens beside the statistics (`window+ska:K1:W80`, 8 layers) do
# not. **SKA's readout does not carry the key**: with it on, the cached model answers fewer prompts (4/8 and
# 0/8 at 15 layers), and fixing the gate at 0.5 (`G50`, so the statistics surely reach the question) loses every
# chat prompt at 8 layers. So by the study's rule window + SKA still does not "keep the needle" (its
# readout-shut control does as well or better): the ridge state earns its place here as a *selector* of what
# to keep exactly (its leave-one-out error), not as a readout. Retraining the readout for retrieval (the
# issue's other levers) is what this does not try.

# %% [markdown]
# ## 8. Side by side
#
# One prompt, greedy decoding, the original model and the model with 8 layers converted. The converted
# layers stream through their fixed state (`step`), the others through the usual KV cache.

# %%
prompt = [{"role": "user", "content": "Explain in two sentences what a hash table is."}]
ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
n_new = 30 if FAST else 60
orig_text = tok.decode(greedy(model, ids, n_new)[0], skip_special_tokens=True)
with converted(model, shipped_mixers(model, SKA, layers_live)):
    conv_text = tok.decode(greedy(model, ids, n_new)[0], skip_special_tokens=True)
display(Markdown(f"| original | {LABEL[SKA]}, {n_live} layers |\n|---|---|\n| {orig_text.replace(chr(10), ' ')} | "
                 f"{conv_text.replace(chr(10), ' ')} |"))

# %% [markdown]
# ## 9. The verdict, computed
#
# The cell states what the shipped study shows, from its numbers: how many layers each mixer takes within
# +5% and +20% perplexity, whether SKA's statistics beat the window alone and window + linear attention at
# the same count (paired over windows), whether they carry the needle past the window, what stage 2 changed,
# and which methods make up the best-at-each-budget line of section 6.

# %%
lines = []
for v, b in S["budget"].items():
    lines.append(f"- **{LABEL[v]}**: {b['5%']} layers within +5%, {b['20%']} within +20% "
                 f"(state per converted layer {mixer_bytes(model, parse_variant(v, window=CFG['window'], sinks=CFG.get('sinks', 4), rank=CFG['rank'])) / 1e3:.0f} kB)")
for c in S["versus"]:
    if c["a"] != SKA:
        continue
    word = {"better": "better than", "worse": "worse than"}.get(c["verdict"], "not shown different from")
    lines.append(f"- {c['n']} layers: {LABEL[c['a']]} is {word} {LABEL[c['b']]} "
                 f"(NLL {c['dnll']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] nats/token)")
nd = {("original" if v == "full" else LABEL[v]): f"{r[far]['correct']}/{r[far]['trials']}" for v, r in ND.items()}
nd.update({f"{LABEL[v.split(',')[0]]}, stage 2": f"{r[far]['correct']}/{r[far]['trials']}" for v, r in ND2.items()})
for r in S["stage2"]:
    word = {"better": "improved on", "worse": "was worse than"}.get(r["verdict"], "was not shown different from")
    lines.append(f"- stage 2 ({S2_STEPS} steps), {LABEL[r['variant']]} at {r['n']} layers, {word} its stage 1: "
                 f"x{r['stage1_ratio']:.3f} -> x{r['ratio']:.3f} (NLL {r['dnll']:+.4f} [{r['dlo']:+.4f}, {r['dhi']:+.4f}])")
for T in (2048, 16384):
    small = fronts[T][0]
    lines.append(f"- at {T} tokens the smallest state on the best-at-each-budget line is {small['name']} "
                 f"({small['mb']:.1f} MB, perplexity {small['ppl']:.2f}); the line: "
                 + ", ".join(f"{q['name']} ({q['mb']:.1f} MB)" for q in fronts[T][1:]))
lines.append(f"- pass key at {far} filler tokens: " + ", ".join(f"{k} {x}" for k, x in nd.items()))
display(Markdown("\n".join(lines)))
assert S["budget"][SKA]["5%"] >= 1

# %%
_ = labs.report("lab08")
