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
# # Lab 07: Triton fast paths, from the reference to the kernel
#
# The references in `echo_tutor` are written to be read. `kernels/echo_kernels/` holds Triton versions of the hot
# spots. Each kernel has a **PyTorch twin** with exactly its signature (`echo_tutor.ska.ops`,
# `echo_tutor.echokv.ops`): the twin says what the kernel must compute, the tests hold them equal.
#
# The steps, for each kernel: the piece of the reference -> its twin -> the kernel -> the wrapper ->
# a correctness check on an awkward size (nothing a power of two) -> a benchmark (GPU only).
#
# On a laptop or CI there is no GPU: Triton then runs kernels through its **interpreter**
# (`TRITON_INTERPRET=1`, set below before any kernel is defined). Same code, numpy underneath: right
# answers, no speed. Interpreter limits worth knowing: no bf16 arithmetic (load, cast to fp32, compute),
# programs run one after another (races never show), and `tl.dot`'s GPU minimum of 16 is not enforced.

# %%
import inspect
import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")   # must precede the first `import echo_kernels.*`

import numpy as np
import plotly.graph_objects as go
import triton
import triton.language as tl

import echo_kernels.echokv as kecho
import echo_kernels.ska as kska
from echo_kernels.echokv import rebuild as kecho_rebuild
from echo_kernels.ska import chunk as kska_chunk
from echo_tutor import labs
from echo_tutor.echokv.ops import rebuild_heads
from echo_tutor.labs import lab07
from echo_tutor.ska import SKAState, ska_chunked, ska_recurrent
from echo_tutor.ska import ops as twin

FAST = labs.FAST
DEV = "cuda" if torch.cuda.is_available() else "cpu"
INTERP = os.environ.get("TRITON_INTERPRET") == "1"
print(f"FAST={FAST}  solutions={'on' if labs.SOLUTIONS else 'off'}  device={DEV}  interpreter={INTERP}")


def kernel_source(kernel) -> str:
    """The Python source of a @triton.jit function (compiled or interpreted)."""
    return inspect.getsource(getattr(kernel, "fn", kernel))


def rel_err(ref, got):
    ref, got = ref.double().cpu(), got.double().cpu()
    return ((ref - got).norm() / ref.norm().clamp_min(1e-30)).item()


# %% [markdown]
# ## 1. SKA's chunk mode, taken apart
#
# `ska_chunked(mode="chunk")` does four things: (a) per-chunk statistics `G_c = sum ok_s k_s^T`,
# `M_c = sum ok_s k_{s-1}^T` (the lagged key of a chunk's first token is the previous chunk's last:
# that is the chunk-boundary term), `C_c = sum ov_s k_s^T`, where `ok_s` and `ov_s` are the key and the
# value times the token's write weight `beta_s w_s`; (b) an exclusive prefix over chunks;
# (c) one factorisation of `G` per chunk; (d) the readout `C G^-1 (M G^-1)^K q` for every query of the
# chunk. `ska_chunked_ops` composes the twins of (a), (b), (d); it must match the reference.

# %%
g = torch.Generator().manual_seed(0)
B, T, H, r, P = 2, 53, 3, 5, 7          # awkward on purpose
q = torch.randn(B, T, H, r, generator=g)
k = torch.nn.functional.normalize(torch.randn(B, T, H, r, generator=g), dim=-1)
v = torch.randn(B, T, H, P, generator=g)
beta = torch.rand(B, T, H, generator=g)
kw = dict(mode="chunk", chunk_size=16, spectral_norm=True, power_steps=2)
y_ref, st_ref = ska_chunked(q, k, v, beta, **kw)
y_twin, st_twin = twin.ska_chunked_ops(q, k, v, beta, **kw)
print(f"twins composed vs reference: rel. error y {rel_err(y_ref, y_twin):.1e}, G {rel_err(st_ref.G, st_twin.G):.1e}")
assert rel_err(y_ref, y_twin) < 1e-5

# %% [markdown]
# ### Your turn 1: `chunk_gram`
# Write (a)'s Gram term in PyTorch: `ok, kk [..., T, r]` (any leading dims: heads, or batch x heads; T a
# multiple of S) -> `[..., T/S, r, r]`, entry `[..., c]` the sum over chunk c's own S tokens of `ok_s kk_s^T`.
# Only the chunk's own tokens: the prefix over chunks is step (b). This is the twin of the kernel you write
# next: it says what the kernel must compute.

# %%
def chunk_gram(ok, kk, S):
    """ok, kk [..., T, r] -> [..., T/S, r, r]"""
    # YOUR CODE HERE
    raise NotImplementedError


chunk_gram = labs.exercise(chunk_gram, "lab07")
lab07.check_chunk_gram(chunk_gram)

# %% [markdown]
# ## 2. The kernel for (a)
#
# ### Your turn 2: `chunk_gram_triton`, your own kernel
# Now the same Gram term as a Triton kernel that you write, and its launcher. The kernel is the body of one
# *program*; the launcher picks how many programs run (the *grid*), allocates the output and passes the
# pointers, sizes and strides. What you have to decide:
#
# * **the grid**: what one program computes. One chunk of one row of the flattened leading dims is a natural
#   unit (`tl.program_id(0)`, `tl.program_id(1)`); how many chunks are there when T is not a multiple of S?
# * **the tiles**: a program loads the chunk's rows of `ok` and `kk` as blocks. Block shapes are powers of two,
#   and on a GPU `tl.dot` needs every side at least 16, so `r = 5` lives in a 16-wide block. What must the
#   rows past T and the columns past r read, so that they change nothing?
# * **the addresses**: element `(t, i)` of row `n` is not always at `(n T + t) r + i`; a slice or a transpose
#   of a bigger tensor has other strides, and section 1's `[B, T, H, r]` keys seen as `[B, H, T, r]` are such a
#   view.
# * **the product and the store**: one `tl.dot` gives the block's Gram; only its `r x r` corner is the chunk's,
#   and it goes at the chunk's place in the `[..., nc, r, r]` output. On a GPU `tl.dot` rounds float32 to tf32
#   unless told `input_precision="ieee"`.
#
# The checker runs your launcher (here in Triton's interpreter, on a GPU compiled) on sizes chosen so that the
# first one that fails names the mistake: r = 16 and T a multiple of S, then r = 5, then a partial last chunk,
# then a strided view, then S = 32, then zero, one and two leading dims. It surrounds every input with NaN in
# memory, so a load that should have been masked shows, and gives your `torch.empty` a NaN tail, so a store
# past the end shows instead of overwriting another tensor. It refuses the project's kernels (below), by name
# and when launched.

# %%
@triton.jit
def chunk_gram_kernel(ok_ptr, kk_ptr, out_ptr, T, r,  # add what else your kernel needs (strides, ...)
                      S: tl.constexpr, BR: tl.constexpr):
    # YOUR CODE HERE: one program, the Gram of one chunk of one row
    pass


def chunk_gram_triton(ok, kk, S):
    """ok, kk [..., T, r] (any strides), S a power of two >= 16 -> float32 [..., ceil(T/S), r, r]: each chunk's
    sum_s ok_s kk_s^T, computed by chunk_gram_kernel; the last chunk may have fewer than S tokens."""
    # YOUR CODE HERE
    raise NotImplementedError


chunk_gram_triton = labs.exercise(chunk_gram_triton, "lab07")
lab07.check_chunk_gram_triton(chunk_gram_triton)

# %% [markdown]
# Your kernel inside the chunk-mode statistics: section 1's keys and write weights (`T = 53`, four chunks of
# 16, the last with 5 tokens; `r = 5`), passed as the `[B, H, T, r]` view of the `[B, T, H, r]` tensors, no
# copy. Per chunk it must agree with your PyTorch `chunk_gram` on the zero-padded sequence; summed over the
# chunks, plus the ridge `eps I`, it is the reference's final `G` (what `ska_chunked` returned in section 1);
# and the exclusive prefix of its chunks is what each chunk reads.

# %%
okv, kkv = (beta[..., None] * k).transpose(1, 2), k.transpose(1, 2)          # [B, H, T, r], strided views
Gc_mine = chunk_gram_triton(okv.to(DEV), kkv.to(DEV), 16).cpu()               # [B, H, 4, r, r]
pad = torch.nn.functional.pad
Gc_torch = chunk_gram(pad(okv, (0, 0, 0, 11)), pad(kkv, (0, 0, 0, 11)), 16)   # T padded to 64 with zeros
eps_I = 1e-3 * torch.eye(r)
G_reads = eps_I + Gc_mine.cumsum(-3) - Gc_mine                                 # what chunk c reads: chunks < c
G_reads_twin = twin.exclusive_prefix(eps_I.expand(B * H, r, r), Gc_torch.reshape(B * H, 4, r, r))[0]
err_chunks, err_state = rel_err(Gc_torch, Gc_mine), rel_err(st_ref.G, eps_I + Gc_mine.sum(-3))
print(f"your kernel's per-chunk G vs your chunk_gram: {err_chunks:.1e}; what each chunk reads (the exclusive "
      f"prefix) vs the twin's: {rel_err(G_reads_twin, G_reads.reshape(B * H, 4, r, r)):.1e}; eps I + the sum of "
      f"the chunks vs the reference's final G: {err_state:.1e}")
if err_chunks > 1e-5:
    print("-> `chunk_gram_triton` and `chunk_gram` disagree: the one whose checker did not pass is at fault "
          f"(statuses: {chunk_gram_triton.status}, {chunk_gram.status}).")
assert err_state < 1e-5, "chunk_gram_triton: eps I + the sum of its chunks is not the reference's final G"

# %% [markdown]
# The project's kernel for (a) does the same with three products in one program: G, M and C. One Triton
# *program* per (head, chunk). It loads the chunk's `[S, r]` tiles (masked: rows past T and columns past r read
# as 0, so a padded block changes nothing), and three `tl.dot`s give G, M, C. Compare it with yours: it takes
# contiguous `[N, T, r]` inputs (its wrapper copies a strided view), and its wrapper asks for T a multiple of S.

# %%
print(kernel_source(kska_chunk._chunk_stats_kernel))

# %%
N, T2, S = 3, 48, 16
ok, kk, kl = (torch.randn(N, T2, r, generator=g) for _ in range(3))
ov = torch.randn(N, T2, P, generator=g)
t0 = time.perf_counter()
Gk, Mk, Ck = kska.chunk_stats(*(x.to(DEV) for x in (ok, kk, kl, ov)), S)
dt = time.perf_counter() - t0
Gt, Mt, Ct = twin.chunk_stats(ok, kk, kl, ov, S)
print(f"kernel vs twin (N={N}, T={T2}, r={r}, P={P}): G {rel_err(Gt, Gk):.1e}, M {rel_err(Mt, Mk):.1e}, "
      f"C {rel_err(Ct, Ck):.1e}  ({dt * 1e3:.0f} ms{' in the interpreter' if INTERP else ''})")
print(f"your chunk_gram vs the kernel: {rel_err(chunk_gram(ok, kk, S), Gk):.1e}; "
      f"your kernel vs the project's: {rel_err(chunk_gram_triton(ok.to(DEV), kk.to(DEV), S), Gk):.1e}")
assert max(rel_err(Gt, Gk), rel_err(Mt, Mk), rel_err(Ct, Ck)) < 1e-5

# %% [markdown]
# ## 3. The fused readout (d)
#
# After the factorisation (PyTorch: a batched r x r Cholesky per chunk, then `G^-1`), one program per
# (head x chunk, block of queries) forms `A^T = G^-1 M^T` and `B^T = G^-1 C^T` in registers and applies
# them: `K + 1` more products, `y = scale * (q A^T ... A^T) B^T`. Nothing of size r x r goes back to memory.
# This is how far the Echo paper's own Triton kernel goes: it fuses the matmul chain after the Cholesky into
# one pass in on-chip memory and leaves the factorisation in PyTorch; the paper names the factorisation (with
# the spectral normalisation) as the bottleneck ([E35](../docs/claims.md#E35)).

# %%
print(kernel_source(kska_chunk._readout_kernel))
Nc, nq = 4, 19
Gm = torch.randn(Nc, r, r, generator=g)
Gm = Gm @ Gm.transpose(-1, -2) + torch.eye(r)
Gi, Mm, Cm, qq = torch.linalg.inv(Gm), 0.5 * torch.randn(Nc, r, r, generator=g), torch.randn(Nc, P, r, generator=g), torch.randn(Nc, nq, r, generator=g)
sc = torch.rand(Nc, generator=g)
errs = {K: rel_err(twin.readout_inverse(Gi, Mm, Cm, qq, K, sc), kska.readout_inverse(*(x.to(DEV) for x in (Gi, Mm, Cm, qq)), K, sc.to(DEV)))
        for K in (0, 1, 2, 4)}
print("readout kernel vs twin, by power order K:", {K: f"{e:.1e}" for K, e in errs.items()})
assert max(errs.values()) < 1e-5

# %% [markdown]
# ## 3b. Fewer kernels: the chunk mode fused, forward and backward
#
# Sections 2-3 launch a kernel per step and leave the factorisation to PyTorch (as the paper's kernel does,
# [E35](../docs/claims.md#E35)): a dozen launches and every per-chunk `G_c`, `M_c`, `C_c` written to memory and
# read back. `echo_kernels.ska.forward` (what a layer with
# `backend="triton"` runs) needs two kernels:
#
# 1. **stats + prefix**: one program per head walks the chunks in order (as `chunk_h` does in fla,
#    flash-linear-attention: the `fla-org/flash-linear-attention` library of Triton kernels for linear
#    attention and state-space layers, file `fla/ops/common/chunk_h.py`), writes what chunk c reads (the state
#    plus the chunks before c), then adds c's three `tl.dot`s. No per-chunk sums in memory.
# 2. **readout**: one program per (head, chunk) factorises its `r x r` G **on chip**, then applies the power
#    filter and reads out the chunk's queries. Triton has no indexing into a register tile, so the Cholesky
#    is written with masks: step j pulls column j out by a masked sum, scales it by `1/sqrt(pivot)`, and
#    subtracts its outer product from what is left (r steps of r x r elementwise work); `L^-1` follows by
#    forward substitution the same way. `L^-1` also gives the spectral norm's whitened operator
#    `L^-1 M L^-T`, whose largest singular value the kernel estimates by the reference's power iterations.
#
# The backward is two more kernels, the same walks reversed: the readout's from the saved `G^-1`
# (`dG = -G^-1 dG^-1 G^-1`), the prefix walk backwards with suffix sums. Below: the masked Cholesky, then the
# fused forward and its gradients against the reference, then the three on-chip solvers on a hard G.

# %%
print(kernel_source(kska.fused_kernels._chol_linv))
qg, kg, vg, bg = (x.clone().to(DEV).requires_grad_() for x in (q, k, v, beta))
y_k, st_k = kska.forward(qg, kg, vg, bg, **kw)
y_r, _ = ska_chunked(qg, kg, vg, bg, **kw)
gk = torch.autograd.grad(y_k.square().sum(), (qg, kg, vg, bg))
gr = torch.autograd.grad(y_r.square().sum(), (qg, kg, vg, bg))
print(f"fused forward: {rel_err(y_r, y_k):.1e}; Triton backward, grads: "
      + ", ".join(f"{n} {rel_err(a, b):.1e}" for n, a, b in zip(["q", "k", "v", "beta"], gr, gk)))
assert rel_err(y_r, y_k) < 1e-4 and max(rel_err(a, b) for a, b in zip(gr, gk)) < 1e-4

# %% [markdown]
# Which on-chip solver? Cholesky and Gauss-Jordan are eliminations: r sequential steps, exact to rounding.
# Newton-Schulz (`X <- X (2I - G X)` from `X0 = I / ||G||_F`) is only matrix products, which suit a GPU's
# tensor cores at low precision; in float32 ("ieee") products they run on ordinary cores, and 20-60
# products of `r x r` matrices are more arithmetic than one elimination. It needs about `log2(cond G) + 5`
# steps, and a fresh chunk's G is badly conditioned (r keys barely fill r dimensions; the ridge `eps` is
# small). Here a G with condition number 10^5:

# %%
Uq = torch.linalg.qr(torch.randn(16, 16, generator=g))[0]
Ghard = ((Uq * torch.logspace(-3, 2, 16)) @ Uq.T)[None]
Mh, Ch, qh = torch.randn(1, 16, 16, generator=g), torch.randn(1, 4, 16, generator=g), torch.randn(1, 16, 16, generator=g)
exact = twin.readout_inverse(torch.linalg.inv(Ghard.double()).float(), Mh, Ch, qh, 0, torch.ones(1))
solver_err = {"chol": rel_err(exact, kska.readout(Ghard.to(DEV), Mh.to(DEV), Ch.to(DEV), qh.to(DEV), 0, torch.ones(1, device=DEV), solver="chol")),
              "gj": rel_err(exact, kska.readout(Ghard.to(DEV), Mh.to(DEV), Ch.to(DEV), qh.to(DEV), 0, torch.ones(1, device=DEV), solver="gj"))}
for n_it in (5, 10, 20, 30):
    solver_err[f"ns/{n_it}"] = rel_err(exact, kska.readout(Ghard.to(DEV), Mh.to(DEV), Ch.to(DEV), qh.to(DEV), 0,
                                                           torch.ones(1, device=DEV), solver="ns", ns_iters=n_it))
print("rel. error of G^-1 C^T q against float64, by solver:", {n: f"{e:.1e}" for n, e in solver_err.items()})
assert solver_err["chol"] < 1e-3 and solver_err["ns/5"] > 0.1

# %% [markdown]
# On this G both eliminations land within float32's reach of a condition number of 10^5 (errors from under
# 1e-4 to 5e-4 in our runs; which of the two comes out closer changed with the rounding of the machine's
# products, so do not read their order); Newton-Schulz is useless until about 20 steps
# (`log2(10^5) + 5` is about 22) and then as good. The kernels default to the
# Cholesky, because the spectral norm needs `L` anyway; `solver="gj"` or `"ns"` switches, and
# `benchmarks/kernels.py` times all three on a GPU and prints each one's error on its inputs.

# %% [markdown]
# ## 4. Decoding: rank-1 updates, and an inverse that follows along
#
# Each new token adds `a k k^T` to G (and rank-1 terms to M and C), `a` being the token's write weight
# (`beta_t` in the notation table). Instead of refactorising G every step, the decode kernel keeps `G^-1` up
# to date with the [Sherman-Morrison](../docs/course.md#glossary) formula, so one program per
# head does the updates and the readout with matrix-vector products only.
#
# ### Your turn 3: `sherman_morrison`
# Given `Ginv = G^-1`, a vector `k` and a weight `a > 0`, return `(G + a k k^T)^-1`:
# `G^-1 - a (G^-1 k)(G^-1 k)^T / (1 + a k^T G^-1 k)`. With any leading dims: the decode cell below updates
# both heads at once (`Ginv [1, 2, r, r]`, `k [1, 2, r]`), and `a` may be a float or one weight per head
# (a tensor of the leading shape).

# %%
def sherman_morrison(Ginv, k, a):
    """Ginv [..., r, r], k [..., r], a (a float or [...]) -> [..., r, r]"""
    # YOUR CODE HERE
    raise NotImplementedError


sherman_morrison = labs.exercise(sherman_morrison, "lab07")
lab07.check_sherman_morrison(sherman_morrison)

# %%
n_steps = 60 if FAST else 400
qd = torch.randn(1, n_steps, 2, r, generator=g)
kd = torch.nn.functional.normalize(torch.randn(1, n_steps, 2, r, generator=g), dim=-1)
vd = torch.randn(1, n_steps, 2, P, generator=g)
y_rec, _ = ska_recurrent(qd, kd, vd, mode="token")
state, g_inv, ys, drift = SKAState.zeros(1, 2, r, P, device=DEV), None, [], []
Gi_mine = (torch.eye(r, dtype=torch.float64) / 1e-3).expand(1, 2, r, r)   # G^-1 of eps I, both heads
for t in range(n_steps):
    y, state, g_inv = kska.decode(qd[:, t:t + 1].to(DEV), kd[:, t:t + 1].to(DEV), vd[:, t:t + 1].to(DEV), None, state, g_inv)
    ys.append(y.cpu())
    Gi_mine = sherman_morrison(Gi_mine, kd[:, t].double(), 1.0)               # [1, 2, r, r], k [1, 2, r]
    exact = torch.linalg.inv(state.G.double().cpu())
    drift.append(rel_err(exact, g_inv.cpu()))
err_dec = rel_err(y_rec, torch.cat(ys, 1))
print(f"decode kernel over {n_steps} tokens vs the token recurrence: rel. error {err_dec:.1e}")
print(f"your Sherman-Morrison chain (float64, both heads) vs the exact inverse after {n_steps} steps: "
      f"{rel_err(torch.linalg.inv(state.G.double().cpu()), Gi_mine):.1e}")
fig = go.Figure(go.Scatter(y=drift, mode="lines"))
fig.update_layout(height=280, xaxis_title="decode step", yaxis_title="rel. error of G^-1 (float32)", yaxis_type="log",
                  title="Sherman-Morrison in float32: how far the carried inverse drifts")
fig.show()
assert err_dec < 1e-3

# %% [markdown]
# ## 5. EchoKV's read path in one kernel
#
# A compressed EchoKV-lite cache (lab 06: our reconstruction of EchoKV from its abstract,
# [R11](../docs/claims.md#R11); EchoKV rebuilds discarded KV components from a retained subset,
# [K3](../docs/claims.md#K3)) rebuilds a layer's discarded heads from retained ones at every read: undo
# [RoPE](../docs/course.md#glossary) on the inputs, apply the maps, add the bias, re-apply RoPE. The kernel
# does it per (batch x discarded head, block of tokens); RoPE pairs dim i with i + D/2, so it loads each tile
# as two halves and rotates in registers. Inputs may be fp16/bf16 (cast to fp32 at load). The tile work is a
# jitted helper, `_rebuild_tile`, printed here; the kernel stores its result.

# %%
print(kernel_source(kecho_rebuild._rebuild_tile))
Tq, D, J, O = 37, 12, 3, 2
x = torch.randn(2, J, Tq, D, generator=g)
ang = torch.rand(Tq, D // 2, generator=g) * 6
ang = torch.cat([ang, ang], -1)
W, b = torch.randn(O, J, D, D, generator=g) / D**0.5, torch.randn(O, D, generator=g)
for dtype in (torch.float32, torch.float16):
    got = kecho.forward(*(t.to(DEV) for t in (x.to(dtype), ang.cos(), ang.sin(), W, b)), True)
    e = rel_err(rebuild_heads(x.to(dtype).float(), ang.cos(), ang.sin(), W, b, True), got)
    print(f"rebuild kernel vs twin, {dtype}: {e:.1e}")
    assert e < (1e-5 if dtype == torch.float32 else 2e-3)

# %% [markdown]
# Rebuilding is why a compressed cache decodes slowly (lab 06): at every step, for every past token and
# discarded head, rebuilding the key costs `2 J D^2` FLOPs (J retained inputs), the value as much again,
# where a full cache would have read `2 D` stored numbers. Two exact rewrites cut the work:
#
# * **values after**: the attention weights `p_t` sum to 1, so `sum_t p_t (sum_j x_jt W_j + b)` equals
#   `sum_j (sum_t p_t x_jt) W_j + b`: average the *retained* values, apply the value maps once.
#   No value row is rebuilt (`echo_tutor.echokv.ops.rebuild_attend(values="after")`).
# * **scores in registers**: `echo_kernels.echokv.scores` reuses `_rebuild_tile` and multiplies the rebuilt
#   key block by the queries at once, writing G scores per token instead of a D-wide key row.
#
# Both are checked below against materialising K and V, and the three PyTorch paths timed on this machine
# for one layer's two discarded heads at SmolLM2's sizes (J = 8 inputs, D = 64, 3 queries per head).

# %%
from echo_tutor.echokv.ops import rebuild_attend  # noqa: E402
from echo_tutor.echokv.readpath import read_case, read_paths  # noqa: E402
from echo_tutor.timing import median_seconds  # noqa: E402

case = read_case(300, 8, 2, 3, 64)
want_out = read_paths("cpu")["full"](case)()
out_after, _ = rebuild_attend(*case, values="after")
out_kernel, _ = rebuild_attend(*(c.to(DEV) for c in case), scores=kecho.scores)
print(f"values after vs materialised K, V: {rel_err(want_out, out_after):.1e}; "
      f"Triton scores + values after: {rel_err(want_out, out_kernel):.1e}")
assert max(rel_err(want_out, out_after), rel_err(want_out, out_kernel)) < 1e-5
Tr = 1024 if FAST else 4096
case = read_case(Tr, 8, 2, 3, 64)
with torch.inference_mode():
    read_ms = {n: median_seconds(make(case), 10) * 1e3 for n, make in read_paths("cpu").items()}
print(f"one layer's discarded heads at T={Tr}, CPU ({torch.get_num_threads()} threads), median ms: "
      + ", ".join(f"{n} {t:.2f} (x{t / read_ms['full']:.0f})" for n, t in read_ms.items()))
gbps = 2 * 2 * Tr * 64 * 4 / (read_ms["full"] / 1e3) / 1e9              # K and V of 2 heads, float32
gflops = 2 * 2 * Tr * (2 * 8 * 64 * 64) / (read_ms["rebuild K+V"] / 1e3) / 1e9
print(f"this CPU: the full read moved {gbps:.1f} GB/s, the rebuild ran at {gflops:.1f} GFLOP/s: "
      f"{gflops / gbps:.1f} FLOPs per byte, against the 128 the key rebuild needs per byte not stored")
fig = go.Figure(go.Bar(x=list(read_ms), y=list(read_ms.values()), marker_color=["gray", "indianred", "seagreen"]))
fig.update_layout(height=300, yaxis_title="ms per read (median of 10)", yaxis_type="log",
                  title=f"One decode read of two discarded heads, T={Tr}, on this CPU")
fig.show()
assert min(read_ms["rebuild K+V"], read_ms["values after"]) > 3 * read_ms["full"]

# %% [markdown]
# On a CPU both rebuild paths are far slower than reading stored heads (the bars are on a log axis; the cell
# prints this machine's ratios: between about x34 and x110 across our runs on 2-core machines, for example x46
# and x34 in one, far more when other jobs compete for the cores): the key
# rebuild, with its RoPE undo and redo on every retained input, dominates, and "values after" removes only the
# smaller part. That is the measured reason the compressed read cannot pay off on a CPU: the
# key rebuild alone needs 128 FLOPs per byte not stored (`2 J D^2` FLOPs against the `2 D` float32 numbers of
# K and V, J = 8, D = 64), and the cell above prints how many FLOPs this CPU did in the time it read a byte:
# a handful (the full read is a few MB that may sit in cache, so its rate flatters the memory, if anything).
#
# A GPU is different by its specifications: an H100 SXM's published peaks are about 990 TFLOP/s of dense fp16 tensor-core
# products (495 tf32) against 3.35 TB/s, 150-300 FLOPs per byte; its float32 CUDA cores about 67 TFLOP/s, 20
# per byte. With an fp16 cache the key rebuild needs 256 FLOPs per byte not stored, more than tf32's 148, and
# the scores kernel as written re-reads all J retained key heads for every discarded head. So we expect it to
# stay slower than a full cache even with tensor-core products (`precision="tf32"`), and far slower with
# float32 ones. Those are spec-sheet figures and an expectation, not measurements:
# `python benchmarks/echokv_read.py` measures every path on a GPU, and `make gpu-check` runs it.

# %% [markdown]
# ## 6. Benchmark
#
# Speed only means something on a GPU; `benchmarks/kernels.py` is the full benchmark (T up to 32k,
# r in {32, 64}, every solver, forward+backward, decode, bandwidth of the EchoKV kernel, the targets).
# Here a small version runs when a GPU is present; on CPU this cell says so. It times the chunk-mode forward
# (`B = 4, H = 8, r = P = 64`) through the reference `ska_chunked` and through `kska.forward` (the fused
# kernels of section 3b), and plots reference time divided by kernel time: above 1 the kernels are faster,
# below 1 slower. On every machine it also plots the one GPU measurement the project ships, made before the
# fused kernels existed: the **unfused** path of sections 2-3 (three kernels, the Cholesky in PyTorch, a
# dozen launches) at FULL sizes on an NVIDIA H200 (torch 2.11, Triton 3.6; `docs/results.md`, "Triton fast
# paths"). The fused kernels have not yet run on a GPU. The Echo paper's own kernel stops where our unfused
# path does, at the Cholesky, which it leaves in PyTorch and names (with the spectral normalisation) as the
# bottleneck ([E35](../docs/claims.md#E35)); section 3b's kernels move both on chip.
#
# **Predict first.** "Triton kernel" sounds like "faster", and a benchmark plot read with that word in
# mind is read wrongly: say what you expect of the unfused path on the H200 before the cell draws it.

# %%
H200_SPEED = {2048: 0.56, 8192: 0.38, 32768: 0.36}  # reference time / kernel time, forward, FULL sizes (docs/results.md)
guess_speed = labs.Prediction("On the one GPU measured (an H200), how did the unfused Triton SKA forward compare with the "
                              "PyTorch reference ska_chunked, at T = 2,048 to 32,768?",
                              ["faster at every length", "faster at some lengths, slower at others",
                               "slower at every length"])
guess_speed.show()

# %%
fig = go.Figure(go.Bar(x=[str(t) for t in H200_SPEED], y=list(H200_SPEED.values()), marker_color="gray",
                       name="NVIDIA H200, unfused kernels (shipped, FULL)"))
Ts = []
if DEV == "cuda":
    def cuda_time(fn, reps=10):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    Ts = [1024, 4096] if FAST else [2048, 8192, 32768]
    speed = []
    for Tb in Ts:
        qb = torch.randn(4, Tb, 8, 64, device="cuda")
        kb = torch.nn.functional.normalize(torch.randn(4, Tb, 8, 64, device="cuda"), dim=-1)
        vb = torch.randn(4, Tb, 8, 64, device="cuda")
        with torch.no_grad():
            tr = cuda_time(lambda: ska_chunked(qb, kb, vb, mode="chunk", chunk_size=64))
            tk = cuda_time(lambda: kska.forward(qb, kb, vb, mode="chunk", chunk_size=64))
        speed.append(tr / tk)
        print(f"T={Tb}: reference {tr * 1e3:.2f} ms, fused kernels {tk * 1e3:.2f} ms, "
              f"reference/kernels x{tr / tk:.2f} (below 1: the kernels are slower)")
    fig.add_bar(x=[str(t) for t in Ts], y=speed, name=f"{torch.cuda.get_device_name()}, fused kernels (this run)")
else:
    print("No GPU here: the kernels ran in Triton's interpreter, which checks correctness only; the figure shows the "
          "shipped H200 measurement of the unfused kernels.\nOn a GPU machine run `python benchmarks/kernels.py` (and "
          "this cell adds this GPU's bars for the fused kernels).")
fig.add_hline(y=1, line_dash="dot", annotation_text="as fast as the reference")
fig.update_xaxes(title_text="T", type="category", categoryorder="array",
                 categoryarray=[str(t) for t in sorted({*H200_SPEED, *Ts})])
fig.update_layout(height=340, yaxis_title="reference time / kernel time (forward)", barmode="group",
                  legend=dict(orientation="h", y=-0.3), title="Triton SKA forward against the reference")
fig.show()
print("shipped H200 measurement (unfused kernels), reference time / kernel time:",
      {T: f"x{v:.2f}" for T, v in H200_SPEED.items()})
faster = [v > 1 for v in H200_SPEED.values()]
if all(faster):
    answer = "faster at every length"
elif any(faster):
    answer = "faster at some lengths, slower at others"
else:
    answer = "slower at every length"
_ = guess_speed.reveal(answer)

# %% [markdown]
# **On the one GPU measured, the unfused kernels were slower**: x0.56 at `T = 2,048`, x0.38 at 8,192, x0.36
# at 32,768, forward only, and their backward was a recomputation through the reference. A dozen launches,
# per-chunk statistics written and read back, and a batched PyTorch Cholesky of tiny matrices between them:
# correct, not fast. That measurement is why section 3b exists (two kernels, the factorisation on chip, a
# Triton backward); how fast the fused path is on a GPU is not measured yet. If your GPU shows ratios below
# 1, say so in an issue with the output of `python benchmarks/kernels.py`: its profile section names where
# the time goes.
#
# On a GPU machine, `make gpu-check` runs the benchmark, every GPU-marked test and the labs in FULL mode
# (`docs/gpu.md`).


# %% [markdown]
# ## Your exercises
#
# Which of this lab's exercises pass. An exercise that is not done yet did not stop the lab: the cells after
# it used the reference solution. Fix one, run its cell again, then this one.

# %%
_ = labs.report("lab07")
