"""Lab 08 (Echo meets SmolLM2): exercises, checkers and solutions.

1. ``visible_parts(T, window, sinks) -> int64 [T, T]``: what query t reads of token s in a converted
   ``window+ska`` layer: 0 nothing (the future), 1 the softmax (the first ``sinks`` tokens and the last
   ``window`` tokens, ``t - window < s <= t``), 2 the SKA statistics (everything else in the past).
2. ``converted_state_bytes(window, sinks, rank, n_kv_heads, head_dim) -> int``: the float32 bytes of one
   converted ``window+ska`` layer's decode state (batch 1) once its window is full. The learner works out what
   the decode step must keep: the K and V rows of the sinks and the window, the key features of the window
   tokens waiting to enter the statistics (the window's keys are stored after RoPE, the features are made
   from keys before it), and per KV head G, M (r x r each), C (head_dim x r) and the previous key (r).
3. ``convert_layer(model, layer, spec) -> ConvertedAttention``: one attention layer of a Llama-style model
   converted to the mixer ``spec``, reading with that layer's own q/k/v/o projections and the model's head
   layout (grouped-query attention, head size), not put into the model. Checked on two small random Llamas
   whose head layouts differ from SmolLM2's (one with ``head_dim != hidden_size / heads``): the projections
   must be the layer's own modules, and on fewer tokens than the window the mixer must equal the layer's
   attention. ``ConvertedAttention`` and ``MixerSpec`` are allowed; ``new_mixer`` (which does it) is not.
4. ``loo_error(G, C, k, v) -> [..., m]``: how badly SKA's ridge statistics recall pairs that are *written in
   them*, as if they were not: ``|v - C G^-1 k|^2 / (1 - h)^2`` with the leverage ``h = k^T G^-1 k`` (the
   leave-one-out residual, the score of the sparse cache). ``G [..., r, r]`` (``eps I`` included), ``C [..., D, r]``,
   ``k [..., m, r]``, ``v [..., m, D]``, any leading dims. Checked against the ridge refitted without each pair
   (the statistics with the pair's terms taken out), on fresh inputs and the lab's shapes; the mixers' own
   scoring is refused.
"""

import torch

from ..convert import ConvertedAttention, MixerSpec
from ..convert.layers import layer_inputs, original_attention
from ..echokv.model import tiny_gqa_config
from . import ExerciseError, NotAttempted, call_student, checker, expect_tensor, fresh_generator, passed

__all__ = [
    "_converted_state_bytes_solution", "_convert_layer_solution", "_loo_error_solution", "_visible_parts_solution",
    "check_converted_state_bytes", "check_convert_layer", "check_loo_error", "check_visible_parts", "LATER_PARTS",
    "LATER_LOO",
]

# The (T, window, sinks) the lab's later cells call visible_parts with (the heat map of section 1).
LATER_PARTS = ((96, 16, 4),)
# The shapes the lab's later cells call loo_error with: SmolLM2's 3 KV heads, r = 32, D = 64, every old token of
# a 1,024-token prompt at once (section 7's lever), and one batch of 2.
LATER_LOO = (((1, 3), 32, 64, 955), ((2, 3), 32, 64, 5))


def _visible_parts_solution(T, window, sinks):
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    past = s <= t
    soft = past & ((t - s < window) | (s < sinks))
    parts = torch.zeros(T, T, dtype=torch.int64)
    parts[past] = 2
    parts[soft] = 1
    return parts


def _converted_state_bytes_solution(window, sinks, rank, n_kv_heads, head_dim):
    rows = 2 * (window + sinks) * n_kv_heads * head_dim  # K and V of the sinks and the window
    pending = window * n_kv_heads * rank  # key features of window tokens, written when they leave
    stats = n_kv_heads * (2 * rank * rank + head_dim * rank + rank)  # G, M, C, k_prev
    return 4 * (rows + pending + stats)


def _loo_error_solution(G, C, k, v):
    Gi = torch.linalg.inv(G)                                       # [..., r, r]
    pred = k @ (C @ Gi).transpose(-1, -2)                          # [..., m, D]: C G^-1 k for every pair
    h = ((k @ Gi) * k).sum(-1)                                     # [..., m]: the leverage k^T G^-1 k
    return ((v - pred) ** 2).sum(-1) / (1 - h) ** 2


def _convert_layer_solution(model, layer, spec):
    c = model.config
    n_q = int(c.num_attention_heads)
    n_kv = int(getattr(c, "num_key_value_heads", None) or n_q)          # grouped-query attention: fewer KV heads
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // n_q)  # not always hidden / heads
    attn = model.model.layers[layer].self_attn                           # the layer's own q/k/v/o, shared
    return ConvertedAttention(attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=head_dim)


# ------------------------------------------------------------------------------------------ visible_parts
def _parts_hint(out: torch.Tensor, want: torch.Tensor, T: int, w: int, a: int) -> str:
    t = torch.arange(T)[:, None]
    s = torch.arange(T)[None, :]
    if (out[s > t] != 0).any():
        return " A query reads nothing of the future: parts[t, s] = 0 for s > t."
    if torch.equal(out.T, want):
        return " Rows are queries t and columns tokens s: yours is transposed."
    if (out[want == 1] == 2).any() and (out[want == 2] == 1).any():
        return " Parts 1 and 2 are swapped somewhere: 1 is the softmax (sinks and window), 2 the statistics."
    if a and (out[:, :a][want[:, :a] > 0] != 1).any():
        return " The sinks (the first `sinks` tokens) stay in the softmax for every later query; they never enter the statistics."
    if any(torch.equal(out, _visible_parts_solution(T, w + d, a)) for d in (-1, 1)):
        return " Off by one at the window's edge: the softmax sees exactly the last `window` tokens, t - window < s <= t."
    if (out[want == 2] == 0).any():
        return " Tokens older than the window are not forgotten: the statistics hold them (part 2)."
    return ""


@checker(forbid=("ConvertedAttention", "state_nbytes", "state_nbytes_for", "mixer_bytes", "state_bytes", "causal_mask"))
def check_visible_parts(fn) -> None:
    """Check ``fn(T, window, sinks) -> int [T, T]`` on random cases, the edge cases (no sinks, a window longer
    than T, a window of 1, more sinks than the window, more sinks than T) and the lab's own (96, 16, 4)."""
    name = "visible_parts"
    g, seed = fresh_generator()
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    cases = [(rnd(12, 30), rnd(2, 6), rnd(1, 4)), (rnd(30, 50), rnd(5, 12), rnd(0, 6)),
             (10, 3, 0), (8, 20, 2), (9, 1, 4), (12, 2, 5), (5, 2, 7), *LATER_PARTS]
    for T, w, a in cases:
        out = call_student(name, fn, T, w, a)
        if isinstance(out, torch.Tensor) and not out.is_floating_point():
            out = out.double()  # expect_tensor checks floating tensors; the values are compared exactly below
        out = expect_tensor(name, out, (T, T), "[T, T] (query t, token s)").long()
        want = _visible_parts_solution(T, w, a)
        if torch.equal(out, want):
            continue
        raise ExerciseError(f"{name}: wrong parts for T={T}, window={w}, sinks={a} (seed {seed}): "
                            f"{int((out != want).sum())} of {T * T} entries differ.{_parts_hint(out, want, T, w, a)}")
    return passed(name)


# ---------------------------------------------------------------------------------- converted_state_bytes
@checker(forbid=("ConvertedAttention", "state_nbytes", "state_nbytes_for", "mixer_bytes", "state_bytes", "SKAState", "MixerState",
                 "kv_bytes", "nbytes"))
def check_converted_state_bytes(fn) -> None:
    """Check ``fn(window, sinks, rank, n_kv_heads, head_dim) -> int`` against exact integer arithmetic: the lab's
    SmolLM2 case, three random ones, no sinks, and a rank larger than the head size."""
    name = "converted_state_bytes"
    g, seed = fresh_generator()
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    cases = [(64, 4, 32, 3, 64), *[(rnd(5, 40), rnd(1, 5), rnd(3, 20), rnd(1, 5), rnd(4, 33)) for _ in range(3)],
             (rnd(5, 40), 0, rnd(3, 20), rnd(1, 5), rnd(4, 33)), (16, 2, 48, 2, 24)]
    failures = []  # (message, the typical mistakes it matches): the first unambiguous one is reported
    for W, A, r, H, D in cases:
        out = call_student(name, fn, W, A, r, H, D)
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if isinstance(out, float) and out.is_integer():
            out = int(out)
        if isinstance(out, bool) or not isinstance(out, int):
            raise ExerciseError(f"{name}: return an int number of bytes, got {out!r}")
        want = _converted_state_bytes_solution(W, A, r, H, D)
        if out == want:
            continue
        rows, pend = 2 * (W + A) * H * D * 4, W * H * r * 4
        stats = H * (2 * r * r + D * r + r) * 4
        typical = {
            "the K and V rows of the sinks are missing (the first `sinks` tokens are kept too)": want - 2 * A * H * D * 4,
            "only K or only V rows: the window keeps both (factor 2)": want - rows // 2,
            "the key features waiting to enter the statistics (window x n_kv_heads x rank) are missing: the "
            "window's K rows are stored after RoPE, and the statistics are made from features of the key before "
            "it, so a token's features must wait with it": want - pend,
            "key features are counted for the sinks too: the sinks never leave the softmax, so only the window's "
            "tokens wait to enter the statistics": want + A * H * r * 4,
            "the window's values are counted twice: a token's value, needed for C when it leaves, is already in "
            "the window's V rows": want + W * H * D * 4,
            "the previous key k_prev (r per KV head, for M's next term) is missing": want - H * r * 4,
            "M is missing: SKA keeps G and M, both r x r": want - H * r * r * 4,
            "C is counted as r x r: it maps features (r) to values (head_dim), head_dim x r": want - H * (D - r) * r * 4,
            "counted in float16 (2 bytes); the state is float32": want // 2,
            "counted in elements, not bytes (x4 for float32)": want // 4,
            "the statistics are counted per query head: they are per KV head (the query heads of a group share them)":
                want + 2 * stats,
        }
        hits = [h for h, v in typical.items() if out == v and v != want]
        failures.append((f"{name}: {out} bytes for window={W}, sinks={A}, rank={r}, n_kv_heads={H}, head_dim={D} "
                         f"(seed {seed}); expected {want}.", hits))
    if not failures:
        return passed(name)
    msg, hits = next((f for f in failures if len(f[1]) == 1), failures[0])
    raise ExerciseError(msg + (f" It looks like {'; or '.join(hits)}." if hits else ""))


# ------------------------------------------------------------------------------------------ convert_layer
def _small_llama(seed: int, **overrides):
    """A small random Llama with grouped-query attention (``tiny_gqa_config`` with ``overrides``), built without
    touching the global random state."""
    from transformers import LlamaForCausalLM   # the echokv extra

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_gqa_config(**overrides))
    return model.eval().requires_grad_(False)


# (config overrides, spec arguments): the default small Llama (4 query heads, 2 KV heads of 16) with a
# window+ska mixer, and one whose head size is not hidden_size / heads (4 heads of 24 in a 64-wide model)
# with a window+linear mixer.
_CONVERT_CASES = (({}, dict(variant="window+ska", window=8, sinks=2, rank=8, power_steps=1)),
                  (dict(head_dim=24, num_hidden_layers=3), dict(variant="window+linear", window=6, sinks=1, rank=8)))


def _convert_hint(mixer, model, layer) -> str:
    """What is wrong with a ConvertedAttention built for ``model``'s layer ``layer`` (or "")."""
    c = model.config
    layers = model.model.layers
    attn = layers[layer].self_attn
    for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
        mine = getattr(mixer, nm, None)
        if mine is getattr(attn, nm):
            continue
        other = next((i for i, lay in enumerate(layers) if getattr(lay.self_attn, nm) is mine), None)
        if other is not None:
            return (f" Its {nm} is layer {other}'s, not layer {layer}'s: build it from "
                    f"model.model.layers[{layer}].self_attn.")
        same = isinstance(mine, torch.nn.Linear) and mine.weight.shape == getattr(attn, nm).weight.shape and bool(
            torch.equal(mine.weight, getattr(attn, nm).weight))
        if same:
            return (f" Its {nm} is a copy of the layer's: pass the layer's own attention module, so that the converted "
                    "layer shares its projections (frozen) instead of holding a second copy of them.")
        return (f" Its {nm} is not the layer's: a converted layer starts from the layer's own q/k/v/o projections, "
                "which carry what pretraining learned (pass model.model.layers[i].self_attn).")
    n_q = int(c.num_attention_heads)
    n_kv = int(getattr(c, "num_key_value_heads", None) or n_q)
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // n_q)
    if (getattr(mixer, "n_q", None), getattr(mixer, "n_kv", None), getattr(mixer, "head_dim", None)) == (9, 3, 64):
        return (" Those are SmolLM2's head numbers (9, 3, 64): read the head layout from the model you are given "
                "(model.config), so that the function converts any Llama-style model.")
    if getattr(mixer, "n_kv", None) != n_kv:
        return (f" Grouped-query attention: this model has {n_kv} KV heads for {n_q} query heads "
                f"(config.num_key_value_heads); n_kv_heads = {getattr(mixer, 'n_kv', None)} is not that.")
    if getattr(mixer, "n_q", None) != n_q:
        return f" The model has {n_q} query heads (config.num_attention_heads)."
    if getattr(mixer, "head_dim", None) != hd:
        return (f" The head size here is {hd} (config.head_dim, the q_proj's width over the heads), not "
                f"{getattr(mixer, 'head_dim', None)}: hidden_size / heads is not always the head size.")
    return ""


@checker(forbid=("new_mixer", "load_mixer", "fit_layer", "shipped_mixers", "converted"),
         allow=("ConvertedAttention", "MixerSpec", "parse_variant", "echo_tutor.convert.mixer.", "echo_tutor.convert.fixed_state.",
                "echo_tutor.convert.spec."))
def check_convert_layer(fn) -> None:
    """Check ``fn(model, layer, spec) -> ConvertedAttention`` on two small random Llamas whose head layouts are
    not SmolLM2's, at a random layer each: the layer's own projections, the model's head layout, the spec
    given, the model left as it was, and the converted layer equal to the attention on fewer tokens than
    its window (nothing is older than the window, so nothing differs)."""
    name = "convert_layer"
    g, seed = fresh_generator()
    for overrides, spec_kw in _CONVERT_CASES:
        model = _small_llama(seed, **overrides)
        layers = model.model.layers
        layer = int(torch.randint(0, len(layers), (1,), generator=g))
        spec = MixerSpec(**spec_kw)
        before = [lay.self_attn for lay in layers]
        where = (f"a small Llama with {model.config.num_attention_heads} query heads, "
                 f"{model.config.num_key_value_heads} KV heads of {model.config.head_dim}, layer {layer}, "
                 f"{spec.label} (seed {seed})")
        mixer = call_student(name, fn, model, layer, spec)
        if not isinstance(mixer, ConvertedAttention):
            raise ExerciseError(f"{name}: return the ConvertedAttention you built ({where}), got "
                                f"{type(mixer).__name__}.")
        moved = [i for i, (lay, old) in enumerate(zip(layers, before)) if lay.self_attn is not old]
        if moved:
            raise ExerciseError(f"{name}: your function changed the model (layer {moved[0]}'s attention was replaced; "
                                f"{where}). Return the converted layer and leave the model as it is: "
                                "`with converted(model, {layer: mixer}):` swaps it in for a block and puts the "
                                "original back after.")
        if mixer.spec != spec:
            raise ExerciseError(f"{name}: the mixer's spec is {mixer.spec.label}, not the {spec.label} you were "
                                f"given ({where}).")
        hint = _convert_hint(mixer, model, layer)
        if hint:
            raise ExerciseError(f"{name}: not layer {layer}'s attention converted ({where}).{hint}")
        T = spec.window  # every token within the window: the converted layer must be the attention itself
        x = torch.randn(2, T, model.config.hidden_size, generator=g)
        rope = layer_inputs(model, T, "cpu")
        with torch.no_grad():
            want = original_attention(layers[layer].self_attn, x, rope)
            got = mixer(x, position_embeddings=rope)[0]
        err = float((got - want).norm() / want.norm())
        if not err < 1e-5:
            raise ExerciseError(f"{name}: on {T} tokens (no more than the window) a converted layer reads exactly "
                                f"what the attention read, but yours is off by {err:.2g} (relative; {where}).")
    return passed(name)


# ------------------------------------------------------------------------------------------------ loo_error
def _loo_case(g: torch.Generator, lead: tuple[int, ...], r: int, D: int, m: int, n_extra: int, eps: float):
    """Statistics of ``n_extra`` background pairs plus the ``m`` pairs asked about (all written in), and what a
    ridge fitted without each asked pair predicts for it: ``(G, C, k, v, want)``."""
    kb = torch.randn(*lead, n_extra, r, generator=g, dtype=torch.float64)
    vb = torch.randn(*lead, n_extra, D, generator=g, dtype=torch.float64)
    k = torch.randn(*lead, m, r, generator=g, dtype=torch.float64)
    v = 3 * torch.randn(*lead, m, D, generator=g, dtype=torch.float64)
    eye = eps * torch.eye(r, dtype=torch.float64)
    G = eye + kb.transpose(-1, -2) @ kb + k.transpose(-1, -2) @ k
    C = vb.transpose(-1, -2) @ kb + v.transpose(-1, -2) @ k
    want = []
    for j in range(m):  # refit without pair j: take its terms out of G and C
        kj, vj = k[..., j, :], v[..., j, :]
        Gj = G - kj[..., :, None] * kj[..., None, :]
        Cj = C - vj[..., :, None] * kj[..., None, :]
        pred = (Cj @ torch.linalg.solve(Gj, kj[..., :, None]))[..., 0]
        want.append(((vj - pred) ** 2).sum(-1))
    return G.float(), C.float(), k.float(), v.float(), torch.stack(want, -1).float()


def _loo_hint(out, G, C, k, v, want) -> str:
    Gi = torch.linalg.inv(G.double())
    pred = k.double() @ (C.double() @ Gi).transpose(-1, -2)
    res = ((v.double() - pred) ** 2).sum(-1)
    h = ((k.double() @ Gi) * k.double()).sum(-1)
    near = lambda x: torch.allclose(out.double(), x, rtol=1e-3, atol=1e-5)  # noqa: E731
    if near(res):
        return (" That is the residual of statistics that *include* each pair, which fit it partly by itself (its"
                " leverage h = k^T G^-1 k): a pair only the cache can recall looks recalled. Divide the residual"
                " vector by 1 - h.")
    if near(res / (1 - h)):
        return " The residual *vector* is divided by 1 - h, so its squared norm by (1 - h)^2."
    if near(res / (1 + h) ** 2) or near(res * (1 - h) ** 2):
        return " Taking the pair out makes the error larger, not smaller: divide by (1 - h)^2."
    h_wrong = ((k.double() @ G.double()) * k.double()).sum(-1)
    if near(res / (1 - h_wrong) ** 2):
        return " The leverage is k^T G^-1 k (with the inverse), not k^T G k."
    if near(want.double().sqrt()):
        return " Return the squared norm of the residual, not its norm."
    return ""


@checker(forbid=("_recall_error", "_recall_stats", "_recall_stats_seq", "sparse_trace", "_sparse_visible", "_choose",
                 "ska_readout", "lstsq"))
def check_loo_error(fn) -> None:
    """Check ``fn(G, C, k, v) -> [..., m]`` against the ridge refitted without each pair (float64), on random
    statistics of background pairs plus the pairs asked about: a plain case, a tiny ridge (leverage near 1),
    square ``C`` (``D = r``), and the lab's later shapes (``LATER_LOO``)."""
    name = "loo_error"
    g, seed = fresh_generator()
    cases = [((2,), 6, 5, 4, 12, 0.1), ((), 4, 4, 3, 5, 1e-2), ((3,), 5, 7, 2, 20, 1.0),
             *[(lead, r, D, m, 40, 1e-2) for lead, r, D, m in LATER_LOO]]
    for lead, r, D, m, n_extra, eps in cases:
        G, C, k, v, want = _loo_case(g, lead, r, D, m, n_extra, eps)
        where = (f"G {list(G.shape)}, C {list(C.shape)}, k {list(k.shape)}, v {list(v.shape)}, eps {eps}, "
                 f"seed {seed}")
        out = call_student(name, fn, G.clone(), C.clone(), k.clone(), v.clone())
        expect_tensor(name, out, tuple(want.shape), f"[..., m], one error per pair ({where})")
        if not torch.allclose(out.float(), want, rtol=2e-3, atol=1e-4):
            err = float(((out.float() - want).abs() / want.abs().clamp(min=1e-6)).max())
            raise ExerciseError(f"{name}: not the error of a ridge fitted without each pair (largest relative "
                                f"difference {err:.2g}; {where}).{_loo_hint(out, G, C, k, v, want)}")
    return passed(name)
