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
# # Lab 04: Koopman spectra and the power filter
#
# The "spectral Koopman" in SKA is the part that is hardest to see. SKA fits `A = M G^-1`, the linear map
# that best predicts each key from the one before it. Fitting such a map to snapshots of a system is
# **dynamic mode decomposition** (DMD), the standard estimate of a system's *Koopman operator*; its
# eigenvalues (the *spectrum*) say which rotations and decays the data follows. SKA then reads a query
# out through `A^K`, which keeps some modes and damps others.
#
# This lab: (1) DMD on systems whose answer we know; (2) the spectra of trained SKA heads; (3) what `A^K`
# keeps; (4) the ablation of the power filter, measured on our own runs, since the paper reports no
# `K = 0` baseline.

# %%
import math

import ipywidgets as widgets
from IPython.display import display
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from echo_tutor import labs, pretrained
from echo_tutor.koopman import damped_rotation, dmd, mode_energies, model_spectra, oscillators
from echo_tutor.labs import lab04
from echo_tutor.pretrained import results
from echo_tutor.tasks import mqar_gap, tool_trace

FAST = labs.FAST
print(f"FAST={FAST}  solutions={'on' if labs.SOLUTIONS else 'off'}")
circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))


def complex_plane(fig, row=None, col=None):
    kw = {} if row is None else dict(row=row, col=col)
    fig.add_scatter(x=circle.real, y=circle.imag, mode="lines", line=dict(color="lightgray"), showlegend=False, **kw)
    fig.update_xaxes(range=[-1.2, 1.2], zeroline=True, **kw)
    fig.update_yaxes(range=[-1.2, 1.2], scaleanchor="x" if row is None else None, **kw)


# %% [markdown]
# ## 1. DMD on a known system
#
# A point rotating by `theta` per step while decaying by `rho`: `z_{t+1} = rho R(theta) z_t`. Its operator
# has eigenvalues `rho e^{+-i theta}`: modulus = decay per step, angle = rotation per step.
#
# ### Your turn 1: `dmd_operator`
# Write `dmd_operator(X [N, d], Y [N, d], eps) -> A [d, d]`: the ridge fit `y_i ~ A x_i`, i.e.
# `A = (Y^T X)(X^T X + eps I)^-1` (rows are snapshots). This is SKA's `M G^-1` with `X` the previous keys.

# %%
def dmd_operator(X, Y, eps):
    """X, Y [N, d] (y_i follows x_i) -> A [d, d]"""
    # YOUR CODE HERE
    raise NotImplementedError


dmd_operator = labs.exercise(dmd_operator, "lab04")
lab04.check_dmd_operator(dmd_operator)

# %%
Z = damped_rotation(theta=0.5, rho=0.95, steps=60)
A = dmd_operator(Z[:-1], Z[1:], 0.0)
ev = torch.linalg.eigvals(A)
print("recovered:", ev.numpy().round(6), "| true: 0.95 e^{+-0.5i} =", (0.95 * np.exp(0.5j)).round(6))
assert abs(ev.abs()[0] - 0.95) < 1e-8 and abs(abs(ev[0].angle()) - 0.5) < 1e-8

# %% [markdown]
# Now a harder system: two decaying oscillators (4 true eigenvalues) observed through a random map into 6
# dimensions, with noise. Move the sliders: noise spreads the estimates; a ridge `eps` shrinks them towards
# 0 (it biases every eigenvalue inward); `rank` truncates to the leading singular directions (exact DMD):
# rank 4 is the truth, larger ranks fit noise with spurious modes.

# %%
true_thetas, true_rhos = [0.25, 1.1], [0.98, 0.85]
dmd_fig = go.FigureWidget()
complex_plane(dmd_fig)
_, true_ev = oscillators(true_thetas, true_rhos, 10)
dmd_fig.add_scatter(x=true_ev.real.numpy(), y=true_ev.imag.numpy(), mode="markers", name="true",
                    marker=dict(symbol="x", size=12, color="black"))
dmd_fig.add_scatter(x=[], y=[], mode="markers", name="DMD estimate", marker=dict(size=9, color="crimson"))
dmd_fig.update_layout(height=420, width=480, title="DMD eigenvalues vs truth")


def dmd_demo(log10_noise=-3.0, log10_eps=-8.0, rank=4):
    Y, _ = oscillators(true_thetas, true_rhos, 200, dim=6, noise=10.0**log10_noise, seed=1)
    est = dmd(Y[:-1], Y[1:], eps=10.0**log10_eps, rank=rank).eigenvalues
    with dmd_fig.batch_update():
        dmd_fig.data[2].x, dmd_fig.data[2].y = est.real.numpy(), est.imag.numpy()
        dmd_fig.layout.title = f"noise 1e{log10_noise:g}, eps 1e{log10_eps:g}, rank {rank}"
    return est


dmd_controls = dict(
    log10_noise=widgets.FloatSlider(value=-3, min=-6, max=0, step=0.5, description="log10 noise"),
    log10_eps=widgets.FloatSlider(value=-8, min=-8, max=3, step=0.5, description="log10 eps"),
    rank=widgets.IntSlider(value=4, min=1, max=6, description="rank"),
)
widgets.interactive_output(dmd_demo, dmd_controls)
display(widgets.VBox([widgets.HBox(list(dmd_controls.values())), dmd_fig]))

# %%
clean = dmd_demo(-6, -8, 4)
shrunk = dmd_demo(-6, 2, 4)
match = min(float((clean - t).abs().min()) for t in true_ev)
print(f"closest estimate to a true eigenvalue at low noise: {match:.1e}")
assert all(float((clean - t).abs().min()) < 1e-3 for t in true_ev), "low noise, right rank: DMD recovers all four"
assert shrunk.abs().max() < clean.abs().max(), "a large ridge shrinks the spectrum inwards"

# %% [markdown]
# ## 2. Spectral normalisation and the power filter
#
# SKA reads out `C G^-1 (M G^-1)^K q`, scaled by `s^K` with `s = gamma / max(1, sigma_max(A_w))`. Writing
# the query in the eigenbasis of `A`, each mode is multiplied by `(s lambda)^K`. With `s |lambda| < 1` a mode
# fades with K; the power filter therefore keeps the **slow** (large-`|lambda|`) modes and damps the rest.
# The bound uses `sigma_max` (largest singular value), not the spectral radius: for non-normal operators
# they differ, and `sigma_max` is what guarantees `||s A_w|| <= gamma`.
#
# ### Your turn 2: `sigma_max_power`
# Write `sigma_max_power(A [r, r], iters) -> float`: start from `x = ones(r) / sqrt(r)`, repeat
# `x <- A^T A x / ||A^T A x||`, return `||A x||`. (SKA runs 6 such iterations, detached from autograd.)

# %%
def sigma_max_power(A, iters):
    """A [r, r], iters -> estimate of the largest singular value"""
    # YOUR CODE HERE
    raise NotImplementedError


sigma_max_power = labs.exercise(sigma_max_power, "lab04")
lab04.check_sigma_max_power(sigma_max_power)

# %% [markdown]
# ## 3. The spectra of trained SKA heads
#
# The shipped `echo-d128` checkpoint (the paper-size echo preset: 2 Mamba-2 + 2 SKA blocks, d = 128, 4 heads, `r = 24`, `K = 2`, 15 CPU-minutes on MQAR-gap) reads a
# prompt; we take each SKA head's operator after the prompt and plot its 24 eigenvalues. Two prompts: an
# MQAR-gap example (key, value, key, value, then a gap of random value tokens) and a tool trace
# (`SET x v` triples: a period-3 rhythm). Before you run it: where on the unit circle would a period-3
# rhythm put its eigenvalues?

# %%
echo = pretrained("echo-d128")
V = 128
x_mqar, _ = mqar_gap(V, 8, 256, 1, seed=3)
x_tool, _ = tool_trace(V, 6, 40, 6, 1, seed=3)
spectra = {"MQAR-gap prompt": model_spectra(echo, x_mqar[0]), "tool-trace prompt": model_spectra(echo, x_tool[0])}
layers = sorted(next(iter(spectra.values())))
fig = make_subplots(rows=len(layers), cols=2, subplot_titles=[f"{p}, block {b}" for b in layers for p in spectra],
                    horizontal_spacing=0.08, vertical_spacing=0.1)
colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
for i, b in enumerate(layers):
    for j, (pname, sp) in enumerate(spectra.items()):
        complex_plane(fig, i + 1, j + 1)
        for h in range(sp[b].shape[0]):
            e = sp[b][h]
            fig.add_scatter(x=e.real.numpy(), y=e.imag.numpy(), mode="markers", name=f"head {h}", legendgroup=f"h{h}",
                            showlegend=(i == 0 and j == 0), marker=dict(size=6, color=colors[h % len(colors)]),
                            row=i + 1, col=j + 1)
for i in range(len(layers)):
    for j in range(2):
        idx = 2 * i + j + 1
        fig.update_yaxes(scaleanchor="x" if idx == 1 else f"x{idx}", row=i + 1, col=j + 1)  # circles stay round
fig.update_layout(height=440 * len(layers), width=900, title="Koopman spectra of the trained SKA heads (unit circle in gray)")
fig.show()
for pname, sp in spectra.items():
    for b in layers:
        mods = sp[b].abs()
        print(f"{pname:<18} block {b}: |lambda| max per head {mods.amax(-1).numpy().round(3)}, "
              f"median {mods.median().item():.3f}")
for sp in spectra.values():
    for b in layers:
        assert sp[b].shape == (4, 24) and sp[b].is_complex()

# %% [markdown]
# **What we see in our checkpoint.** Most of each head's 24 eigenvalues sit near zero, but the few large
# ones are telling, and they differ between the prompts:
#
# * on the **tool-trace** prompt, every head has a conjugate pair at about **+-120 degrees**: the cube roots
#   of unity, i.e. a rhythm of period 3. That is the `SET x v` triple structure of the trace;
# * on the **MQAR-gap** prompt, every head has a real eigenvalue near **-0.8** (180 degrees): a rhythm of
#   period 2, the key / value alternation of the binding block; and one near **+1** (something persistent).
#
# The model was trained on MQAR-gap only. The operator is fitted *in context*, on the keys of the prompt
# it is reading, so it picks up each prompt's own dynamics: this is the Koopman view of SKA at work. The
# cell below lists, per head, the eigenvalues with `|lambda| > 0.5` as (modulus, angle in degrees), and
# checks the two rhythms.

# %%
def large_modes(ev, threshold=0.5):
    big = ev[ev.abs() > threshold]
    return [(round(float(e.abs()), 2), round(math.degrees(float(e.angle())))) for e in big]


for pname, sp in spectra.items():
    for b in layers:
        print(f"{pname:<18} block {b}: " + "  |  ".join(f"h{h} {large_modes(sp[b][h])}" for h in range(sp[b].shape[0])))


def has_rhythm(ev, degrees, tol=12, min_modulus=0.5):
    ang = ev.angle().rad2deg().abs()
    return bool(((ev.abs() > min_modulus) & ((ang - degrees).abs() < tol)).any())


for b in layers:
    for h in range(4):
        assert has_rhythm(spectra["tool-trace prompt"][b][h], 120), f"block {b} head {h}: no period-3 pair"
        assert has_rhythm(spectra["MQAR-gap prompt"][b][h], 180), f"block {b} head {h}: no period-2 mode"

# %% [markdown]
# ## 4. What `A^K` keeps
#
# Pick a head and a prompt; the bars show each mode's surviving weight `(s |lambda|)^K` for the power
# order `K` and gain `gamma` you choose (here `s = gamma / max(1, |lambda|_max)`, the spectral radius
# standing in for `sigma_max`). `K = 0` keeps every mode equally: plain ridge regression.

# %%
energy_fig = go.FigureWidget(go.Bar(x=list(range(24)), y=[1.0] * 24))
energy_fig.update_layout(height=330, xaxis_title="mode (by decreasing |lambda|)", yaxis_title="(s |lambda|)^K",
                         yaxis_range=[0, 1.05])


def energies(prompt="MQAR-gap prompt", block=layers[-1], head=0, K=2, gamma=0.7):
    ev = spectra[prompt][block][head]
    e = mode_energies(ev, K, gamma)
    with energy_fig.batch_update():
        energy_fig.data[0].y = e.numpy()
        energy_fig.layout.title = (f"{prompt}, block {block}, head {head}: K={K}, gamma={gamma:.2f} -> "
                                   f"{int((e > 0.1).sum())} of 24 modes keep > 10%")
    return e


energy_controls = dict(
    prompt=widgets.Dropdown(options=list(spectra), description="prompt"),
    block=widgets.Dropdown(options=layers, value=layers[-1], description="block"),
    head=widgets.IntSlider(value=0, min=0, max=3, description="head"),
    K=widgets.IntSlider(value=2, min=0, max=8, description="K"),
    gamma=widgets.FloatSlider(value=0.7, min=0.5, max=1.5, step=0.05, description="gamma"),
)
widgets.interactive_output(energies, energy_controls)
display(widgets.VBox([widgets.HBox(list(energy_controls.values())[:3]), widgets.HBox(list(energy_controls.values())[3:]),
                      energy_fig]))

# %%
e0, e2, e8 = energies(K=0), energies(K=2), energies(K=8)
assert torch.allclose(e0, torch.ones_like(e0)), "K = 0 keeps every mode"
assert (e8 <= e2 + 1e-12).all() and e8.sum() < e2.sum(), "a higher power keeps fewer modes"

# %% [markdown]
# ## 5. The ablation: does the power filter carry the gain?
#
# The paper's ablation says "the spectral operator, not the prefix masking strategy, drives the retrieval
# gain", for one task and without a `K = 0` baseline. We ran the same small echo model with the power
# order `K` in {0, 1, 2, 4}, spectral normalisation off, and the prefix mask on, on MQAR-gap and on tool
# traces, with the same steps and seeds (`echo-tutor ablate --fast`; full table and command in
# `docs/results.md`). The numbers below are read from the shipped results file of that run: small
# 4-block models (d=64) on short tasks, with the values shown after the queries. Lab 03 (section 10)
# repeats the `K = 0 / 1 / 2` comparison at the lab scale of its memory-cliff models, where the task hides
# the values, and shows which context token each trained readout reads.

# %%
abl = results("ablation")
rows = {}
for r in abl:
    rows.setdefault(r["config"], {}).setdefault(r["task"], []).append(r["acc"])
tasks_run = sorted({r["task"] for r in abl})
print(f"{'config':<26}" + "".join(f"{t:>24}" for t in tasks_run))
for cname, per in rows.items():
    print(f"{cname:<26}" + "".join(f"{np.mean(per[t]):>14.3f} ± {np.std(per[t], ddof=1) if len(per[t]) > 1 else 0:.3f}"
                                   for t in tasks_run))
fig = go.Figure()
for t in tasks_run:
    fig.add_bar(name=t, x=list(rows), y=[np.mean(rows[c][t]) for c in rows],
                error_y=dict(type="data", array=[np.std(rows[c][t], ddof=1) if len(rows[c][t]) > 1 else 0 for c in rows]))
fig.update_layout(barmode="group", height=380, yaxis_title="accuracy (mean ± sd over seeds)", yaxis_range=[0, 1.05],
                  title="Power-filter ablation (echo-tutor ablate --fast)")
fig.show()
assert all(len(per[t]) >= 1 for per in rows.values() for t in tasks_run)

# %% [markdown]
# **Which claim do our runs support?** The cell below compares, per task, the paper's setting (`K=2`)
# with plain ridge (`K=0`), and the prefix mask on vs off, and calls a difference real only when it
# exceeds the spread over seeds (mean ± sd of the difference).

# %%
def compare(a, b, task):
    """Mean difference of config a minus config b over paired seeds, and its sample sd."""
    da, db = rows[a][task], rows[b][task]
    diffs = [x - y for x, y in zip(da, db)]
    sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else 0.0
    return float(np.mean(diffs)), sd


def verdict(mean, sd):
    if abs(mean) <= max(sd, 0.02):
        return "no difference beyond the seed spread"
    return "better" if mean > 0 else "worse"


for t in tasks_run:
    m, sd = compare("K=2 (paper)", "K=0 (ridge / mesa)", t)
    mm, msd = compare("K=2, prefix mask", "K=2 (paper)", t)
    print(f"{t}: K=2 vs K=0: {m:+.3f} ± {sd:.3f} -> {verdict(m, sd)};  "
          f"prefix mask on vs off (K=2): {mm:+.3f} ± {msd:.3f} -> {verdict(mm, msd)}")
mask_same = all(rows["K=2, prefix mask"][t] == rows["K=2 (paper)"][t] for t in tasks_run)
print("prefix mask on == off, seed by seed, on every task:", mask_same)

# %% [markdown]
# **In plain words** (the shipped run: d=64 models, 500 steps, 3 seeds). On MQAR-gap the best power order
# was `K = 1`, and plain ridge (`K = 0`) beat the paper's `K = 2`; more power steps did worse (`K = 4`).
# One step of the operator moves the query onto the *next* token, which is exactly where MQAR puts the
# value (lab 02, section 3); two steps overshoot. On tool traces every configuration gave the same accuracy
# for the same seed: at this budget the SKA blocks changed no prediction there.
#
# The prefix mask changed nothing at all, seed by seed. That is structural rather than evidence for the
# paper's claim: in chunk mode a query reads only the statistics of *earlier* chunks, and our query
# regions lie inside the last chunk, so what query tokens write is never read. The mask can only matter
# when queries span chunk boundaries (or in token mode). So our runs support neither "the spectral
# operator (K = 2) drives the gain" nor a real test of the mask; they do support "a short power filter
# (K = 1) helps recall on MQAR-gap at this scale".
