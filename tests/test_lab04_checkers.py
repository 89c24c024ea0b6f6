"""Lab 04's checkers, tried as an adversary would: the solution passes; each typical wrong answer, a function
right for a fixed number of leading dims only, and a call into the package that computes the answer are refused
with a message that says why. For the open-ended paired ablation: a paired design with a right interval and
verdict passes; unpaired or incomplete records, a wrong interval, and a verdict the interval does not support
are refused; so are the package's statistics and experiment runners."""

import math
import re

import numpy as np
import pytest
import torch

from echo_tutor.labs import ExerciseError, lab04


def refused(check, fn, msg):
    with pytest.raises(ExerciseError, match=re.escape(msg)):
        check(fn)


# ------------------------------------------------------------------------------------------ dmd_operator
def dmd_operator(X, Y, eps):  # a learner's batched answer
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    return torch.linalg.solve(X.mT @ X + eps * eye, X.mT @ Y).mT


def dmd_operator_2d(X, Y, eps):  # written for one [N, d] pair: .T reverses every dim
    return (Y.T @ X) @ torch.linalg.inv(X.T @ X + eps * torch.eye(X.shape[1], dtype=X.dtype))


def dmd_operator_3d(X, Y, eps):  # right for zero and one leading dim
    if X.ndim == 2:
        return dmd_operator_2d(X, Y, eps)
    return torch.einsum("bni,bnj->bij", Y, X) @ torch.linalg.inv(
        torch.einsum("bni,bnj->bij", X, X) + eps * torch.eye(X.shape[-1], dtype=X.dtype))


def dmd_operator_via_package(X, Y, eps):
    from echo_tutor.koopman import dmd

    return dmd(X, Y, eps=eps).operator


def test_dmd_operator_solution_and_learner_pass():
    lab04.check_dmd_operator.__wrapped__(lab04._dmd_operator_solution)
    lab04.check_dmd_operator(dmd_operator)


@pytest.mark.parametrize("fn, msg", [
    (lambda X, Y, e: dmd_operator(X, Y, e).mT, "You have the transpose"),
    (lambda X, Y, e: dmd_operator(X, Y, 0.0), "adds eps * I"),
    (lambda X, Y, e: dmd_operator(Y, X, e), "swapped"),
    (dmd_operator_2d, "It was right with leading dims ()"),
    (dmd_operator_3d, "It was right with leading dims (), (3,) and is wrong with (2, 3)"),
    (dmd_operator_via_package, "dmd"),
], ids=["transpose", "no-ridge", "swapped", "2d", "one-leading-dim", "package"])
@pytest.mark.filterwarnings("ignore:The use of `x.T`")  # the 2-D answer's .T on a batch: what the learner would see
def test_dmd_operator_refuses(fn, msg):
    refused(lab04.check_dmd_operator, fn, msg)


# -------------------------------------------------------------------------------------- sigma_max_power
def sigma_max_power(A, iters):  # a learner's batched answer
    x = torch.ones(A.shape[:-1], dtype=A.dtype) / math.sqrt(A.shape[-1])
    for _ in range(iters):
        x = torch.einsum("...ji,...j->...i", A, torch.einsum("...ij,...j->...i", A, x))
        x = x / x.norm(dim=-1, keepdim=True)
    return torch.einsum("...ij,...j->...i", A, x).norm(dim=-1)


def sigma_max_power_2d(A, iters):  # one matrix only
    x = torch.ones(A.shape[1], dtype=A.dtype) / A.shape[1] ** 0.5
    for _ in range(iters):
        x = A.T @ (A @ x)
        x = x / x.norm()
    return float((A @ x).norm())


def sigma_max_power_3d(A, iters):  # right for zero and one leading dim
    if A.ndim == 2:
        return torch.tensor(sigma_max_power_2d(A, iters), dtype=A.dtype)
    return torch.stack([torch.tensor(sigma_max_power_2d(a, iters), dtype=A.dtype) for a in A])


def sigma_max_power_radius(A, iters):
    x = torch.ones(A.shape[:-1], dtype=A.dtype) / math.sqrt(A.shape[-1])
    for _ in range(iters):
        x = (A @ x[..., None])[..., 0]
        x = x / x.norm(dim=-1, keepdim=True)
    return (A @ x[..., None])[..., 0].norm(dim=-1)


def sigma_max_power_random_start(A, iters):
    x = torch.randn(A.shape[:-1], dtype=A.dtype)
    x = x / x.norm(dim=-1, keepdim=True)
    for _ in range(iters):
        x = (A.mT @ (A @ x[..., None]))[..., 0]
        x = x / x.norm(dim=-1, keepdim=True)
    return (A @ x[..., None])[..., 0].norm(dim=-1)


def sigma_by_package_at_run_time(A, iters):
    import importlib

    return getattr(importlib.import_module("echo_tutor.ska." + "linalg"), "sigma" + "_max")(A, iters)


def test_sigma_max_power_solution_and_learner_pass():
    lab04.check_sigma_max_power.__wrapped__(lab04._sigma_max_power_solution)
    lab04.check_sigma_max_power(sigma_max_power)
    lab04.check_sigma_max_power(lambda A, it: sigma_max_power(A, it) if A.ndim > 2 else float(sigma_max_power(A, it)))


@pytest.mark.parametrize("fn, msg", [
    (sigma_max_power_radius, "spectral radius"),
    (lambda A, it: sigma_max_power(A, it) ** 2, "squared"),
    (sigma_max_power_random_start, "start from ones/sqrt(r)"),
    (sigma_max_power_2d, "It was right with leading dims ()"),
    (sigma_max_power_3d, "It was right with leading dims (), (3,) and is wrong with (2, 3)"),
    (lambda A, it: torch.linalg.svdvals(A)[..., 0], "svdvals"),
], ids=["radius", "squared", "random-start", "2d", "one-leading-dim", "svd"])
def test_sigma_max_power_refuses(fn, msg):
    refused(lab04.check_sigma_max_power, fn, msg)


def test_sigma_max_power_refuses_the_package_at_run_time():
    refused(lab04.check_sigma_max_power, sigma_by_package_at_run_time, "echo_tutor.ska.linalg.sigma_max")


# -------------------------------------------------------------------------------------- paired_ablation
def bootstrap(diffs, n_boot=5000, seed=1):
    d = np.asarray(diffs)
    means = d[np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))].mean(1)
    return tuple(float(x) for x in np.quantile(means, [0.025, 0.975]))


def decide(lo, hi, a, b):
    return a if lo > 0 else b if hi < 0 else "no verdict"


T975 = {2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201}  # a learner's t table (97.5%, by df)


def t_interval(diffs, q=None):
    d = np.asarray(diffs)
    half = (T975[d.size - 1] if q is None else q) * d.std(ddof=1) / math.sqrt(d.size)
    return d.mean() - half, d.mean() + half


def paired_ablation_bootstrap(measure, arm_a, arm_b, seeds):  # a bootstrap at every seed count
    records = [{"seed": s, "arm": arm, "acc": measure(arm, s)} for s in seeds for arm in (arm_a, arm_b)]
    acc = {(r["arm"], r["seed"]): r["acc"] for r in records}
    diffs = [acc[arm_a, s] - acc[arm_b, s] for s in seeds]
    lo, hi = bootstrap(diffs)
    return {"records": records, "diffs": diffs, "mean": sum(diffs) / len(diffs), "interval": (lo, hi),
            "verdict": decide(lo, hi, arm_a, arm_b)}


def with_interval(interval):
    def fn(measure, arm_a, arm_b, seeds):
        out = paired_ablation_bootstrap(measure, arm_a, arm_b, seeds)
        out["interval"] = interval(out["diffs"])
        out["verdict"] = decide(*out["interval"], arm_a, arm_b)
        return out
    return fn


# a learner's answer by the course's rule: t below 10 seeds, its own bootstrap from 10
paired_ablation = with_interval(lambda d: t_interval(d) if len(d) < 10 else bootstrap(d))
paired_ablation_t = with_interval(t_interval)  # a t interval at every seed count
normal_interval = with_interval(lambda d: t_interval(d, q=1.96))  # mean +- 1.96 standard errors


def with_(change):
    """A learner's answer with one thing changed by ``change(out, measure, arm_a, arm_b, seeds)``."""
    def fn(measure, arm_a, arm_b, seeds):
        out = paired_ablation(measure, arm_a, arm_b, seeds)
        change(out, measure, arm_a, arm_b, seeds)
        return out
    return fn


def unpaired(measure, arm_a, arm_b, seeds):  # arm_b run on other seeds: not paired
    recs = [{"seed": s, "arm": arm_a, "acc": measure(arm_a, s)} for s in seeds]
    recs += [{"seed": s, "arm": arm_b, "acc": measure(arm_b, s)} for s in seeds[1:]]
    return {"records": recs, "diffs": [0.0] * len(seeds), "mean": 0.0, "interval": (0.0, 0.0), "verdict": "no verdict"}


def always_a(out, measure, a, b, seeds):
    out["verdict"] = a


def always_no(out, measure, a, b, seeds):
    out["verdict"] = "no verdict"


def wrong_way(out, measure, a, b, seeds):
    out["verdict"] = {a: b, b: a}.get(out["verdict"], a)


def se_interval(out, measure, a, b, seeds):
    d = np.asarray(out["diffs"])
    se = d.std(ddof=1) / math.sqrt(d.size)
    out["interval"] = (d.mean() - se, d.mean() + se)


def flipped(out, measure, a, b, seeds):
    out["diffs"] = [-x for x in out["diffs"]]
    out["mean"] = -out["mean"]
    lo, hi = out["interval"]
    out["interval"] = (-hi, -lo)


def flipped_interval(out, measure, a, b, seeds):
    lo, hi = out["interval"]
    out["interval"] = (-hi, -lo)


def fudged(out, measure, a, b, seeds):
    out["records"][0]["acc"] += 0.1


def via_paired_ci(measure, arm_a, arm_b, seeds):
    from echo_tutor.experiments import paired_ci, verdict

    a = [measure(arm_a, s) for s in seeds]
    b = [measure(arm_b, s) for s in seeds]
    m, lo, hi = paired_ci(a, b)
    return {"records": [], "diffs": [], "mean": m, "interval": (lo, hi), "verdict": verdict(lo, hi)}


def via_stats_at_run_time(measure, arm_a, arm_b, seeds):
    import importlib

    out = paired_ablation(measure, arm_a, arm_b, seeds)
    stats = importlib.import_module("echo_tutor.experiments." + "stats")
    _, lo, hi = getattr(stats, "paired" + "_ci")([r["acc"] for r in out["records"][::2]],
                                                 [r["acc"] for r in out["records"][1::2]])
    out["interval"] = (lo, hi)
    return out


def via_ablation_runner(measure, arm_a, arm_b, seeds):
    import importlib

    runner = importlib.import_module("echo_tutor.experiments." + "ablation")
    getattr(runner, "ablation" + "_tasks")("ablation/small")
    return paired_ablation(measure, arm_a, arm_b, seeds)


def test_paired_ablation_solution_and_learners_pass():
    for _ in range(3):
        lab04.check_paired_ablation.__wrapped__(lab04._paired_ablation_solution)
        lab04.check_paired_ablation(paired_ablation)
        lab04.check_paired_ablation(paired_ablation_t)


@pytest.mark.parametrize("fn, msg", [
    (unpaired, "not paired: every seed must run both arms"),
    (with_(lambda out, m, a, b, s: out["records"].pop()), "no record for arm"),
    (with_(fudged), "record what it returns"),
    (with_(always_a), "includes 0"),
    (with_(always_no), "name the better arm"),
    (with_(wrong_way), "is the better arm, not"),
    (with_(se_interval), "one standard error"),
    (with_(flipped), "minus"),
    (with_(flipped_interval), "flip it"),
    (with_(lambda out, m, a, b, s: out.pop("interval")), "return a dict with the keys"),
    (with_(lambda out, m, a, b, s: out.__setitem__("verdict", f"{a} is better")), "should be exactly"),
    (paired_ablation_bootstrap, "With fewer than 10 seeds the course's interval is Student's t"),
    (normal_interval, "the normal interval"),
], ids=["unpaired", "incomplete", "fudged", "verdict-on-zero", "no-verdict-on-effect", "wrong-way", "se",
        "b-minus-a", "flipped-interval", "no-interval", "free-text-verdict", "bootstrap-below-10-seeds", "normal-1.96"])
def test_paired_ablation_refuses(fn, msg):
    refused(lab04.check_paired_ablation, fn, msg)


@pytest.mark.parametrize("fn, msg", [
    (via_paired_ci, "paired_ci"),
    (via_stats_at_run_time, "echo_tutor.stats.paired_ci"),  # reached through experiments.stats, the re-export
    (via_ablation_runner, "echo_tutor.experiments.ablation.ablation_tasks"),
], ids=["paired_ci", "stats-at-run-time", "runner-at-run-time"])
def test_paired_ablation_refuses_the_package(fn, msg):
    refused(lab04.check_paired_ablation, fn, msg)


def test_review_ablation_grades_a_run_from_its_records(capsys):
    table = {("K=1", s): 0.5 + 0.01 * s for s in range(5)} | {("K=0", s): 0.1 + 0.02 * s for s in range(5)}
    good = lab04._paired_ablation_solution(lambda arm, s: table[arm, s], "K=1", "K=0", range(5))
    assert lab04.review_ablation(good) and "paired" in capsys.readouterr().out
    short = lab04._paired_ablation_solution(lambda arm, s: table[arm, s], "K=1", "K=0", range(2))
    assert not lab04.review_ablation(short) and "at least 3 seeds" in capsys.readouterr().out
    bad = dict(good, verdict="no verdict")
    assert not lab04.review_ablation(bad) and "name the better arm" in capsys.readouterr().out
    boot5 = paired_ablation_bootstrap(lambda arm, s: table[arm, s], "K=1", "K=0", range(5))
    assert not lab04.review_ablation(boot5) and "fewer than 10 seeds" in capsys.readouterr().out  # t below 10
    table10 = {("K=1", s): 0.5 + 0.01 * s for s in range(10)} | {("K=0", s): 0.1 + 0.03 * s for s in range(10)}
    boot10 = paired_ablation_bootstrap(lambda arm, s: table10[arm, s], "K=1", "K=0", range(10))
    assert lab04.review_ablation(boot10) and "percentile bootstrap" in capsys.readouterr().out  # accepted from 10
    ref10 = lab04._paired_ablation_solution(lambda arm, s: table10[arm, s], "K=1", "K=0", range(10))
    assert lab04.review_ablation(ref10) and "percentile bootstrap" in capsys.readouterr().out  # the rule at 10


def test_three_seeds_take_a_t_interval_and_get_no_verdict(capsys):
    """Lab 04 section 6's K=1 - K=0 case: per-seed differences 0.403, 0.001, 0.146. A percentile bootstrap of
    3 values is their range, [+0.001, +0.403], which would name K=1; the course's t interval includes 0."""
    diffs = {0: 0.403, 1: 0.001, 2: 0.146}
    table = {("K=1", s): 0.2 + d for s, d in diffs.items()} | {("K=0", s): 0.2 for s in diffs}
    measure = lambda arm, s: table[arm, s]  # noqa: E731
    ref = lab04._paired_ablation_solution(measure, "K=1", "K=0", [0, 1, 2])
    lo, hi = ref["interval"]
    assert (round(lo, 2), round(hi, 2)) == (-0.32, 0.69) and ref["verdict"] == lab04.NO_VERDICT
    assert lab04.review_ablation(ref) and "a t interval" in capsys.readouterr().out
    boot = paired_ablation_bootstrap(measure, "K=1", "K=0", [0, 1, 2])
    assert boot["interval"] == pytest.approx((0.001, 0.403)) and boot["verdict"] == "K=1"  # the range
    assert not lab04.review_ablation(boot) and "Student's t" in capsys.readouterr().out


def test_the_checker_follows_the_package_rule():
    from echo_tutor.experiments.stats import SMALL_SAMPLE, t_quantile

    assert lab04._T_BELOW == SMALL_SAMPLE
    for df in range(1, 21):
        assert lab04._t_quantile(df) == pytest.approx(t_quantile(0.95, df), abs=6e-4)


def test_five_seeds_take_a_t_interval_too(capsys):
    """Lab 05's echo minus ssm+attn on MQAR at 4,000 steps, five seeds: per-seed differences +0.653, -0.202,
    +0.652, +0.175, +0.690. The percentile bootstrap, [+0.052, +0.668], would name echo; the course's t
    interval, [-0.097, +0.884], includes 0."""
    diffs = {0: 0.653, 1: -0.202, 2: 0.652, 3: 0.175, 4: 0.690}
    table = {("echo", s): 0.3 + d for s, d in diffs.items()} | {("ssm+attn", s): 0.3 for s in diffs}
    measure = lambda arm, s: table[arm, s]  # noqa: E731
    ref = lab04._paired_ablation_solution(measure, "echo", "ssm+attn", list(diffs))
    lo, hi = ref["interval"]
    assert (round(lo, 3), round(hi, 3)) == (-0.097, 0.884) and ref["verdict"] == lab04.NO_VERDICT
    assert lab04.review_ablation(ref) and "a t interval" in capsys.readouterr().out
    boot = paired_ablation_bootstrap(measure, "echo", "ssm+attn", list(diffs))
    assert boot["interval"][0] > 0 and boot["verdict"] == "echo"
    assert not lab04.review_ablation(boot) and "fewer than 10 seeds" in capsys.readouterr().out
