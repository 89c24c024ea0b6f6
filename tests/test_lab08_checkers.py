"""Lab 08's checkers, tried as an adversary would: the solutions pass; each typical wrong answer is refused
with the message that names it; the project's code that computes the answer (by name, by alias, by getattr
or importlib) is refused; ``convert_layer`` may use ``ConvertedAttention`` (allowed) but not ``new_mixer``."""

import copy
import importlib
import re

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab08

pytest.importorskip("transformers")

from echo_tutor.convert import ConvertedAttention, MixerSpec  # noqa: E402
from echo_tutor.convert.layers import new_mixer  # noqa: E402

S = lab08._visible_parts_solution
B = lab08._converted_state_bytes_solution


# ------------------------------------------------------------------------------------------- visible_parts
def parts_transposed(T, w, a):
    return S(T, w, a).T


def parts_future(T, w, a):
    p = S(T, w, a)
    return torch.where(p > 0, p, 2)


def parts_off_by_one(T, w, a):
    return S(T, w + 1, a)


def parts_sinks_in_stats(T, w, a):
    p = S(T, w, a)
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    p[(s < a) & (t - s >= w)] = 2
    return p


def parts_forget_old(T, w, a):
    p = S(T, w, a)
    p[p == 2] = 0
    return p


def parts_swapped(T, w, a):
    p = S(T, w, a)
    return torch.where(p == 0, 0, 3 - p)


def parts_loops_sinks_after_window(T, w, a):
    """Right while the sinks are fewer than the window (the lab's figure); wrong when they are more."""
    p = S(T, w, min(a, w))
    return p


def parts_via_mask(T, w, a):
    from echo_tutor.convert.layers import causal_mask
    return (causal_mask(T)[0, 0] == 0).long()


def parts_via_importlib(T, w, a):
    mod = importlib.import_module("echo_tutor.convert." + "layers")
    m = getattr(mod, "causal" + "_mask")(T)[0, 0] == 0
    return m.long() * 2


# ----------------------------------------------------------------------------------- converted_state_bytes
def bytes_pending_for_sinks(W, A, r, H, D):
    return B(W, A, r, H, D) + A * H * r * 4


def bytes_values_twice(W, A, r, H, D):
    return B(W, A, r, H, D) + W * H * D * 4


def bytes_c_square(W, A, r, H, D):
    return B(W, A, r, H, D) - H * (D - r) * r * 4


def bytes_via_library(W, A, r, H, D):
    mixer = importlib.import_module("echo_tutor.convert.mixer")
    spec = importlib.import_module("echo_tutor.convert.spec")
    return getattr(mixer.ConvertedAttention, "state" + "_nbytes_for")(spec.MixerSpec("window+ska", window=W, sinks=A, rank=r), H, D)


# ------------------------------------------------------------------------------------------- convert_layer
def llama_layout(model):
    c = model.config
    return int(c.num_attention_heads), int(c.num_key_value_heads), int(c.head_dim)


def convert_smollm2_numbers(model, layer, spec):
    return ConvertedAttention(model.model.layers[layer].self_attn, spec, n_q_heads=9, n_kv_heads=3, head_dim=64)


def convert_no_gqa(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    return ConvertedAttention(model.model.layers[layer].self_attn, spec, n_q_heads=n_q, n_kv_heads=n_q, head_dim=hd)


def convert_hidden_over_heads(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    hd = model.config.hidden_size // n_q
    return ConvertedAttention(model.model.layers[layer].self_attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)


def convert_wrong_layer(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    other = (layer + 1) % len(model.model.layers)
    return ConvertedAttention(model.model.layers[other].self_attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)


def convert_a_copy(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    return ConvertedAttention(copy.deepcopy(model.model.layers[layer].self_attn), spec, n_q_heads=n_q,
                              n_kv_heads=n_kv, head_dim=hd)


def convert_fresh(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    attn = copy.deepcopy(model.model.layers[layer].self_attn)
    for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
        lin = getattr(attn, nm)
        setattr(attn, nm, torch.nn.Linear(lin.in_features, lin.out_features, bias=lin.bias is not None))
    return ConvertedAttention(attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)


def convert_and_swap_in(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    m = ConvertedAttention(model.model.layers[layer].self_attn, spec, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)
    model.model.layers[layer].self_attn = m
    return m


def convert_own_spec(model, layer, spec):
    n_q, n_kv, hd = llama_layout(model)
    return ConvertedAttention(model.model.layers[layer].self_attn, MixerSpec("window+ska", window=64, sinks=4, rank=8),
                              n_q_heads=n_q, n_kv_heads=n_kv, head_dim=hd)


def convert_returns_spec(model, layer, spec):
    return spec


def convert_via_new_mixer(model, layer, spec):
    return new_mixer(model, layer, spec)


def convert_via_importlib(model, layer, spec):
    mod = importlib.import_module("echo_tutor.convert." + "layers")
    return getattr(mod, "new" + "_mixer")(model, layer, spec)


# -------------------------------------------------------------------------------------------------- loo_error
def _included(G, C, k, v):
    Gi = torch.linalg.inv(G)
    return ((v - k @ (C @ Gi).transpose(-1, -2)) ** 2).sum(-1), ((k @ Gi) * k).sum(-1)


def loo_included_residual(G, C, k, v):
    return _included(G, C, k, v)[0]


def loo_not_squared(G, C, k, v):
    res, h = _included(G, C, k, v)
    return res / (1 - h)


def loo_plus(G, C, k, v):
    res, h = _included(G, C, k, v)
    return res / (1 + h) ** 2


def loo_leverage_without_inverse(G, C, k, v):
    res, _ = _included(G, C, k, v)
    return res / (1 - ((k @ G) * k).sum(-1)) ** 2


def loo_norm(G, C, k, v):
    res, h = _included(G, C, k, v)
    return res.sqrt() / (1 - h).abs()


def loo_refit(G, C, k, v):  # right, another way: the statistics with each pair's terms taken out
    out = []
    for j in range(k.shape[-2]):
        kj, vj = k[..., j, :], v[..., j, :]
        Gj, Cj = G - kj[..., :, None] * kj[..., None, :], C - vj[..., :, None] * kj[..., None, :]
        out.append(((vj - (Cj @ torch.linalg.solve(Gj, kj[..., :, None]))[..., 0]) ** 2).sum(-1))
    return torch.stack(out, -1)


def loo_via_mixer(G, C, k, v):
    from echo_tutor.convert.fixed_state import WindowSKAAttention
    return WindowSKAAttention._recall_error(None, (torch.linalg.inv(G), C @ torch.linalg.inv(G)), k, v)


WRONG = [
    (lab08.check_loo_error, loo_included_residual, "include* each pair"),
    (lab08.check_loo_error, loo_not_squared, "(1 - h)^2"),
    (lab08.check_loo_error, loo_plus, "larger, not smaller"),
    (lab08.check_loo_error, loo_leverage_without_inverse, "with the inverse"),
    (lab08.check_loo_error, loo_norm, "squared norm"),
    (lab08.check_loo_error, lambda G, C, k, v: loo_refit(G, C, k, v)[..., :1], "wrong shape"),
    (lab08.check_visible_parts, parts_transposed, "future"),
    (lab08.check_visible_parts, parts_future, "future"),
    (lab08.check_visible_parts, parts_off_by_one, "Off by one"),
    (lab08.check_visible_parts, parts_sinks_in_stats, "never enter the statistics"),
    (lab08.check_visible_parts, parts_forget_old, "not forgotten"),
    (lab08.check_visible_parts, parts_swapped, "swapped"),
    (lab08.check_visible_parts, parts_loops_sinks_after_window, "sinks"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, 0, r, H, D), "sinks are missing"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - W * H * r * 4, "stored after RoPE"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - H * r * 4, "k_prev"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) // 4, "elements"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) // 2, "float16"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - (W + A) * H * D * 4, "factor 2"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) - H * r * r * 4, "M is missing"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: B(W, A, r, H, D) + 8 * H * (2 * r * r + D * r + r), "per KV head"),
    (lab08.check_converted_state_bytes, lambda W, A, r, H, D: float(B(W, A, r, H, D)) + 0.5, "return an int"),
    (lab08.check_converted_state_bytes, bytes_pending_for_sinks, "sinks never leave"),
    (lab08.check_converted_state_bytes, bytes_values_twice, "counted twice"),
    (lab08.check_converted_state_bytes, bytes_c_square, "head_dim x r"),
    (lab08.check_convert_layer, convert_smollm2_numbers, "SmolLM2's head numbers"),
    (lab08.check_convert_layer, convert_no_gqa, "Grouped-query attention"),
    (lab08.check_convert_layer, convert_hidden_over_heads, "hidden_size / heads is not always the head size"),
    (lab08.check_convert_layer, convert_wrong_layer, "not layer"),
    (lab08.check_convert_layer, convert_a_copy, "a copy of the layer's"),
    (lab08.check_convert_layer, convert_fresh, "carry what pretraining learned"),
    (lab08.check_convert_layer, convert_and_swap_in, "changed the model"),
    (lab08.check_convert_layer, convert_own_spec, "you were given"),
    (lab08.check_convert_layer, convert_returns_spec, "return the ConvertedAttention you built"),
]


@pytest.mark.parametrize("check,wrong,msg", WRONG, ids=[f"{w[0].__name__}-{i}" for i, w in enumerate(WRONG)])
def test_typical_wrong_answers_are_refused_with_their_message(check, wrong, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        check.__wrapped__(wrong)  # (the lambdas use the solutions, which the name scan refuses first)


@pytest.mark.parametrize("check,wrong", [(c, w) for c, w, _ in WRONG if not w.__name__.startswith("<")],
                         ids=[w.__name__ for c, w, _ in WRONG if not w.__name__.startswith("<")])
def test_the_same_wrong_answers_are_refused_through_the_guard(check, wrong):
    with pytest.raises(ExerciseError):
        check(wrong)


@pytest.mark.parametrize("check,solution", [(lab08.check_visible_parts, S), (lab08.check_converted_state_bytes, B),
                                            (lab08.check_convert_layer, lab08._convert_layer_solution),
                                            (lab08.check_loo_error, lab08._loo_error_solution)])
def test_the_solutions_pass(check, solution):
    assert check.__wrapped__(solution) is None
    with pytest.raises(ExerciseError, match="lab's own solution"):
        check(solution)


def test_a_refit_without_each_pair_passes_loo_error():
    lab08.check_loo_error(loo_refit)  # through the guard: torch alone, another correct route


def test_a_learners_right_answer_passes_with_the_allowed_routines():
    def convert_layer(model, layer, spec):
        c = model.config
        return ConvertedAttention(model.model.layers[layer].self_attn, spec, n_q_heads=c.num_attention_heads,
                                  n_kv_heads=c.num_key_value_heads, head_dim=c.head_dim)

    lab08.check_convert_layer(convert_layer)


@pytest.mark.parametrize("check,student,what", [
    (lab08.check_visible_parts, parts_via_mask, "causal_mask"),
    (lab08.check_visible_parts, parts_via_importlib, "echo_tutor.convert.layers.causal_mask"),
    (lab08.check_converted_state_bytes, bytes_via_library, "ConvertedAttention"),
    (lab08.check_convert_layer, convert_via_new_mixer, "new_mixer"),
    (lab08.check_convert_layer, convert_via_importlib, "echo_tutor.convert.layers.new_mixer"),
    (lab08.check_loo_error, loo_via_mixer, "WindowSKAAttention"),
])
def test_library_shortcuts_are_refused(check, student, what):
    with pytest.raises(ExerciseError, match="answer for you") as e:
        check(student)
    assert what in str(e.value)
