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
# # Lab 03: The memory cliff
#
# **The claim** (Echo paper): on multi-query associative recall with a distractor gap (MQAR-gap), a pure
# Mamba-2 model stays near chance (~3%) at every gap, while Mamba-2 + SKA gets 100% everywhere, even at
# gaps of 4096 tokens with 32 key/value pairs (50M-parameter models, each grid cell trained separately).
#
# **What we can measure here**: the same four architectures at the paper's *sub-million* size (d=128,
# 4 blocks), each trained for the same 15 minutes of a 2-core CPU on MQAR-gap (8 pairs, gaps 64-1024 mixed),
# then evaluated on the whole grid of pairs {4, 8, 16, 32} x gaps {64 ... 4096}. Smaller models, one model
# per preset rather than one per cell, a fixed compute budget: so the comparison is *at equal budget*,
# and cells outside the training range (pairs != 8, gaps > 1024) test generalisation.
#
# | preset | mixers | inference state |
# |---|---|---|
# | `ssm` | 4 x Mamba-2 | fixed |
# | `ssm+attn` | 2 x Mamba-2 + 2 x attention | grows (KV cache) |
# | `echo` | 2 x Mamba-2 + 2 x SKA (r=24, K=2) | fixed |
# | `ssm+ridge` | as echo with K=0 (plain causal ridge regression) | fixed |

# %%
import time

import ipywidgets as widgets
from IPython.display import display
import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from echo_tutor import labs, pretrained
from echo_tutor.experiments import CLIFF_GAPS, CLIFF_PAIRS, CLIFF_PRESETS, PAPER, cliff_figure
from echo_tutor.labs import lab03
from echo_tutor.models import build, count_parameters
from echo_tutor.pretrained import info, results
from echo_tutor.tasks import make_task, mqar_gap
from echo_tutor.train import evaluate, train

FAST = labs.FAST
torch.manual_seed(0)
models = {p: pretrained(p) for p in CLIFF_PRESETS}
for p, m in models.items():
    i = info(p)
    print(f"{p:<10} {count_parameters(m):>9,d} params | trained {i['steps']} steps in {i['time_s'] / 60:.1f} min "
          f"| final eval accuracy on the training mixture {i['final_eval']:.3f}")

# %% [markdown]
# ## 1. The task, and how accuracy is counted
#
# `[k1 v1 ... kn vn][gap random tokens][k v ...]`: keys from the lower half of the vocabulary, values from
# the upper half; after the gap every key is asked once, in random order, with its value following it.
# The label sits on the query *key* (the model must predict the value next); every other label is -100.
#
# ### Your turn 1: `gap_example`
# Build one example: `gap_example(keys [n], values [n], distractors [G], order [n]) -> (inputs, labels)`,
# both `[4n + G]`, queries in the order `keys[order]`.

# %%
def gap_example(keys, values, distractors, order):
    """keys, values [n]; distractors [G]; order [n] -> inputs [4n+G], labels [4n+G] (-100 except answers)"""
    # YOUR CODE HERE
    raise NotImplementedError


gap_example = labs.exercise(gap_example, lab03.gap_example_solution)
lab03.check_gap_example(gap_example)

# %% [markdown]
# ### Your turn 2: `answer_accuracy`
# Accuracy counts only answer positions: `answer_accuracy(logits [B, T, V], labels [B, T]) -> float`.

# %%
def answer_accuracy(logits, labels):
    """logits [B, T, V], labels [B, T] (-100 = not an answer) -> accuracy over answer positions"""
    # YOUR CODE HERE
    raise NotImplementedError


answer_accuracy = labs.exercise(answer_accuracy, lab03.answer_accuracy_solution)
lab03.check_answer_accuracy(answer_accuracy)

# %%
x, y = mqar_gap(128, 8, 256, 32, seed=123)
with torch.no_grad():
    live = {p: answer_accuracy(m(x)[0], y) for p, m in models.items()}
print({p: round(a, 3) for p, a in live.items()}, "<- 8 pairs, gap 256, 32 fresh examples")

# %% [markdown]
# ## 2. How they learned
#
# Every model was trained for the same wall-clock budget (`scripts/train_checkpoints.sh`; the command and
# the whole history ship with each checkpoint). Recall tasks are learned abruptly: the loss sits at chance
# while the model has no retrieval circuit, then drops within a few dozen steps once it has one.

# %%
fig = go.Figure()
for p in CLIFF_PRESETS:
    ev = info(p)["evals"]
    fig.add_scatter(x=[e["time_s"] / 60 for e in ev], y=[e["eval_acc"] for e in ev], mode="lines+markers", name=p)
fig.update_layout(height=360, xaxis_title="training time (min, 2-core CPU)", yaxis_title="eval accuracy (training mixture)",
                  yaxis_range=[0, 1.05], title="Learning curves of the shipped checkpoints")
fig.show()

# %% [markdown]
# ## 3. Accuracy vs gap: is there a cliff?
#
# `echo-tutor cliff --fast` evaluated every shipped model on the whole grid (32 examples per cell); the
# results ship with the package. Below, accuracy vs gap for each number of pairs. The dashed line marks
# the largest gap seen in training (1024).

# %%
cl = results("cliff")
fig = cliff_figure(cl)
for j in range(len(CLIFF_PAIRS)):
    fig.add_vline(x=1024, line_dash="dash", line_color="gray", row=1, col=j + 1)
fig.show()


def acc(preset, pairs, gap, recs=cl):
    return next(r["acc"] for r in recs if r["preset"] == preset and r["pairs"] == pairs and r["gap"] == gap)


print(f"{'preset':<10}" + "".join(f"{g:>7}" for g in CLIFF_GAPS) + "   <- 8 pairs")
for p in CLIFF_PRESETS:
    print(f"{p:<10}" + "".join(f"{acc(p, 8, g):>7.2f}" for g in CLIFF_GAPS))
# the key results of this run, checked: no cliff for SKA, and SKA well above pure Mamba-2 at every gap
for n in CLIFF_PAIRS:
    for p in ("ssm+ridge", "echo"):
        assert acc(p, n, 4096) >= acc(p, n, 64) - 0.06, f"{p}, {n} pairs: accuracy falls with the gap"
for g in CLIFF_GAPS:
    assert acc("ssm+ridge", 8, g) > acc("ssm", 8, g) + 0.15 and acc("echo", 8, g) > acc("ssm", 8, g) + 0.04
# and the shipped numbers agree with a live evaluation on other examples (section 1: gap 256, 8 pairs)
for p in CLIFF_PRESETS:
    assert abs(live[p] - acc(p, 8, 256)) < 0.12, (p, live[p], acc(p, 8, 256))

# %% [markdown]
# The heat-maps show the whole grid per preset (rows: KV pairs; columns: gap).

# %%
fig = make_subplots(rows=1, cols=len(CLIFF_PRESETS), subplot_titles=CLIFF_PRESETS, horizontal_spacing=0.04)
for j, p in enumerate(CLIFF_PRESETS):
    z = [[acc(p, n, g) for g in CLIFF_GAPS] for n in CLIFF_PAIRS]
    fig.add_trace(go.Heatmap(z=z, x=[str(g) for g in CLIFF_GAPS], y=[str(n) for n in CLIFF_PAIRS], zmin=0, zmax=1,
                             colorscale="Viridis", showscale=j == len(CLIFF_PRESETS) - 1,
                             text=np.round(z, 2), texttemplate="%{text}"), row=1, col=j + 1)
fig.update_layout(height=330, title="MQAR-gap accuracy: KV pairs (rows) x gap (columns)")
fig.show()

# %% [markdown]
# ## 4. Probe the shipped models yourself
#
# The sliders evaluate all four models live on fresh examples (32 per move).

# %%
probe_fig = go.FigureWidget(go.Bar(x=CLIFF_PRESETS, y=[0] * 4, text=[""] * 4, textposition="outside"))
probe_fig.update_layout(height=330, yaxis_range=[0, 1.1], yaxis_title="accuracy")


def probe(gap=256, pairs=8, seed=0):
    task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=pairs, gap=gap)
    accs = [evaluate(models[p], task, 32, seed=50_000 + seed, batch_size=32) for p in CLIFF_PRESETS]
    with probe_fig.batch_update():
        probe_fig.data[0].y, probe_fig.data[0].text = accs, [f"{a:.2f}" for a in accs]
        probe_fig.layout.title = f"gap {gap}, {pairs} KV pairs, 32 fresh examples"
    return dict(zip(CLIFF_PRESETS, accs))


probe_controls = dict(
    gap=widgets.SelectionSlider(options=[16, 32, 64, 128, 256, 512, 1024, 2048], value=256, description="gap",
                                continuous_update=False),
    pairs=widgets.SelectionSlider(options=[2, 4, 8, 16, 32], value=8, description="KV pairs", continuous_update=False),
    seed=widgets.IntSlider(value=0, min=0, max=20, description="seed", continuous_update=False),
)
widgets.interactive_output(probe, probe_controls)
display(widgets.VBox([widgets.HBox(list(probe_controls.values())), probe_fig]))

# %%
probe_now = probe(gap=256, pairs=8)
print(probe_now)

# %% [markdown]
# ### What fills the gap matters
#
# Our first training run drew the gap's distractors from the *whole* vocabulary. Then every key also recurs
# inside the gap, followed by a random token, and the right answer is the *first* of several conflicting
# bindings: a question about position, not about memory over distance. Echo trained on that version for
# 15 minutes stayed at 7% (details in `docs/results.md`). The generator keeps both versions
# (`mqar_gap(..., distractors="values" | "uniform")`); here are the shipped models on both, at gap 512:

# %%
for dist in ("values", "uniform"):
    task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=8, gap=512, distractors=dist)
    print(f"distractors={dist!r:<9}", {p: round(evaluate(m, task, 32, batch_size=32), 3) for p, m in models.items()})

# %% [markdown]
# ## 5. Recall against memory
#
# Zoology's lesson (the Based paper): compare recall with the **state size** a model needs at inference,
# not with its parameter count. For each model at 8 pairs, accuracy against the bytes its state holds after
# the prompt (measured from the state tensors). Attention's state grows with the gap; the others do not.

# %%
fig = go.Figure()
for p in CLIFF_PRESETS:
    rs = sorted((r for r in cl if r["preset"] == p and r["pairs"] == 8), key=lambda r: r["gap"])
    fig.add_scatter(x=[r["state_bytes"] for r in rs], y=[r["acc"] for r in rs], mode="lines+markers+text", name=p,
                    text=[str(r["gap"]) for r in rs], textposition="top center")
fig.update_layout(height=400, xaxis_type="log", xaxis_title="inference state bytes after the prompt (B=1)",
                  yaxis_title="accuracy (8 pairs)", yaxis_range=[0, 1.1],
                  title="Recall vs state size (labels: gap)")
fig.show()
echo_bytes = {r["state_bytes"] for r in cl if r["preset"] == "echo"}
attn_bytes = sorted({r["state_bytes"] for r in cl if r["preset"] == "ssm+attn" and r["pairs"] == 8})
assert len(echo_bytes) == 1, "Echo's state does not depend on the prompt length"
assert attn_bytes[-1] > attn_bytes[0] * 30, "the KV cache grows with the gap"

# %% [markdown]
# ## 6. Our numbers next to the paper's
#
# What our runs show (the shipped `results_cliff.json`, 32 examples per cell; re-run with
# `echo-tutor cliff --fast`):
#
# * **No cliff for the SKA models, within what they learned.** `ssm+ridge` and `echo` have the same
#   accuracy at gap 4096 as at gap 64, four times past the longest gap they trained on: their statistics
#   do not fade with distance. At 8 pairs: `ssm+ridge` 0.27 -> 0.25, `echo` 0.11 -> 0.08 (gap 64 -> 4096).
# * **But they learned little in 15 CPU-minutes.** Accuracy times pairs is about 2 for `ssm+ridge` at
#   every pair count (0.45 x 4, 0.27 x 8, 0.12 x 16, 0.05 x 32): it retrieves about two bindings per
#   example, whatever the gap. The paper's 100% needs far more training (6000 steps at batch 16 for the
#   sub-million models; 50M-parameter models for the grid).
# * **Pure Mamba-2 stayed at chance** (1/64 = 1.6%) everywhere, as in the paper's "~3%" row, but here that
#   is a statement about 15 minutes of training, not about a cliff: it never left chance even at gap 64.
# * **The attention hybrid did not learn in this budget** (2-5%). Attention solves MQAR easily once it
#   forms an induction circuit; in our 15 CPU-minutes it had not yet. The paper's 100% for Mamba-2 +
#   attention is not contradicted, just not reached.
# * **K = 0 beat K = 2 at equal budget**: `ssm+ridge` (plain causal ridge, no power filter) learned faster
#   than `echo` (0.26 vs 0.11 on the training mixture after 15 minutes). The paper reports no `K = 0`
#   baseline; lab 04's ablation measures this on smaller models with several seeds.
#
# The target (echo >= 95% at 8 pairs for gaps 64/256/1024 within 15 minutes of CPU training) is
# **not met**: we measured 0.11 / 0.13 / 0.11.

# %%
print("Paper (50M models, each cell trained separately):")
for k, v in PAPER["mqar_50M"].items():
    print(f"  {k:<9} {v}")
print("\nOurs (sub-million models, 15 CPU-minutes each, one model per preset), 8 pairs:")
for p in CLIFF_PRESETS:
    print(f"  {p:<10} gaps 64/256/1024: " + " / ".join(f"{acc(p, 8, g):.2f}" for g in (64, 256, 1024)))

# %% [markdown]
# ## 7. Train your own
#
# In full mode (a GPU, or `ECHO_TUTOR_FAST=0` and patience) this retrains a preset from scratch with the
# same recipe as the shipped checkpoints. In FAST mode it runs a few steps to show the loop and the
# progress bar. From a terminal: `echo-tutor train --preset echo --minutes 15 --out my_echo.pt`, and
# `echo-tutor cliff` (without `--fast`) trains one model per grid cell, as the paper did.

# %%
preset_to_train = "echo"
steps = 10 if FAST else 1500
mine = build(preset_to_train, vocab_size=128)
task = make_task("mqar_gap", vocab_size=128, num_kv_pairs=8, gap=[64, 128, 256, 512, 1024])
t0 = time.perf_counter()
run = train(mine, task, steps=steps, batch_size=16, lr=3e-3, eval_every=steps if FAST else 100, eval_examples=64)
print(f"{run.steps_done} steps in {time.perf_counter() - t0:.0f} s; eval accuracy {run.final_eval:.3f}")
assert run.steps_done == steps and len(run.history) == steps
