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
#   state: constant memory, but what does not fit is lost. The Echo paper calls the resulting failure a
#   "memory cliff": recall collapses once the gap between a fact and its query exceeds the state's effective
#   horizon ([E2](../docs/claims.md#E2)).
#
# The surprise of Mamba-2 ("Transformers are SSMs", Dao & Gu 2024) is that its recurrence *is* a form of
# attention, with a causal mask that decays ([SSD](../docs/course.md#glossary), state-space duality). You will
# compute both forms and show they agree, build the chunked algorithm Mamba-2 trains with from the two, then
# stream tokens through the project's models (pure Mamba-2, Mamba-2 + attention, Echo = Mamba-2 + SKA, pure
# attention) and measure their inference memory as the context grows.
#
# Notation for one head: inputs `x_t` (`P` wide), log-decay `a_t = A dt_t <= 0`, write vector `b_t` and read
# vector `c_t` (`N` wide), state `h_t` (`P x N`). These are Mamba-2's own names, and three of them clash
# with SKA's in labs 00 and 02-04: here `A` is Mamba-2's per-head decay parameter (a negative number), not
# SKA's Koopman operator `A = M G^-1`; `B` and `C` are the write and read vectors `b_t`, `c_t` stacked over
# time, not SKA's statistic `C`; and `L` is a decay mask, not a Cholesky factor. `N` is Mamba-2's state size
# (`d_state`). The notation table (`echo_tutor/ska/README.md`) lists both.
#
# Every function you write takes any number of **leading batch dims** `...` (sequences, heads) in front of
# the shapes given: count dims from the end (`x[..., t, :]`, `dim=-1`, `.mT`), because section 3 calls your
# functions on several heads at once, and the checkers try zero, one and two leading dims.

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
from echo_tutor.ssm import Mamba2
from echo_tutor.ssm import ssd_chunked as library_ssd_chunked  # the package's chunked SSD, layout [B, T, H, P]
from echo_tutor.timing import median_seconds

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
# ### Your turn 1 (warm-up): `ssm_scan`
# Write `ssm_scan(x [..., T, P], a [..., T], b [..., T, N], c [..., T, N]) -> y [..., T, P]` with `h`
# (`[..., P, N]`) starting at zero: a Python loop over the tokens. The one thing to think about is the
# leading dims: `torch.outer` takes vectors only, so write the outer product `x_t b_t^T` with broadcasting.

# %%
def ssm_scan(x, a, b, c):
    """x [..., T, P], a [..., T], b [..., T, N], c [..., T, N] -> y [..., T, P]"""
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
# Write `decay_mask(a [..., T]) -> L [..., T, T]`, the mask above, in a few tensor operations (no Python
# loop over `i` or `j`).
#
# The obvious way is the difference of running sums, `S[i, j] = cumsum(a)_i - cumsum(a)_j`. It is exact in
# real numbers and **not good enough here**: on a long, strongly decaying sequence the running sums grow
# large, and their difference loses the digits of the small sums near the diagonal, which are the largest
# entries of `L`. The checker tests your mask on a 512-token float32 sequence against a float64 reference,
# to `1e-6`, which the difference misses.
#
# So the puzzle: get every segment sum `a_{j+1} + ... + a_i` as a sum of its own few terms, never as a
# difference of two long sums. Look at one column `j` of `S` and walk down the rows `i = j, j+1, j+2, ...`:
# what is added at each step, and what does that say about which tensor to `cumsum`, along which dim?

# %%
def decay_mask(a):
    """a [..., T] -> L [..., T, T], L[..., i, j] = exp(a_{j+1} + ... + a_i) for i >= j, else 0"""
    # YOUR CODE HERE
    raise NotImplementedError


decay_mask = labs.exercise(decay_mask, "lab01")
lab01.check_decay_mask(decay_mask)

# %% [markdown]
# Why the checker insists: the same long float32 sequence, both ways, against a float64 reference. (The
# package builds Mamba-2's mask the way the puzzle asks, `echo_tutor.ssm.segsum`: a tensor holding `a_i` in
# row `i` of every column `j < i`, 0 elsewhere, summed down the rows.)

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
# ### Your turn 3 (warm-up): `ssd_quadratic`
# Write `ssd_quadratic(x, a, b, c) -> y [..., T, P]` as one masked matrix product (use your `decay_mask`).
# With leading dims, `b.T` is not the transpose you want: which one is?

# %%
def ssd_quadratic(x, a, b, c):
    """x [..., T, P], a [..., T], b [..., T, N], c [..., T, N] -> y [..., T, P] = ((C B^T) o L) x"""
    # YOUR CODE HERE
    raise NotImplementedError


ssd_quadratic = labs.exercise(ssd_quadratic, "lab01")
lab01.check_ssd_quadratic(ssd_quadratic)

# %% [markdown]
# Side by side on one sequence: the loop and the quadratic form. On this sequence every token fades the
# state a little (`a_t` in `[-0.3, 0]`), except token 20, where the model chooses to forget: `a_20 = -4`.
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
print("loop vs quadratic:", (y_loop - y_quad).abs().max().item())
assert torch.allclose(y_loop, y_quad, atol=1e-10)

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
# ## 3. Chunks: quadratic inside, recurrent across
#
# The loop makes `T` small steps one after another; the quadratic form makes one big product but costs
# `O(T^2)` time and memory. Mamba-2 trains with a third form, the **chunked SSD algorithm**, that takes the
# best of both: cut the sequence into chunks of `S` tokens; inside a chunk, the quadratic form (all `S`
# tokens at once); across chunks, the recurrence, on the state `h` (`P x N`), one step per chunk.
#
# ### Your turn 4 (open-ended): `ssd_chunked`
# Write `ssd_chunked(x, a, b, c, chunk) -> y [..., T, P]`: the same outputs as `ssm_scan`, with a Python
# loop over the chunks only (`ceil(T / chunk)` steps; the last chunk may be shorter than `chunk`) and no loop
# inside a chunk. Nothing below gives the code; work out on paper first, for the token at position `l` of a
# chunk that starts at token `s`:
#
# 1. what it reads from all earlier chunks, given the state `h` that entered the chunk: by how much has `h`
#    faded by the time this token reads it?
# 2. how the state leaving the chunk is built from `h` and the chunk's own tokens: by how much does the
#    token's own write `x_l b_l^T` fade before the chunk ends?
#
# The two answers differ by one `a` at the boundary, and that is where most first attempts go wrong; your
# `decay_mask` of the chunk holds one of them already. You may call your own `decay_mask` and
# `ssd_quadratic` (once they pass), not `ssm_scan`: a loop over tokens is not the chunked algorithm. The
# checker compares your function with the recurrence on awkward lengths (`T` not a multiple of `chunk`,
# `chunk = 1`, `chunk >= T`, any leading dims) and names the usual boundary mistakes; it also checks the
# algorithm: the number of tensor operations must not grow with the chunk's length (no token loop hidden
# inside), no tensor may be `T x T` (no quadratic form over the whole sequence), and at a fixed chunk the
# work must grow in step with `T` (a chunk that reads every earlier token, not the carried state, costs
# more the later it sits: `O(T^2)` in all, even in chunk-sized blocks).
#
# Before you run it, write down what your function costs, as a function of `T`, `chunk`, `P` and `N`:
# the arithmetic, the memory of its largest tensor, and the number of steps that must run one after
# another. The cell after the check measures the trade-off.

# %%
def ssd_chunked(x, a, b, c, chunk):
    """x [..., T, P], a [..., T], b [..., T, N], c [..., T, N], chunk: int -> y [..., T, P], the recurrence's
    outputs, computed chunk by chunk: quadratic inside each chunk, a state [..., P, N] carried across them"""
    # YOUR CODE HERE
    raise NotImplementedError


ssd_chunked = labs.exercise(ssd_chunked, "lab01")
lab01.check_ssd_chunked(ssd_chunked)

# %% [markdown]
# Your chunked scan on section 2's forget-gate sequence, against the loop and against the package's
# `ssd_chunked` (the one the project's Mamba-2 trains with; its layout is `[B, T, H, P]`, hence the `None`s):

# %%
y_chunk = ssd_chunked(x, a, b, c, 16)
y_library, _ = library_ssd_chunked(x[None, :, None], a[None, :, None], b[None, :, None], c[None, :, None], chunk_size=16)
print("loop vs your chunked scan (chunks of 16):", (y_loop - y_chunk).abs().max().item())
print("loop vs the package's chunked scan:      ", (y_loop - y_library[0, :, 0]).abs().max().item())
assert torch.allclose(y_loop, y_chunk, atol=1e-10) and torch.allclose(y_loop, y_library[0, :, 0], atol=1e-10)

# %% [markdown]
# What the chunk length buys. Four heads of one long sequence (`P = N = 16`, float32, `a_t` in
# `[-0.3, 0]`), through your `ssm_scan` (the token loop) and your `ssd_chunked` at several chunk lengths,
# from `chunk = 4` to one chunk holding the whole sequence (the quadratic form).
#
# **Predict first.** Which chunk length will be fastest on this machine?

# %%
chunk_options = ["4 (many tiny steps)", "16 to 64", "256", "the whole sequence (one quadratic product)"]
guess_chunk = labs.Prediction("Four heads, one long sequence, on this machine's CPU: which chunk length makes "
                              "your ssd_chunked fastest?", chunk_options)
guess_chunk.show()

# %%
T_long = 1024 if FAST else 2048  # the last chunk length, the whole sequence, builds 4 x T x T masks
gl = torch.Generator().manual_seed(1)
xl = torch.randn(4, T_long, 16, generator=gl)
al = -0.3 * torch.rand(4, T_long, generator=gl)
bl, cl = torch.randn(4, T_long, 16, generator=gl), torch.randn(4, T_long, 16, generator=gl)
chunks = [4, 16, 64, 256, T_long]
seconds = {"token loop": median_seconds(lambda: ssm_scan(xl, al, bl, cl), reps=3, warmup=1)}
for S in chunks:
    seconds[S] = median_seconds(lambda: ssd_chunked(xl, al, bl, cl, S), reps=3, warmup=1)
y_ref = ssm_scan(xl, al, bl, cl)
mismatch = max((ssd_chunked(xl, al, bl, cl, S) - y_ref).abs().max().item() for S in chunks) / y_ref.abs().max().item()

print(f"T = {T_long:,d} tokens, 4 heads (float32); largest |chunked - loop| / max |loop| over all chunk lengths: "
      f"{mismatch:.1e}")
print(f"{'':>12} {'chunk':>6} {'steps in a row':>15} {'ms':>9} {'vs the loop':>12}")
for key, s in seconds.items():
    steps = T_long if key == "token loop" else math.ceil(T_long / key)
    label = "token loop" if key == "token loop" else "chunked"
    print(f"{label:>12} {key if key != 'token loop' else 1:>6} {steps:>15,d} {1e3 * s:>9.1f} "
          f"{seconds['token loop'] / s:>11.1f}x")
fastest = min(chunks, key=lambda S: seconds[S])
fig = go.Figure(go.Bar(x=[str(S) for S in chunks], y=[1e3 * seconds[S] for S in chunks], name="your ssd_chunked",
                       marker_color=["#2ca02c" if S == fastest else "#7f7f7f" for S in chunks]))
loop_ms = 1e3 * seconds["token loop"]  # drawn as a trace: a hline's annotation lands at 10^y on a log axis
fig.add_trace(go.Scatter(x=[str(chunks[0]), str(chunks[-1])], y=[loop_ms, loop_ms], mode="lines",
                         line=dict(dash="dot", color="#d62728"), name="your ssm_scan (token loop)"))
fig.update_layout(height=320, xaxis_title="chunk length (the last bar: one chunk, the quadratic form)",
                  yaxis_title="ms (median of 3)", yaxis_type="log", legend=dict(orientation="h", y=-0.35),
                  title=f"T = {T_long:,d}, 4 heads: the fastest chunk here is {fastest}")
fig.show()
guess_chunk.reveal(chunk_options[0] if fastest == 4 else chunk_options[1] if fastest in (16, 64)
                   else chunk_options[2] if fastest == 256 else chunk_options[3])
assert mismatch < 1e-4, "every chunk length computes the recurrence"

# %% [markdown]
# The two ends are the two forms you wrote: `chunk = 1` would be the token loop again (`T` steps in a row,
# each tiny), one chunk of `T` is the quadratic form (one step, `T^2` work and memory). In between, the work
# is `O(T chunk (P + N))` inside the chunks plus `T / chunk` state steps of `O(P N)`, and only those
# `T / chunk` steps must run one after another. On a GPU each such step is a kernel launch and a wait,
# which is why a training kernel wants few of them and a chunk that fills the chip; the package's
# Mamba-2 uses chunks of 64 by default. Times on your machine will differ from ours; the shape (slow at
# both ends) is the point.

# %% [markdown]
# ## 4. The Mamba-2 mixer
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
# ## 5. Streaming through four models
#
# The four presets below have the size of the Echo paper's synthetic-task models: `d = 128`, 4 heads,
# Mamba-2 state 16, vocabulary 128, SwiGLU MLPs, about a million parameters each (§4.1,
# [E20](../docs/claims.md#E20)). That is what the prefix says: `synth1m-`, synthetic tasks, ~1M parameters.
# Three follow the paper's three layouts ([E20](../docs/claims.md#E20); `r = 24` and `K = 2` from its
# App. G.2, [E21](../docs/claims.md#E21)); the fourth, pure attention, is ours, for contrast:
#
# | preset | mixers | memory | the paper's model ([E20](../docs/claims.md#E20)) |
# |---|---|---|---|
# | `synth1m-ssm` | 4 x Mamba-2 | fixed | SSM |
# | `synth1m-ssm+attn` | 2 x Mamba-2, 2 x attention (RoPE) | grows (2 KV caches) | SSM+Attn |
# | `synth1m-echo` | 2 x Mamba-2, 2 x SKA (`r = 24`, `K = 2`) | fixed | SSM+SKA |
# | `synth1m-attn` | 4 x attention | grows (4 KV caches) | none (ours) |
#
# The cell below prints each model's parameter count beside the paper's ([E20](../docs/claims.md#E20)). Here they are built untrained, to
# count bytes; no lab trains them at this size (the command line can: lab 03's last section). No lab trains
# the paper's 50M and 180M models either ([E22](../docs/claims.md#E22)): their sizes enter the course only in
# lab 00's arithmetic of state bytes. The `echo` of labs 00 and 02-05 is the smaller lab-scale model
# (`d = 64`, `r = 32`, `K = 1`); the course guide's [model table](../docs/course.md#the-models) lists both.
#
# Below, `stream_len` tokens (the cell prints how many) are streamed one at a time through each (untrained:
# this is about memory, not answers), and the figure updates live with the bytes each model's inference
# state holds, counted from its tensors.

# %%
presets = ["synth1m-ssm", "synth1m-ssm+attn", "synth1m-echo", "synth1m-attn"]
paper_params = {"synth1m-ssm": "1.11M", "synth1m-ssm+attn": "998K", "synth1m-echo": "982K",
                "synth1m-attn": "-"}  # the paper's SSM, SSM+Attn, SSM+SKA, §4.1 (claims.md#E20)
models = {p: build(p, vocab_size=128).eval() for p in presets}
for p, m in models.items():
    cfg = m.config  # below: the paper's count, §4.1 (claims.md#E20)
    print(f"{p:<17} {count_parameters(m):>9,d} parameters (the paper's: {paper_params[p]:>5})   d={cfg.d_model}   "
          f"layout {m.layout}" + (f"   SKA r={cfg.ska_rank}" if "ska" in m.layout else ""))

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
print(f"streamed {stream_len:,d} tokens through {len(presets)} models in {time.perf_counter() - t0:.1f} s")

# %%
final = {p: curves[p][1][-1] for p in presets}
print(f"after {stream_len:,d} tokens:", {p: f"{b:,d} B" for p, b in final.items()})
assert curves["synth1m-ssm"][1][0] == final["synth1m-ssm"] and curves["synth1m-echo"][1][0] == final["synth1m-echo"], "fixed-size states"
assert final["synth1m-attn"] == 4 * 2 * 128 * 4 * stream_len, "4 layers x (K and V) x d x float32 per token"
assert final["synth1m-ssm+attn"] > final["synth1m-echo"]

# %% [markdown]
# ## 6. Where the KV cache overtakes a fixed state
#
# Move the slider: each model is *prefilled* with that many tokens (the chunked forward pass) and its state
# measured. Per token, `synth1m-attn` should add `4 layers x 2 (K and V) x 128 x 4 B = 4 KiB` while
# `synth1m-echo`'s state stays put; the cell after the figure measures both.

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
assert 20 <= crossover <= 30, "the summary below says: after about 25 tokens"
assert bars.layout.title.text == f"state bytes after {context.value:,d} tokens", "the figure follows the slider"

# %% [markdown]
# ## Summary
#
# * Mamba-2's recurrence and its quadratic "attention with a decaying mask" are the same computation; the
#   chunked SSD algorithm you wrote mixes the two, quadratic inside chunks and recurrent across them: its
#   chunk length trades the loop's `T` steps in a row against the quadratic form's `T^2` work (section 3
#   timed both ends and the range between).
# * Attention's memory grows with the context (4 KiB per token for `synth1m-attn`); Mamba-2's and Echo's do
#   not. After about 25 tokens (section 6) the 4-layer attention model already holds more state than Echo.
#   Per-token decode latency follows the same pattern: `python benchmarks/decode.py` (numbers in
#   `docs/results.md`).
# * A fixed state must *choose* what to keep. Lab 03 measures what that costs on recall as the gap between
#   a fact and its question grows.


# %% [markdown]
# ## Your exercises
#
# Which of this lab's exercises pass. An exercise that is not done yet did not stop the lab: the cells after
# it used the reference solution. Fix one, run its cell again, then this one.

# %%
_ = labs.report("lab01")
