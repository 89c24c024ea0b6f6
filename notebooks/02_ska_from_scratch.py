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
# # Lab 02: Build Spectral Koopman Attention yourself
#
# **Echo** (Sridhar & Johansen 2026, arXiv 2605.06997) adds *Spectral Koopman Attention* (SKA) to a
# state-space model. SKA recalls facts without a KV cache: it keeps three small matrices of statistics of
# the key/value history, fits a linear model to them in closed form, and reads a query out through it.
#
# In this lab you write SKA from its equations, one function per equation, each checked against the
# library's reference on fresh random inputs. Then you assemble your functions into a layer, drop it into a
# small Mamba-2 model, train it, and watch it learn to recall.
#
# | section | equation | your function |
# |---|---|---|
# | 1 | `G = sum_t beta_t k_t k_t^T`, `M = sum_t beta_t k_t k_{t-1}^T`, `C = sum_t beta_t v_t k_t^T` | `ska_statistics` |
# | 2 | `y = C G^-1 q` (ridge regression) | `ridge_readout` |
# | 3 | `G = L L^T`, `A_w = L^-1 M L^-T` (the whitened Koopman operator) | `whitened_operator` |
# | 4 | `y = eta s^K C G^-1 L A_w^K L^-1 q`, `s = gamma / max(1, sigma_max(A_w))` | `power_filter` |
# | 5 | chunk `c` reads `X_0 + sum_{c' < c} X_{c'}` (chunk mode) | `exclusive_prefix_sum` |
# | 6-7 | your layer, trained in a Mamba-2 hybrid | |
#
# **Notation** (the same in every lab; `echo_tutor/ska/README.md` has the full table):
#
# | symbol | meaning | shape |
# |---|---|---|
# | `T`, `H` | tokens, heads | |
# | `r` | rank: the width of keys and queries per head | |
# | `P` | the width of values per head | |
# | `k_t`, `q_t`, `v_t` | key, query, value of token `t` | `[r]`, `[r]`, `[P]` |
# | `beta_t` | write gate in (0, 1): how strongly token `t` writes (learned) | scalar |
# | `eps` | the ridge: `G` starts at `eps I` | scalar |
# | `G`, `M`, `C` | the statistics: Gram, lag-one moment, value-key moment | `[r, r]`, `[r, r]`, `[P, r]` |
# | `A = M G^-1` | the Koopman operator: the fitted one-step key predictor | `[r, r]` |
# | `L`, `A_w` | Cholesky factor of `G`; the whitened operator `L^-1 M L^-T` | `[r, r]` |
# | `K` | power order: how many times the query is pushed through `A` | integer |
# | `gamma`, `eta` | learned gain of the spectral scale, learned output scale | scalars per head |
# | `s` | spectral scale `gamma / max(1, sigma_max(A_w))`, `sigma_max` the largest singular value | scalar |
# | `S` | chunk size (chunk mode) | |
#
# *Your turn* cells ask you to write one function. A checker tests it on fresh random inputs and says what is
# wrong; it refuses a call to the library function that computes the answer. An exercise you have not done
# never stops the lab: until it passes, later cells use the reference solution, and the last cell lists which
# exercises pass. Instructors: `ECHO_TUTOR_SOLUTIONS=1` fills in the solutions.

# %%
import math
import time

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from IPython.display import display
from plotly.subplots import make_subplots

from echo_tutor import labs
from echo_tutor.labs import lab02
from echo_tutor.models import LAB_RECIPE, build, state_nbytes
from echo_tutor.pretrained import info, results
from echo_tutor.ska import SKAState, ska_chunked, ska_recurrent
from echo_tutor.tasks import make_task
from echo_tutor.train import evaluate, train

FAST = labs.FAST  # small sizes on a laptop / in CI; full sizes on a GPU machine (`ECHO_TUTOR_FAST=0 make lab`)
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not FAST else "cpu")
torch.set_default_dtype(torch.float64)  # exact arithmetic for the equations; the training in section 7 is float32
gen = torch.Generator().manual_seed(0)
print(f"FAST={FAST}  solutions={'on' if labs.SOLUTIONS else 'off'}  device for training: {DEVICE}  torch {torch.__version__}")

# %% [markdown]
# ## 1. What SKA remembers: three sums
#
# Each head projects token `t` to a key `k_t`, a query `q_t`, a value `v_t` and a write gate `beta_t`. SKA's
# whole memory of the past is three sums over the tokens it has read (the paper's *sufficient statistics*):
#
# $$G = \varepsilon I + \sum_t \beta_t\, k_t k_t^\top, \qquad
#   M = \sum_t \beta_t\, k_t k_{t-1}^\top, \qquad
#   C = \sum_t \beta_t\, v_t k_t^\top .$$
#
# `G` is the Gram matrix of the keys (plus the ridge `eps I`), `C` pairs each value with its key, and `M`, the
# *lag-one moment*, pairs each key with the key **before** it. Because they are sums, a block of tokens just
# adds its own sums to the state; the only thing a block needs from before it is the previous key (for `M`'s
# first term). So the state is `G, M, C` and the last key: `2 r^2 + P r + r` numbers per head, at any length.
#
# ### Your turn 1: `ska_statistics`
# Write `ska_statistics(k [..., T, r], v [..., T, P], beta [..., T], k_prev [..., r]) -> (G, M, C)`: the sums a
# block of `T` tokens adds (without `eps I`; the state adds it once). `k_prev` is the key just before the
# block (zeros at the start of a sequence), so `M`'s first term is `beta_0 k_0 k_prev^T`. Leading dims `[...]`
# (heads, chunks) are batch dims: use `@` and `.mT`, not loops. Section 6 calls your function on every chunk.

# %%
def ska_statistics(k, v, beta, k_prev):
    """k [..., T, r], v [..., T, P], beta [..., T], k_prev [..., r] -> G [..., r, r], M [..., r, r], C [..., P, r]"""
    # YOUR CODE HERE
    raise NotImplementedError


ska_statistics = labs.exercise(ska_statistics, "lab02")
lab02.check_ska_statistics(ska_statistics)

# %% [markdown]
# Streaming in action: feed 40 tokens as two blocks, carrying the last key of the first block into the
# second, and compare with the sums over all 40 at once. Then the state's size, measured on the library's
# `SKAState` after 40 and after 4,000 tokens.

# %%
T, r, P = 40, 8, 4
k_seq = torch.nn.functional.normalize(torch.randn(T, r, generator=gen), dim=-1)
v_seq = torch.randn(T, P, generator=gen)
b_seq = torch.rand(T, generator=gen)
start = torch.zeros(r)
once = ska_statistics(k_seq, v_seq, b_seq, start)
first = ska_statistics(k_seq[:25], v_seq[:25], b_seq[:25], start)
second = ska_statistics(k_seq[25:], v_seq[25:], b_seq[25:], k_seq[24])  # the only thing carried: the last key
for name, a, b1, b2 in zip("GMC", once, first, second):
    print(f"{name}: max |all at once - (block 1 + block 2)| = {(a - b1 - b2).abs().max():.1e}")
    assert torch.allclose(a, b1 + b2, atol=1e-12)
for n_tok in (40, 4000):
    x = torch.randn(1, n_tok, 1, r, generator=gen)
    _, st = ska_recurrent(x, x, torch.randn(1, n_tok, 1, P, generator=gen)) if n_tok == 40 else \
        ska_chunked(x, x, torch.randn(1, n_tok, 1, P, generator=gen), mode="chunk", chunk_size=500)
    print(f"after {n_tok:>5} tokens the state holds {st.nbytes} bytes (float64: (2 r^2 + P r + r) x 8 = "
          f"{(2 * r * r + P * r + r) * 8})")
    assert st.nbytes == (2 * r * r + P * r + r) * 8

# %% [markdown]
# ## 2. Reading a value out: ridge regression
#
# Which linear map `W` (`P x r`) sends every stored key to its value? The ridge-regression answer, with the
# penalty `eps ||W||^2`, is `W = C G^-1`, so a query reads out
#
# $$y = C\, G^{-1} q .$$
#
# This is SKA with `K = 0`: exact causal ridge regression, the **mesa layer** (von Oswald et al. 2023, arXiv
# 2309.05858; MesaNet, arXiv 2506.05233, adds forgetting). **Linear attention** reads `C q` instead: one
# gradient step from zero on the same regression, without the `G^-1` that undoes the keys' overlaps.
#
# ### Your turn 2: `ridge_readout`
# Write `ridge_readout(G [..., r, r], C [..., P, r], q [..., n, r]) -> y [..., n, P]`: row `i` of `y` is
# `C G^-1 q_i`. Use `torch.linalg.solve(G, ...)` rather than forming `G^-1`.

# %%
def ridge_readout(G, C, q):
    """G [..., r, r], C [..., P, r], q [..., n, r] (one query per row) -> y [..., n, P]"""
    # YOUR CODE HERE
    raise NotImplementedError


ridge_readout = labs.exercise(ridge_readout, "lab02")
lab02.check_ridge_readout(ridge_readout)

# %% [markdown]
# What `G^-1` buys: store `n` random unit keys with random unit values, query with every stored key, and
# decode the answer as the nearest stored value. Ridge (your function) against linear attention, as `n` passes
# the rank `r`.

# %%
def recall_vs_pairs(r, n_values, trials, eps=1e-4, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"linear attention (C q)": [], "ridge (C G^-1 q)": []}
    for n in n_values:
        k = torch.nn.functional.normalize(torch.randn(trials, n, r, generator=g), dim=-1)
        v = torch.nn.functional.normalize(torch.randn(trials, n, r, generator=g), dim=-1)
        G, _, C = ska_statistics(k, v, torch.ones(trials, n), torch.zeros(trials, r))
        G = G + eps * torch.eye(r)
        for name, y in (("linear attention (C q)", (C @ k.mT).mT), ("ridge (C G^-1 q)", ridge_readout(G, C, k))):
            pred = (y @ v.mT).argmax(-1)  # nearest stored value
            out[name].append((pred == torch.arange(n)).double().mean().item())
    return out


r_rec = 16 if FAST else 64
n_values = list(range(4, 3 * r_rec + 1, 2 if FAST else 4))
curves = recall_vs_pairs(r_rec, n_values, trials=24 if FAST else 128)
fig = go.Figure([go.Scatter(x=n_values, y=acc, mode="lines+markers", name=name) for name, acc in curves.items()])
fig.add_vline(x=r_rec, line_dash="dash", annotation_text=f"n = r = {r_rec}")
fig.update_layout(height=360, xaxis_title="stored pairs n", yaxis_title="recall accuracy", yaxis_range=[0, 1.05],
                  title=f"Recall from the same statistics (r = {r_rec}, eps = 1e-4)")
fig.show()
first_loss = {name: next((n for n, a in zip(n_values, acc) if a < 1), None) for name, acc in curves.items()}
print("first n with a lost pair:", first_loss)
assert first_loss["linear attention (C q)"] < r_rec <= first_loss["ridge (C G^-1 q)"]
assert curves["ridge (C G^-1 q)"][-1] < 1, "past r the keys cannot all be independent: ridge loses pairs too"

# %% [markdown]
# Ridge recalls every pair while `n <= r` (the keys are then linearly independent); linear attention loses
# pairs earlier, to the overlaps between keys. Past `r`, no linear readout can keep them all: capacity is set
# by the rank.
#
# ## 3. The Koopman operator, whitened
#
# `M` pairs each key with the one before it, so `A = M G^-1` is the ridge fit of the one-step map
# `k_t ~ A k_{t-1}`: fitting a linear operator to consecutive snapshots is **dynamic mode decomposition**
# (DMD), the standard estimate of a system's *Koopman operator*; its eigenvalues say which rotations and
# decays the key sequence follows. The paper works with a similar, better-conditioned form: factor
# `G = L L^T` (Cholesky) and *whiten*,
#
# $$A_w = L^{-1} M L^{-\top}, \qquad A = L A_w L^{-1},$$
#
# so `A_w` has `A`'s eigenvalues, and `L A_w^K L^-1 = A^K`.
#
# ### Your turn 3: `whitened_operator`
# Write `whitened_operator(G [..., r, r], M [..., r, r]) -> (L, A_w)`. Use `torch.linalg.cholesky` and
# `torch.linalg.solve_triangular` (no explicit inverse).

# %%
def whitened_operator(G, M):
    """G, M [..., r, r] -> L (lower triangular, L L^T = G), A_w = L^-1 M L^-T"""
    # YOUR CODE HERE
    raise NotImplementedError


whitened_operator = labs.exercise(whitened_operator, "lab02")
lab02.check_whitened_operator(whitened_operator)

# %% [markdown]
# A key sequence that rotates in a plane by `theta = 0.4` per step and shrinks by `rho = 0.98` per step. The
# eigenvalues of your `A_w`, fitted from `G` and `M` alone, recover the angle and, up to the last key's share
# of `G` (it fades as `1/T`), the decay.

# %%
theta, rho = 0.4, 0.98
R = rho * torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
traj = [torch.tensor([1.0, 0.0])]
for _ in range(59):
    traj.append(R @ traj[-1])
traj = torch.stack(traj)  # [60, 2]
G2, M2, _ = ska_statistics(traj, traj, torch.ones(60), torch.zeros(2))
_, A_w2 = whitened_operator(G2 + 1e-9 * torch.eye(2), M2)
ev = torch.linalg.eigvals(A_w2)
print("eigenvalues of A_w:", ev.numpy().round(4), "  |lambda| =", ev.abs().numpy().round(4),
      "  angle =", ev.angle().abs().numpy().round(4), f"  (true: rho = {rho}, theta = {theta})")
assert abs(abs(ev[0].angle()) - theta) < 0.01 and torch.allclose(ev.abs(), torch.full((2,), rho), atol=0.01)

# %% [markdown]
# ## 4. The power filter
#
# SKA's output pushes the query `K` steps along the fitted key dynamics before the ridge readout:
#
# $$y = \eta\, s^K\, C G^{-1}\, L A_w^K L^{-1} q \;=\; \eta\, s^K\, C G^{-1} (M G^{-1})^K q,
#   \qquad s = \frac{\gamma}{\max(1, \sigma_{\max}(A_w))}.$$
#
# `sigma_max(A_w)` is the largest singular value of `A_w`: dividing by it (when it exceeds 1) keeps `A_w^K`
# from blowing up, and `gamma` (learned, clamped to [0.5, 1.5] in the layer) sets the scale back. `eta` is a
# learned output scale. The paper estimates `sigma_max` with a few power iterations and stops its gradient; here
# compute it exactly, with `torch.linalg.matrix_norm(A_w.detach(), ord=2)`. `K = 0` gives back section 2's
# ridge readout (times `eta`).
#
# ### Your turn 4: `power_filter`
# Write `power_filter(G, M, C, q, K, gamma, eta) -> y [..., n, P]` (shapes as above; `K` an int, `gamma` and
# `eta` floats). Build on your `whitened_operator` and `ridge_readout`; the checker also compares gradients.

# %%
def power_filter(G, M, C, q, K, gamma, eta):
    """G, M [..., r, r], C [..., P, r], q [..., n, r], K int, gamma, eta floats -> y [..., n, P]"""
    # YOUR CODE HERE
    raise NotImplementedError


power_filter = labs.exercise(power_filter, "lab02")
lab02.check_power_filter(power_filter)

# %% [markdown]
# **What does `K` do?** Store 12 distinct tokens in a row, each token's embedding serving as its key and its
# value. Query with the key of position `i`. `A = M G^-1` maps a key onto the key that followed it.

# %%
guess = labs.Prediction("With K = 2, the query for the key at position i reads back the value stored at which "
                        "position?", ["i - 1", "i", "i + 1", "i + 2"])
guess.show()

# %%
T_tok, r_tok = 12, 32
emb = torch.nn.functional.normalize(torch.randn(T_tok, r_tok, generator=gen), dim=-1)
G_t, M_t, C_t = ska_statistics(emb, emb, torch.ones(T_tok), torch.zeros(r_tok))
G_t = G_t + 1e-6 * torch.eye(r_tok)
fig = make_subplots(rows=1, cols=3, subplot_titles=[f"K = {K}" for K in (0, 1, 2)], horizontal_spacing=0.06)
shifts = {}
for K in (0, 1, 2):
    sim = power_filter(G_t, M_t, C_t, emb, K, 1.0, 1.0) @ emb.T  # [query i, stored j]
    shifts[K] = (sim.argmax(-1) - torch.arange(T_tok))[: T_tok - K]
    fig.add_trace(go.Heatmap(z=sim.numpy(), coloraxis="coloraxis"), row=1, col=K + 1)
fig.update_layout(height=330, coloraxis=dict(colorscale="RdBu", cmid=0), title="readout(query = key i) . value j")
fig.update_xaxes(title_text="stored position j")
fig.update_yaxes(title_text="query position i", col=1)
fig.update_yaxes(autorange="reversed")
fig.show()
print({K: sorted(set(s.tolist())) for K, s in shifts.items()}, "<- the offset j - i of the best match, per K")
guess.reveal("i + 2")
for K in (0, 1, 2):
    assert (shifts[K] == K).all(), f"K={K}: query i should read the value at i+{K}"

# %% [markdown]
# `K = 0` returns what was stored with the key, `K = 1` what came right after it, `K = 2` two steps later. In
# a prompt where each value token follows its key, `K = 1` carries a query onto the bound value: that is why
# the lab-scale `echo` model of labs 03-05 uses `K = 1` (the paper uses `K = 2`; the authors' own later
# configurations pin `K = 1`). Explore: move the sliders (rank, ridge, power order, stored pairs); the
# heat-map is your `power_filter`'s readout.

# %%
def explore(rank=16, log10_eps=-4.0, K=0, pairs=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = torch.nn.functional.normalize(torch.randn(pairs, rank, generator=g, dtype=torch.float64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(pairs, rank, generator=g, dtype=torch.float64), dim=-1)
    G, M, C = ska_statistics(k, v, torch.ones(pairs, dtype=torch.float64), torch.zeros(rank, dtype=torch.float64))
    sim = power_filter(G + 10.0**log10_eps * torch.eye(rank, dtype=torch.float64), M, C, k, K, 1.0, 1.0) @ v.T
    pred = sim.argmax(-1)
    own = (pred == torch.arange(pairs)).double().mean().item()
    shifted = (pred[: pairs - K] == torch.arange(K, pairs)).double().mean().item() if K < pairs else float("nan")
    return sim, own, shifted


explorer = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="RdBu", zmid=0, colorbar_title="readout . value"))
explorer.update_layout(height=420, xaxis_title="stored value j", yaxis_title="query i", yaxis_autorange="reversed")
sliders = dict(
    rank=widgets.IntSlider(value=16, min=2, max=64, description="rank r"),
    log10_eps=widgets.FloatSlider(value=-4, min=-8, max=2, step=0.5, description="log10 eps"),
    K=widgets.IntSlider(value=0, min=0, max=4, description="power K"),
    pairs=widgets.IntSlider(value=12, min=2, max=96, description="pairs n"),
)


def redraw(**kw):
    sim, own, shifted = explore(**kw)
    with explorer.batch_update():
        explorer.data[0].z = sim.numpy()
        explorer.layout.title = (f"r={kw['rank']}, eps=1e{kw['log10_eps']:g}, K={kw['K']}, n={kw['pairs']}: "
                                 f"own-value accuracy {own:.2f}, value-at-i+K accuracy {shifted:.2f}")


out = widgets.interactive_output(redraw, sliders)
display(widgets.VBox([widgets.HBox(list(sliders.values())[:2]), widgets.HBox(list(sliders.values())[2:]), explorer,
                      out]))

# %%
# Set the sliders from code (each change redraws through the observer), so figure and sliders agree after Run All.
for key, value in dict(rank=8, log10_eps=-4, K=1, pairs=6).items():
    sliders[key].value = value
sim, own, shifted = explore(**{key: w.value for key, w in sliders.items()})
print(f"sliders at r=8, K=1, n=6: own-value accuracy {own:.2f}, value-at-i+1 accuracy {shifted:.2f}")
assert own < 0.5 and shifted == 1.0 and explorer.data[0].z.shape == (6, 6)

# %% [markdown]
# ## 5. Chunk mode: the exclusive prefix
#
# Reading every token out of its own statistics (**token mode**) needs a factorisation of `G` per token.
# Training uses **chunk mode**: cut the sequence into chunks of `S` tokens, compute each chunk's sums (your
# section 1 function), and let every query of chunk `c` read one operator fitted on the chunks **before**
# `c`:
#
# $$X^{(c)} = X_0 + \sum_{c' < c} \Delta X_{c'} \qquad (X = G, M, C),$$
#
# an *exclusive* prefix sum over chunks, `X_0` being what the state held before this call (`eps I` for `G`,
# zeros for `M` and `C` at the start). One factorisation per chunk serves its `S` queries. The price: a query
# reads nothing of its own chunk, and chunk 0 of a sequence outputs zeros. Decoding (`step`, one token at a
# time) has no such blind spot.
#
# ### Your turn 5: `exclusive_prefix_sum`
# Write `exclusive_prefix_sum(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix [..., nc, a, b], total [..., a, b])`:
# `prefix[c] = X0 + sum_{c' < c} Xc[c']`, and `total = X0 + sum_c Xc[c]` (the state after the last chunk).

# %%
def exclusive_prefix_sum(X0, Xc):
    """X0 [..., a, b], Xc [..., nc, a, b] -> prefix [..., nc, a, b], total [..., a, b]"""
    # YOUR CODE HERE
    raise NotImplementedError


exclusive_prefix_sum = labs.exercise(exclusive_prefix_sum, "lab02")
lab02.check_exclusive_prefix_sum(exclusive_prefix_sum)

# %% [markdown]
# What a position can read, for 12 stored pairs (unit keys, orthonormal values, ridge readout, `S = 4`): row
# `t`, column `j` is how much of pair `j` position `t` reads back when it queries key `j`.

# %%
T_c, S_c, r_c = 12, 4, 16
k_c = torch.nn.functional.normalize(torch.randn(T_c, r_c, generator=gen), dim=-1)
v_c = torch.linalg.qr(torch.randn(r_c, T_c, generator=gen))[0].T  # [T_c, r_c], orthonormal rows
q_all = k_c[:, None, None, :].expand(T_c, T_c, 1, r_c)  # batch row j asks every position t for key j
k_all, v_all = k_c[None, :, None].expand(T_c, -1, -1, -1), v_c[None, :, None].expand(T_c, -1, -1, -1)
seen = {mode: torch.einsum("jtp,jp->tj", ska_chunked(q_all, k_all, v_all, power_steps=0, eps=1e-6, mode=mode,
                                                     chunk_size=S_c)[0][:, :, 0], v_c) for mode in ("token", "chunk")}
fig = make_subplots(rows=1, cols=2, subplot_titles=["token mode (and decoding)", f"chunk mode, S = {S_c}"])
for i, z in enumerate(seen.values()):
    fig.add_trace(go.Heatmap(z=z.numpy(), zmin=0, zmax=1, coloraxis="coloraxis"), row=1, col=i + 1)
fig.update_layout(height=320, coloraxis=dict(colorscale="Blues", cmin=0, cmax=1), title="readout at position t of pair j")
fig.update_xaxes(title_text="stored pair j")
fig.update_yaxes(title_text="query position t", col=1)
fig.update_yaxes(autorange="reversed")
fig.show()
t_idx, j_idx = torch.arange(T_c)[:, None], torch.arange(T_c)[None, :]
assert ((seen["token"] > 0.99) == (j_idx <= t_idx)).all() and ((seen["chunk"] > 0.99) == (j_idx // S_c < t_idx // S_c)).all()
print("chunk mode: pairs each position recalls:", (seen["chunk"] > 0.99).sum(1).tolist())

# %% [markdown]
# ## 6. Your layer
#
# The layer below is SKA in chunk mode, built from your five functions (they are the ones it calls; until an
# exercise passes, its reference solution stands in). Per head: `k_t, q_t` are L2-normalised projections of
# the input (width `r`), `v_t` a projection of width `P`, `beta_t = sigmoid(w_beta . x_t + b_beta)`; the output
# projection `W_O` starts at zero, so a fresh layer adds nothing to the model. Read it next to the equations.

# %%
class MySKA(torch.nn.Module):
    """SKA in chunk mode from the lab's functions. forward(x [B, T, d]) -> (y [B, T, d], SKAState)."""

    def __init__(self, d_model, n_heads, rank, power_steps=1, eps=1e-3, chunk_size=64):
        super().__init__()
        self.H, self.r, self.P, self.K, self.eps, self.S = n_heads, rank, d_model // n_heads, power_steps, eps, chunk_size
        self.w_q = torch.nn.Linear(d_model, n_heads * rank, bias=False)
        self.w_k = torch.nn.Linear(d_model, n_heads * rank, bias=False)
        self.w_v = torch.nn.Linear(d_model, n_heads * self.P, bias=False)
        self.w_o = torch.nn.Linear(n_heads * self.P, d_model, bias=False)
        self.gate = torch.nn.Linear(d_model, n_heads)
        self.gamma = torch.nn.Parameter(torch.full((n_heads,), 0.7))  # clamped to [0.5, 1.5] when used
        self.eta = torch.nn.Parameter(torch.full((n_heads,), 1.5))
        for w in (self.w_q, self.w_k):
            torch.nn.init.orthogonal_(w.weight)
        torch.nn.init.xavier_uniform_(self.w_v.weight)
        for t in (self.w_o.weight, self.gate.weight, self.gate.bias):
            torch.nn.init.zeros_(t)

    def forward(self, x, state=None):
        B, T, _ = x.shape
        H, r, P, S = self.H, self.r, self.P, self.S
        heads = lambda t, w: t.view(B, T, H, w).transpose(1, 2)  # noqa: E731   [B, H, T, w]
        q = torch.nn.functional.normalize(heads(self.w_q(x), r), dim=-1)
        k = torch.nn.functional.normalize(heads(self.w_k(x), r), dim=-1)
        v = heads(self.w_v(x), P)
        beta = torch.sigmoid(self.gate(x)).transpose(1, 2)  # [B, H, T]
        pad = (-T) % S  # whole chunks; padded tokens write nothing (beta = 0) and are cut off the output
        k, q, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (k, q, v))
        beta = torch.nn.functional.pad(beta, (0, pad))
        nc = (T + pad) // S
        chunk = lambda t: t.reshape(B, H, nc, S, *t.shape[3:])  # noqa: E731   [B, H, nc, S, .]
        kc, qc, vc, bc = chunk(k), chunk(q), chunk(v), chunk(beta)
        # (1) each chunk's sums; a chunk's first key pairs with the last key of the chunk before it
        k_prev = torch.cat([torch.zeros_like(kc[:, :, :1, -1]), kc[:, :, :-1, -1]], dim=2)  # [B, H, nc, r]
        Gc, Mc, Cc = ska_statistics(kc, vc, bc, k_prev)  # [B, H, nc, r, r], [.., r, r], [.., P, r]
        # (5) the exclusive prefix: chunk c reads eps I + chunks before c; the totals are the state after the call
        eye = self.eps * torch.eye(r, dtype=x.dtype, device=x.device).expand(B, H, r, r)
        Gx, G_end = exclusive_prefix_sum(eye, Gc)
        Mx, M_end = exclusive_prefix_sum(torch.zeros_like(eye), Mc)
        Cx, C_end = exclusive_prefix_sum(torch.zeros(B, H, P, r, dtype=x.dtype, device=x.device), Cc)
        # (4) every query of chunk c through the power filter of chunk c's operator; with gamma = 1 it returns
        # s^K = 1 / max(1, sigma_max)^K, and the learned per-head gamma^K and eta multiply afterwards
        y = power_filter(Gx, Mx, Cx, qc, self.K, 1.0, 1.0)  # [B, H, nc, S, P]
        gamma = self.gamma.clamp(0.5, 1.5)[None, :, None, None, None]
        y = y * self.eta[None, :, None, None, None] * gamma**self.K
        y = y.reshape(B, H, nc * S, P)[:, :, :T].transpose(1, 2).reshape(B, T, H * P)
        state = SKAState(G_end, M_end, C_end, k[:, :, T - 1], count=T)  # what decoding would continue from
        return self.w_o(y), state


# %% [markdown]
# The per-head `gamma` and `eta` multiply after your `power_filter` (called with `gamma = eta = 1`). The layer
# returns the statistics after the last token as its state: what a decoder would continue from. Is it the same
# layer as the library's? Give the library's `SpectralKoopmanAttention` (chunk mode, `K = 1`)
# and yours the same weights, and compare on a random sequence of 150 tokens (float64, the exact spectral
# norm on both sides).

# %%
from echo_tutor.ska import SpectralKoopmanAttention  # noqa: E402  (the reference to compare with)

d_demo, H_demo, r_demo = 32, 2, 8
ref = SpectralKoopmanAttention(d_demo, H_demo, r_demo, power_steps=1, chunk_size=16).double()
mine = MySKA(d_demo, H_demo, r_demo, power_steps=1, chunk_size=16).double()
mine.load_state_dict(ref.state_dict())
with torch.no_grad():
    for p in (ref.w_o.weight, mine.w_o.weight, ref.gate.weight, mine.gate.weight):
        p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.3)
x_demo = torch.randn(2, 150, d_demo, generator=gen)
qr, kr, vr, br = ref.project(x_demo)
y_ref, _ = ska_chunked(qr, kr, vr, br, power_steps=1, eps=ref.eps, eta=ref.eta, gamma=ref._gamma(), spectral_norm=True,
                       spectral_iters=None, mode="chunk", chunk_size=16)
y_ref = ref.w_o(y_ref.reshape(2, 150, -1))
y_mine, _ = mine(x_demo)
print(f"max |your layer - the reference| = {(y_mine - y_ref).abs().max():.2e}  (output scale {y_ref.abs().max():.2f})")
assert torch.allclose(y_mine, y_ref, atol=1e-8)

# %% [markdown]
# ## 7. Train it: watch recall emerge
#
# Now the real test. Take the lab-scale `echo` model (two blocks: a Mamba-2 block, then the SKA block; d = 64,
# 2 heads, r = 32, K = 1, vocabulary 128; the model table in `docs/course.md`), **replace its SKA block with
# your layer**, and train it on MQAR-gap: `n` key-value pairs, a gap of distractor tokens, then every key
# again as a question, the label being its value (values are not shown after the questions, so the model
# must recall them; chance is about `2/128`). Your layer starts from the same initial weights as the
# library's fresh layer, so the two curves below start from the same point. FAST trains 400 steps on 4-8 pairs
# with gaps of 64-256 tokens (shorter sequences than the shipped checkpoints' recipe: about a minute on one
# laptop core); the gray curve is the library's layer trained exactly the same way. FULL trains 1,500 steps on
# the shipped recipe's mixture (4-16 pairs, gaps 0-1024), beside the shipped `echo` checkpoint's curve.

# %%
guess_steps = labs.Prediction("Training starts at chance (about 0.016). At about which step will the eval accuracy "
                              "first pass 0.5?", ["~50", "~200", "~400", "not within the run"])
guess_steps.show()

# %%
torch.set_default_dtype(torch.float32)
torch.manual_seed(0)
model = build("echo", scale="lab")
mine_layer = MySKA(64, 2, 32, power_steps=1, eps=model.blocks[1].mixer.eps, chunk_size=64)
mine_layer.load_state_dict(model.blocks[1].mixer.state_dict())  # the library's fresh initial weights: a fair start
model.blocks[1].mixer = mine_layer
if FAST:
    task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=[4, 8], gap=[64, 128, 256], show_values=False)
    steps, eval_every = 400, 25
    reference = results("build_ska")  # the library's layer, trained the same way (scripts/build_ska_reference.py)
    ref_label = "the library's SKA layer, same recipe and start (shipped run)"
else:
    task = make_task(**LAB_RECIPE["task"])
    steps, eval_every = 1500, 50
    reference = info("echo")  # the shipped echo checkpoint's training on this recipe
    ref_label = "the shipped lab-scale echo (library layer), same recipe"
curve = go.FigureWidget([go.Scatter(x=[e["step"] for e in reference["evals"] if e["step"] <= steps],
                                    y=[e["eval_acc"] for e in reference["evals"] if e["step"] <= steps],
                                    mode="lines", line=dict(dash="dot", color="gray"), name=ref_label),
                         go.Scatter(x=[], y=[], mode="lines+markers", line=dict(color="#2ca02c"), name="your layer")])
curve.update_layout(height=340, xaxis_title="training step", yaxis_title="eval accuracy (128 fresh examples)",
                    yaxis_range=[0, 1.05], xaxis_range=[0, steps], legend=dict(orientation="h", y=-0.3),
                    title="Your SKA layer in a Mamba-2 hybrid, learning MQAR-gap")
curve.add_hline(y=2 / 128, line_dash="dot", annotation_text="chance")
display(curve)


def on_eval(rec):
    with curve.batch_update():
        curve.data[1].x = (*curve.data[1].x, rec["step"])
        curve.data[1].y = (*curve.data[1].y, rec["eval_acc"])


t0 = time.perf_counter()
res = train(model, task, steps=steps, batch_size=16, lr=3e-3, eval_every=eval_every, eval_examples=128,
            device=DEVICE, progress=True, callback=on_eval)
print(f"trained {res.steps_done} steps in {time.perf_counter() - t0:.0f} s on {DEVICE}; final eval accuracy "
      f"{res.final_eval:.3f}")
passed_half = next((e["step"] for e in res.evals if e["eval_acc"] > 0.5), None)
answer = "not within the run" if passed_half is None else min(["~50", "~200", "~400"], key=lambda a: abs(int(a[1:]) - passed_half))
print(f"accuracy first passed 0.5 at step {passed_half}")
guess_steps.reveal(answer)
assert res.final_eval > 0.9, "your layer learned to recall"

# %% [markdown]
# Accuracy sits at chance for the first hundred steps or so, then climbs within about a hundred more: the
# model first has to discover that the SKA block can carry a key onto its value. Your curve follows the
# library's (same start, same batches; it differs only by rounding). Now test it the way lab 03 tests every
# model, at gaps it never saw in training (8 pairs; FAST: 64 fresh examples a point, FULL: 256).

# %%
model = model.cpu().eval()
gaps_test = [64, 1024, 4096] if FAST else [64, 256, 1024, 4096, 8192]
n_test = 64 if FAST else 256
acc_gap = {}
for g in gaps_test:
    t = make_task("mqar_gap", vocab_size=128, num_kv_pairs=8, gap=g, show_values=False)
    acc_gap[g] = evaluate(model, t, n_test, batch_size=16)
print("8 pairs, accuracy by gap:", {g: round(a, 3) for g, a in acc_gap.items()})
state_bytes = {g: state_nbytes(model(torch.zeros(1, 32 + g, dtype=torch.long))[1]) for g in (64, gaps_test[-1])}
print(f"the model's inference state (Mamba-2 block + your SKA block's G, M, C, last key) after the prompt: "
      f"{state_bytes} bytes by gap: the same at any gap, no KV cache")
assert len(set(state_bytes.values())) == 1
assert min(acc_gap.values()) > 0.8, "recall holds at gaps far beyond the trained ones"

# %% [markdown]
# ## 8. What you built
#
# * SKA's memory is three sums, `G, M, C` (and the last key): a block of tokens adds its own sums, so the
#   state has the same size at any length (section 1).
# * `C G^-1 q` is ridge regression (`K = 0`, the mesa layer): exact for up to `r` independent keys, where
#   linear attention `C q` already confuses them (section 2).
# * `A = M G^-1` is a DMD / Koopman fit of the key sequence; whitening with `G = L L^T` gives `A_w` with the
#   same eigenvalues (section 3). The power filter pushes the query `K` steps along it: `K = 1` reads what
#   followed the key (section 4).
# * Chunk mode reads the chunks before a query's own, through an exclusive prefix sum (section 5).
# * From these five functions you built a layer equal to the library's (section 6) and trained it: it learned
#   to recall, and kept recalling far past the gaps it was trained on (section 7).
#
# Next: lab 03, the memory cliff: trained Mamba-2, attention and Echo models as the gap between a fact and
# its question grows.

# %% [markdown]
# ## Your exercises
#
# Which of this lab's exercises pass. An exercise that is not done yet did not stop the lab: the cells after
# it used the reference solution. Fix one, run its cell again, then this one.

# %%
_ = labs.report("lab02")
