"""Lab 03's checkers, tried as an adversary would: the solution passes; each typical wrong answer, a function
right for a fixed number of leading dims only, and a call into the package that computes the answer are refused
with a message that says why."""

import math
import re

import numpy as np
import pytest
import torch

from echo_tutor.labs import ExerciseError, lab03


def refused(check, fn, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        check(fn)


@pytest.fixture
def fixed_seed(monkeypatch):
    """Pin the checkers' fresh seed (for the tests of a hint that needs a particular draw)."""
    def pin(seed):
        monkeypatch.setattr(lab03, "fresh_generator", lambda: (torch.Generator().manual_seed(seed), seed))
    return pin


# ------------------------------------------------------------------------------------------- gap_example
def gap_example(keys, values, distractors, order):  # a learner's batched answer
    n, G = keys.shape[-1], distractors.shape[-1]
    kv = torch.stack([keys, values], -1).flatten(-2)
    asked = torch.gather(keys, -1, order)
    qa = torch.stack([asked, torch.zeros_like(asked)], -1).flatten(-2)
    x = torch.cat([kv, distractors, qa], -1)
    y = torch.full_like(x, -100)
    y[..., 2 * n + G::2] = torch.gather(values, -1, order)
    return x, y


def gap_example_one_example(keys, values, distractors, order):  # right for a single example only
    n = keys.shape[0]
    kv = torch.stack([keys, values], dim=1).reshape(-1)
    qa = torch.stack([keys[order], torch.zeros_like(keys)], dim=1).reshape(-1)
    x = torch.cat([kv, distractors, qa])
    y = torch.full_like(x, -100)
    y[2 * n + distractors.shape[0]::2] = values[order]
    return x, y


def gap_example_loop(keys, values, distractors, order):  # right for zero and one leading dim only
    if keys.ndim == 1:
        return gap_example_one_example(keys, values, distractors, order)
    pairs = [gap_example_one_example(*a) for a in zip(keys, values, distractors, order)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def gap_example_zoology(keys, values, distractors, order):  # each query's value shown after it
    x, y = gap_example(keys, values, distractors, order)
    n, G = keys.shape[-1], distractors.shape[-1]
    x = x.clone()
    x[..., 2 * n + G + 1::2] = torch.gather(values, -1, order)
    return x, y


def gap_example_labels_on_values(keys, values, distractors, order):
    x, y = gap_example(keys, values, distractors, order)
    shifted = torch.full_like(y, -100)
    shifted[..., 1:] = y[..., :-1]
    return x, shifted


def gap_example_via_generator(keys, values, distractors, order):
    from echo_tutor.tasks import mqar_gap

    return mqar_gap(64, keys.shape[-1], distractors.shape[-1], 1, seed=0, show_values=False)


def gap_example_via_importlib(keys, values, distractors, order):
    import importlib

    gen = getattr(importlib.import_module("echo_tutor.tasks." + "associative"), "mqar" + "_gap")
    gen(64, 2, 0, 1, seed=0)
    return gap_example(keys, values, distractors, order)


def test_gap_example_solution_and_learner_pass():
    lab03.check_gap_example.__wrapped__(lab03._gap_example_solution)  # the solution, past the shortcut scan
    lab03.check_gap_example(gap_example)


@pytest.mark.parametrize("fn, msg", [
    (gap_example_one_example, "It was right with leading dims ()"),
    (gap_example_loop, "It was right with leading dims (), (3,) and is wrong with (2, 3)"),
    (gap_example_zoology, "Zoology's layout"),
    (gap_example_labels_on_values, "value tokens"),
    (lambda k, v, d, o: gap_example(k, v, d, o)[0], "return a pair"),
    (gap_example_via_generator, "mqar_gap"),
], ids=["one-example", "one-leading-dim", "values-shown", "labels-on-values", "not-a-pair", "generator"])
def test_gap_example_refuses(fn, msg):
    refused(lab03.check_gap_example, fn, msg)


def test_gap_example_refuses_a_generator_reached_at_run_time():
    refused(lab03.check_gap_example, gap_example_via_importlib, "the answer for you")


# ---------------------------------------------------------------------------------- elimination_accuracy
def test_elimination_accuracy_passes_as_list_tensor_or_array():
    lab03.check_elimination_accuracy.__wrapped__(lab03._elimination_accuracy_solution)
    lab03.check_elimination_accuracy(lambda n: 1.0 / torch.arange(n, 0, -1, dtype=torch.float64))
    lab03.check_elimination_accuracy(lambda n: 1.0 / np.arange(n, 0, -1))


@pytest.mark.parametrize("fn, msg", [
    (lambda n: [1.0 / n] * n, "ruled out"),
    (lambda n: [1.0 / (i + 1) for i in range(n)], "Reversed"),
    (lambda n: [1.0 / (n - i + 1) for i in range(n)], "Off by one"),
    (lambda n: [1.0 / 64] * n, "blind guess"),
    (lambda n: 1.0 / n, "list of n"),
    (lambda n: ["a"] * n, "should be a number"),
], ids=["all-bound", "reversed", "off-by-one", "blind", "scalar", "not-numbers"])
def test_elimination_accuracy_refuses(fn, msg):
    refused(lab03.check_elimination_accuracy, fn, msg)


def test_elimination_accuracy_refuses_the_solution_by_alias():
    sol = lab03._elimination_accuracy_solution

    def elimination_accuracy(n):
        return sol(n)
    refused(lab03.check_elimination_accuracy, elimination_accuracy, "solution")


# -------------------------------------------------------------------------------------------- cliff_gap
def cliff_gap(decay, g_ref, rho):  # a learner's answer: logs, the best head, the first crossing
    logr = torch.cat([torch.zeros_like(decay[..., :1, :]), decay.double().log().cumsum(-2)], -2).amax(-1)
    below = logr - logr[..., g_ref:g_ref + 1] <= math.log(rho)
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_cumprod(decay, g_ref, rho):  # products in float32: underflow
    R = torch.cat([torch.ones_like(decay[..., :1, :]), decay.cumprod(-2)], -2).amax(-1)
    below = R <= rho * R[..., g_ref:g_ref + 1]
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_mean_heads(decay, g_ref, rho):
    R = torch.cat([torch.zeros_like(decay[..., :1, :]), decay.double().log().cumsum(-2)], -2).exp().mean(-1)
    below = R <= rho * R[..., g_ref:g_ref + 1]
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_per_head(decay, g_ref, rho):
    logr = torch.cat([torch.zeros_like(decay[..., :1, :]), decay.double().log().cumsum(-2)], -2)
    below = (logr - logr[..., g_ref:g_ref + 1, :]).amax(-1) <= math.log(rho)
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_absolute(decay, g_ref, rho):
    logr = torch.cat([torch.zeros_like(decay[..., :1, :]), decay.double().log().cumsum(-2)], -2).amax(-1)
    below = logr <= math.log(rho)
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_inclusive(decay, g_ref, rho):  # R(g) with g + 1 factors
    logr = decay.double().log().cumsum(-2).amax(-1)
    below = logr - logr[..., g_ref:g_ref + 1] <= math.log(rho)
    return torch.where(below.any(-1), below.long().argmax(-1), -1)


def cliff_gap_never_is_L(decay, g_ref, rho):
    out = cliff_gap(decay, g_ref, rho)
    return torch.where(out < 0, decay.shape[-2], out)


def cliff_gap_2d(decay, g_ref, rho):  # written for [L, H]: dims counted from the front
    logr = torch.cat([torch.zeros(1, decay.shape[1], dtype=torch.float64), decay.double().log().cumsum(0)], 0).amax(1)
    below = logr - logr[g_ref] <= math.log(rho)
    return torch.where(below.any(), below.long().argmax(), -1)


def cliff_gap_3d(decay, g_ref, rho):  # [B, L, H] only, with a special case for one example
    if decay.ndim == 2:
        return cliff_gap_2d(decay, g_ref, rho)
    return torch.stack([cliff_gap_2d(d, g_ref, rho) for d in decay])


def cliff_gap_via_retention(decay, g_ref, rho):
    from echo_tutor.experiments import retention_after

    return retention_after(decay, decay, 0)


def test_cliff_gap_solution_and_learner_pass():
    for _ in range(5):
        lab03.check_cliff_gap.__wrapped__(lab03._cliff_gap_solution)
        lab03.check_cliff_gap(cliff_gap)


def test_cliff_gap_accepts_a_float64_product():
    def product(decay, g_ref, rho):
        R = torch.cat([torch.ones_like(decay[..., :1, :]), decay.double().cumprod(-2)], -2).amax(-1)
        below = R <= rho * R[..., g_ref:g_ref + 1]
        return torch.where(below.any(-1), below.long().argmax(-1), -1)
    lab03.check_cliff_gap(product)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("fn, msg", [
    (cliff_gap_cumprod, "underflow"),
    (cliff_gap_mean_heads, "mean over heads"),
    (cliff_gap_per_head, "compares each head with itself"),
    (cliff_gap_absolute, "The threshold is relative"),
    (cliff_gap_inclusive, "Off by one"),
    (cliff_gap_never_is_L, "return -1"),
    (cliff_gap_2d, "wrong"),
    (cliff_gap_3d, "It was right with leading dims (), (3,) and is wrong with (2, 3)"),
], ids=["cumprod", "mean", "per-head", "absolute", "inclusive", "never-L", "2d", "one-leading-dim"])
def test_cliff_gap_refuses(fixed_seed, seed, fn, msg):
    fixed_seed(seed)
    refused(lab03.check_cliff_gap, fn, msg)


def test_cliff_gap_refuses_the_package():
    refused(lab03.check_cliff_gap, cliff_gap_via_retention, "retention_after")
