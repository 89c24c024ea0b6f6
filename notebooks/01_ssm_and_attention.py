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
# # Lab 01: Two ways to remember
#
# A sequence model must carry the past to the present. Two families do it in opposite ways:
#
# * **attention** keeps every key and value (the *KV cache*): exact, but memory grows with every token;
# * **state-space models** (SSMs) like [Mamba-2](../docs/course.md#glossary) fold the past into a fixed-size
#   state: constant memory, but what does not fit is lost. That loss is the "memory cliff" the Echo paper is
#   about.
#
# The surprise of Mamba-2 ("Transformers are SSMs", Dao & Gu 2024) is that its recurrence *is* a form of
# attention, with a causal mask that decays ([SSD](../docs/course.md#glossary), state-space duality). You will
# compute both forms and show they agree, then stream tokens through the project's models (pure Mamba-2,
# Mamba-2 + attention, Echo = Mamba-2 + SKA, pure attention) and measure their inference memory as the context
# grows.
#
# Notation for one head: inputs `x_t` (`P` wide), log-decay `a_t = A dt_t <= 0`, write vector `b_t` and read
# vector `c_t` (`N` wide), state `h_t` (`P x N`). These are Mamba-2's own names, and three of them clash
# with SKA's in labs 00 and 02-04: here `A` is Mamba-2's per-head decay parameter (a negative number), not
# SKA's Koopman operator `A = M G^-1`; `B` and `C` are the write and read vectors `b_t`, `c_t` stacked over
# time, not SKA's statistic `C`; and `L` is a decay mask, not a Cholesky factor. `N` is Mamba-2's state size
# (`d_state`). The notation table (`echo_tutor/ska/README.md`) lists both.

# %%
import math
import time

import ipywidgets as widgets
from IPython.display import display
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from echo_tutor import labs
from echo_tutor.experiments import PRESET_COLORS
from echo_tutor.labs import lab01
from echo_tutor.models import build, count_parameters, state_nbytes
from echo_tutor.ssm import Mamba2, ssd_chunked

FAST = labs.FAST
print(f"FAST={FAST}  solutions={'on' if labs.SOLUTIONS else 'off'}  torch {torch.__version__}")

# %% [markdown]
# ## 1. The recurrence
#
# $$h_t = e^{a_t} h_{t-1} + x_t b_t^\top, \qquad y_t = h_t c_t .$$
#
# The old state fades by `exp(a_t)` (Mamba-2 makes `dt_t`, hence the fade, depend on the input: it can
# choose to keep or to forget), the new token is written as an outer product, and the output reads the
# state along `c_t`.
#
# ### Your turn 1: `ssm_scan`
# Write `ssm_scan(x [T, P], a [T], b [T, N], c [T, N]) -> y [T, P]` with `h` starting at zero.

# %%
def ssm_scan(x, a, b, c):
    """x [T, P], a [T], b [T, N], c [T, N] -> y [T, P]"""
    # YOUR CODE HERE
    raise NotImplementedError


ssm_scan = labs.exercise(ssm_scan, "lab01")
lab01.check_ssm_scan(ssm_scan)

# %% [markdown]
# ## 2. The same thing as attention
#
# Unroll the recurrence: `y_t = sum_{s<=t} exp(a_{s+1} + ... + a_t) (c_t . b_s) x_s`. In matrix form
#
# $$y = \big((C B^\top) \circ L\big)\, x, \qquad L_{ts} = e^{a_{s+1} + \dots + a_t}\ (t \ge s),\ 0\ (t < s):$$
#
# attention scores `C B^T` (query `c_t`, key `b_s`), a causal mask `L` that *decays* with distance instead
# of the 0/1 mask of softmax attention, and no softmax.
#
# ### Your turn 2: `decay_mask`
# Write `decay_mask(a [T]) -> L [T, T]`.
#
# Hint: build the segment sums `S[i, j] = a_{j+1} + ... + a_i` *directly*: a tensor holding `a_i` in row `i`
# of every column `j < i` (0 elsewhere), summed down the rows with `cumsum(dim=0)`; then `L = exp(S)` with
# the entries above the diagonal set to 0. This is how the package's `echo_tutor.ssm.segsum` builds
# Mamba-2's mask. Avoid the shortcut `S[i, j] = cumsum(a)_i - cumsum(a)_j`: on a long, strongly decaying
# sequence the cumulative sums grow large, and their difference loses the digits of the small sums near the
# diagonal (the largest entries of `L`). The checker also tests your mask on a 512-token float32 sequence.

# %%
def decay_mask(a):
    """a [T] -> L [T, T], L[i, j] = exp(a_{j+1} + ... + a_i) for i >= j, else 0"""
    # YOUR CODE HERE
    raise NotImplementedError


decay_mask = labs.exercise(decay_mask, "lab01")
lab01.check_decay_mask(decay_mask)

# %% [markdown]
# Why the hint insists: the same long float32 sequence, both ways, against a float64 reference.

# %%
a_long = -2 * torch.rand(512, generator=torch.Generator().manual_seed(0))  # float32, a_t in [-2, 0]
reference = decay_mask(a_long.double())
cs_long = torch.cumsum(a_long, 0)
by_difference = torch.tril(torch.exp(cs_long[:, None] - cs_long[None, :]))
err_direct = (decay_mask(a_long).double() - reference).abs().max().item()
err_difference = (by_difference.double() - reference).abs().max().item()
print(f"cumsum(a) reaches {cs_long[-1]:.0f}; max |error| of L in float32: "
      f"segment sums {err_direct:.1e}, cumsum difference {err_difference:.1e}")
assert err_direct < 1e-6 < err_difference

# %% [markdown]
# ### Your turn 3: `ssd_quadratic`
# Write `ssd_quadratic(x, a, b, c) -> y [T, P]` as one masked matrix product (use your `decay_mask`).

# %%
def ssd_quadratic(x, a, b, c):
    """x [T, P], a [T], b [T, N], c [T, N] -> y [T, P] = ((C B^T) o L) x"""
    # YOUR CODE HERE
    raise NotImplementedError


ssd_quadratic = labs.exercise(ssd_quadratic, "lab01")
lab01.check_ssd_quadratic(ssd_quadratic)

# %% [markdown]
# Side by side on one sequence: the loop, the quadratic form, and the library's chunked SSD algorithm
# (quadratic inside chunks of 16 tokens, recurrent across them), which is how Mamba-2 trains fast. On this
# sequence every token fades the state a little (`a_t` in `[-0.3, 0]`), except token 20, where the model
# chooses to forget: `a_20 = -4`.
#
# **Predict first.** The heat-map below answers it at a glance, so commit before you look: what you expect
# a forget gate to do to the mask, a hard cut or a soft one, is how you will read every decay mask after it.

# %%
gate_options = {"exactly 0": 0.0, "at most exp(-4), about 0.02": math.exp(-4), "about 0.5": 0.5,
                "about 1: unchanged": 1.0}  # each option, as a weight
guess_gate = labs.Prediction("Token 20 forgets (a_20 = -4). At most, how much can a token before 20 weigh in an output "
                             "at 20 or later (an entry of the mask L)?", list(gate_options))
guess_gate.show()

# %%
g = torch.Generator().manual_seed(0)
T, P, N = 48, 4, 8
x = torch.randn(T, P, generator=g, dtype=torch.float64)
a = -0.3 * torch.rand(T, generator=g, dtype=torch.float64)
a[20] = -4.0  # one token where the model chooses to forget
b = torch.randn(T, N, generator=g, dtype=torch.float64)
c = torch.randn(T, N, generator=g, dtype=torch.float64)

y_loop = ssm_scan(x, a, b, c)
y_quad = ssd_quadratic(x, a, b, c)
y_chunk, _ = ssd_chunked(x[None, :, None], a[None, :, None], b[None, :, None], c[None, :, None], chunk_size=16)
print("loop vs quadratic:", (y_loop - y_quad).abs().max().item())
print("loop vs chunked SSD:", (y_loop - y_chunk[0, :, 0]).abs().max().item())
assert torch.allclose(y_loop, y_quad, atol=1e-10) and torch.allclose(y_loop, y_chunk[0, :, 0], atol=1e-10)

L_mask = decay_mask(a)
scores = (c @ b.T) * L_mask
fig = make_subplots(rows=1, cols=2, subplot_titles=["decay mask L", "SSD 'attention' (C B^T) o L"])
fig.add_trace(go.Heatmap(z=L_mask.numpy(), colorscale="Viridis", showscale=False), row=1, col=1)
fig.add_trace(go.Heatmap(z=scores.numpy(), colorscale="RdBu", zmid=0, showscale=False), row=1, col=2)
fig.update_yaxes(autorange="reversed", title_text="output t")
fig.update_xaxes(title_text="input s")
through_gate = L_mask[20:, :20].max().item()  # the most any token before 20 weighs in an output from 20 on
fig.update_layout(height=360, title=f"The token at t=20 forgets: earlier inputs reach later outputs with weight "
                                    f"<= {through_gate:.3f}")
fig.show()
print(f"largest weight of a token s < 20 in an output t >= 20: {through_gate:.4f} (exp(a_20) = {a[20].exp():.4f})")
nonzero = [o for o, w in gate_options.items() if w > 0]
guess_gate.reveal("exactly 0" if through_gate == 0 else  # else the nonzero option nearest the measured weight, in ratio
                  min(nonzero, key=lambda o: abs(math.log(gate_options[o] / through_gate))))
assert through_gate <= torch.exp(a[20]).item(), "the forget gate at t=20 cuts the mask"

# %% [markdown]
# ## 3. The Mamba-2 mixer
#
# The full mixer wraps that scan: an input projection into `(z, x, B, C, dt)`, a short causal convolution,
# `dt = softplus(.)`, the SSD scan over `H` heads, a gated [RMSNorm](../docs/course.md#glossary) and an output
# projection. Its decode state is the last three conv inputs plus `h` per head: fixed, whatever the context.
# Training uses the chunked scan (`forward`); generation uses `step`. They must agree:

# %%
torch.manual_seed(0)
mixer = Mamba2(64, d_state=16, headdim=32, chunk_size=16).double()
u = torch.randn(1, 40, 64, dtype=torch.float64)
y_fwd, st_fwd = mixer(u)
st = mixer.init_state(1)
y_steps = []
for t in range(u.shape[1]):
    y_t, st = mixer.step(u[:, t], st)
    y_steps.append(y_t)
print(mixer)
print("forward vs step-by-step:", (y_fwd - torch.stack(y_steps, 1)).abs().max().item(),
      f"| decode state: {st.nbytes} bytes (float64)")
assert torch.allclose(y_fwd, torch.stack(y_steps, 1), atol=1e-10)

# %% [markdown]
# ## 4. Streaming through four models
#
# The project's presets at the paper's size (d=128, 4 blocks, vocab 128: about a million parameters each,
# printed below with each model's layout):
#
# | preset | mixers | memory |
# |---|---|---|
# | `synth1m-ssm` | 4 x Mamba-2 | fixed |
# | `synth1m-ssm+attn` | 2 x Mamba-2, 2 x attention | grows (2 KV caches) |
# | `synth1m-echo` | 2 x Mamba-2, 2 x SKA (r=24, K=2) | fixed |
# | `synth1m-attn` | 4 x attention | grows (4 KV caches) |
#
# `synth1m-echo` is the synth1m-size echo layout (d=128, r=24, K=2), built untrained; the `echo` of labs 00, 02, 03
# and 05 is the smaller lab-scale model (d=64, r=32, K=1). The course guide's
# [model table](../docs/course.md#the-models) lists both.
#
# Below, tokens are streamed one at a time through each (untrained: this is about memory, not answers),
# and the figure updates live with the bytes each model's inference state holds, counted from its tensors.

# %%
presets = ["synth1m-ssm", "synth1m-ssm+attn", "synth1m-echo", "synth1m-attn"]
models = {p: build(p, vocab_size=128).eval() for p in presets}
for p, m in models.items():
    cfg = m.config
    print(f"{p:<9} {count_parameters(m):>9,d} parameters   d={cfg.d_model}   layout {m.layout}"
          + (f"   SKA r={cfg.ska_rank}" if "ska" in m.layout else ""))

stream_len = 256 if FAST else 2048  # token-by-token decoding: a CPU loop, kept to about a minute in FULL
every = 16 if FAST else 64
live = go.FigureWidget(layout=dict(height=380, xaxis_title="tokens streamed", yaxis_title="state bytes",
                                   yaxis_type="log", title="Inference state while streaming (measured)"))
for p in presets:
    live.add_scatter(x=[], y=[], mode="lines", name=p, line=dict(color=PRESET_COLORS[p]))
display(live)

tokens = torch.randint(0, 128, (1, stream_len), generator=g)
states = {p: m.init_state(1) for p, m in models.items()}
curves = {p: ([], []) for p in presets}
t0 = time.perf_counter()
with torch.inference_mode():
    for t in range(stream_len):
        for p, m in models.items():
            _, states[p] = m.step(tokens[:, t], states[p])
        if (t + 1) % every == 0:
            with live.batch_update():
                for i, p in enumerate(presets):
                    curves[p][0].append(t + 1)
                    curves[p][1].append(state_nbytes(states[p]))
                    live.data[i].x, live.data[i].y = curves[p][0], curves[p][1]
print(f"streamed {stream_len} tokens through {len(presets)} models in {time.perf_counter() - t0:.1f} s")

# %%
final = {p: curves[p][1][-1] for p in presets}
print({p: f"{b:,d} B" for p, b in final.items()})
assert curves["synth1m-ssm"][1][0] == final["synth1m-ssm"] and curves["synth1m-echo"][1][0] == final["synth1m-echo"], "fixed-size states"
assert final["synth1m-attn"] == 4 * 2 * 128 * 4 * stream_len, "4 layers x (K and V) x d x float32 per token"
assert final["synth1m-ssm+attn"] > final["synth1m-echo"]

# %% [markdown]
# ## 5. Where the KV cache overtakes a fixed state
#
# Move the slider: each model is *prefilled* with that many tokens (the chunked forward pass) and its state
# measured. Per token, `synth1m-attn` should add `4 layers x 2 (K and V) x 128 x 4 B = 4 KiB` while `synth1m-echo`'s state
# stays put; the cell after the figure measures both.

# %%
def state_sizes(n_tokens):
    """Bytes of each preset's state after prefilling n_tokens tokens: {preset: bytes}."""
    ids = torch.randint(0, 128, (1, n_tokens), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return {p: state_nbytes(models[p](ids)[1]) for p in presets}


bars = go.FigureWidget(go.Bar(x=presets, y=[1] * len(presets), text=[""] * len(presets), textposition="outside",
                              marker_color=[PRESET_COLORS[p] for p in presets]))
bars.update_layout(height=360, yaxis_type="log", yaxis_title="state bytes", yaxis_range=[4, 8.5],
                   xaxis_title="preset")
context = widgets.IntSlider(value=1024, min=16, max=4096 if FAST else 65536, step=16, description="context",
                            continuous_update=False)


def draw(n_tokens):
    """The slider's observer: the only code that draws into `bars`."""
    sizes = list(state_sizes(n_tokens).values())
    with bars.batch_update():
        bars.data[0].y = sizes
        bars.data[0].text = [f"{s / 1024:,.0f} KiB" for s in sizes]
        bars.layout.title = f"state bytes after {n_tokens:,d} tokens"


drawn = widgets.interactive_output(draw, {"n_tokens": context})  # shows the observer's errors, if any
display(widgets.VBox([context, bars, drawn]))

# %%
sizes_short, sizes_long = state_sizes(16), state_sizes(2048)  # numbers only: the figure follows the slider
per_token_attn = (sizes_long["synth1m-attn"] - sizes_short["synth1m-attn"]) / (2048 - 16)
crossover = 16 + (sizes_short["synth1m-echo"] - sizes_short["synth1m-attn"]) / per_token_attn  # where attn's line meets echo's
print(f"attn grows {per_token_attn:,.0f} B/token; Echo stays at {sizes_short['synth1m-echo']:,d} B "
      f"({sizes_short['synth1m-echo'] / 1024:.1f} KiB) from 16 to 2,048 tokens; attn passes it at ~{crossover:.0f} tokens")
print(f"at 2,048 tokens attn holds {sizes_long['synth1m-attn'] / sizes_long['synth1m-echo']:.0f}x Echo's state")
assert sizes_short["synth1m-echo"] == sizes_long["synth1m-echo"] and per_token_attn == 4096
assert sizes_long["synth1m-attn"] / sizes_long["synth1m-echo"] > 50
assert bars.layout.title.text == f"state bytes after {context.value:,d} tokens", "the figure follows the slider"

# %% [markdown]
# ## Summary
#
# * Mamba-2's recurrence and its quadratic "attention with a decaying mask" are the same computation; the
#   chunked SSD algorithm mixes the two for speed.
# * Attention's memory grows with the context (4 KiB per token here); Mamba-2's and Echo's do not. After
#   ~25 tokens (section 5) the 4-layer attention model already holds more state than Echo. Per-token
#   decode latency follows the same pattern: `python benchmarks/decode.py` (numbers in `docs/results.md`).
# * A fixed state must *choose* what to keep. Lab 03 measures what that costs on recall as the gap between
#   a fact and its question grows.


# %% [markdown]
# ## Your exercises
#
# Which of this lab's exercises pass. An exercise that is not done yet did not stop the lab: the cells after
# it used the reference solution. Fix one, run its cell again, then this one.

# %%
_ = labs.report("lab01")
