"""Exercises never stop a lab and cannot be shortcut: the wrapper falls back to the solution until its
checker passes, the checker prints instead of raising inside a lab, and a call to a function that computes
the answer is refused with the reason."""

import pytest
import torch

from echo_tutor import labs
from echo_tutor.koopman import koopman_operator
from echo_tutor.labs import ExerciseError, lab01, lab02, lab04, lab06, lab07
from echo_tutor.ska import ska_readout, ska_recurrent, sigma_max
from echo_tutor.ska import sigma_max as smax
from echo_tutor.ska.ops import chunk_stats
from echo_tutor.ssm import ssd_recurrent


def ssm_scan(x, a, b, c):  # stands for a notebook's exercise object of that name
    raise NotImplementedError


def uses_the_scan(x, a, b, c):
    return ssd_recurrent(x, a, b, c)


def quadratic_via_scan(x, a, b, c):
    return ssm_scan(x, a, b, c)


def ridge_via_ska(G, C, q):
    return ska_readout(G, G, C, q, power_steps=0)


def statistics_via_ska(k, v, beta, k_prev):
    return ska_recurrent(k, k, v, beta)[1]


def whitened_via_library(G, M):
    return koopman_operator(G)


def sigma_by_svd(A, iters):
    return float(torch.linalg.svdvals(A)[0])


def sigma_by_alias(A, iters):
    return float(smax(A, iters))


def gram_via_twin(ok, kk, S):
    return chunk_stats(ok, kk, kk, kk, S)[0]


def sherman_morrison_by_inverse(Ginv, k, a):
    return torch.linalg.inv(torch.linalg.inv(Ginv) + a * torch.outer(k, k))


def sherman_morrison_by_solve(Ginv, k, a):
    G = torch.linalg.solve(Ginv, torch.eye(k.shape[0], dtype=k.dtype))
    return torch.linalg.solve(G + a * torch.outer(k, k), torch.eye(k.shape[0], dtype=k.dtype))


def _helper(G, k, a):
    return torch.linalg.inv(G)


def sherman_morrison_via_a_helper(Ginv, k, a):
    return _helper(Ginv, k, a)


def rope_via_library(x, cos, sin):
    from echo_tutor.echokv.capture import apply_rope

    return apply_rope(x, cos, sin)


def ridge_via_fused_twin(G, C, q):
    """The fused readout's PyTorch twin computes C G^-1 q too (issue 25: it passed the name check)."""
    from echo_tutor.ska import ops

    n = q.shape[-2]
    Gi = torch.linalg.inv(G)  # allowed in this exercise; the twin is not
    lead = G.shape[:-2]
    y = ops.readout_forward(q.reshape(-1, 1, 1, n, q.shape[-1]), G.reshape(-1, 1, 1, *G.shape[-2:]),
                            G.reshape(-1, 1, 1, *G.shape[-2:]), C.reshape(-1, 1, 1, *C.shape[-2:]), power_steps=0)
    return y.reshape(*lead, n, C.shape[-2]) + 0 * Gi.sum()


def ridge_via_getattr(G, C, q):
    """A name built at run time: no name of the package appears in the code."""
    import importlib

    mod = importlib.import_module("echo_tutor.ska." + "re" + "ference")
    fn = getattr(mod, "ska" + "_readout")
    return fn(G[:, None], G[:, None], C[:, None], q[:, None], power_steps=0)[:, 0]


def power_filter_via_layer_method(G, M, C, q, K, gamma, eta):
    """An object of the package, built from a string: its methods compute the answer."""
    import importlib

    ref = importlib.import_module("echo_tutor.ska.reference")
    return vars(ref)["ska" + "_readout"](G[:, None], M[:, None], C[:, None], q[:, None], power_steps=K, eta=eta,
                                         gamma=gamma, spectral_norm=True, spectral_iters=None)[:, 0]


SHORTCUTS = [
    (lab01.check_ssm_scan, uses_the_scan, "ssd_recurrent"),
    (lab01.check_ssd_quadratic, quadratic_via_scan, "ssm_scan"),
    (lab02.check_ridge_readout, ridge_via_ska, "ska_readout"),
    (lab02.check_ska_statistics, statistics_via_ska, "ska_recurrent"),
    (lab02.check_whitened_operator, whitened_via_library, "koopman_operator"),
    (lab04.check_sigma_max_power, sigma_by_svd, "svdvals"),
    (lab04.check_sigma_max_power, sigma_by_alias, "`smax` (that is `echo_tutor.ska.linalg.sigma_max`)"),
    (lab07.check_chunk_gram, gram_via_twin, "chunk_stats"),
    (lab07.check_sherman_morrison, sherman_morrison_by_inverse, "`inv`"),
    (lab07.check_sherman_morrison, sherman_morrison_by_solve, "`solve`"),
    (lab07.check_sherman_morrison, sherman_morrison_via_a_helper, "your helper `_helper`"),
    (lab06.check_rope_rotate, rope_via_library, "apply_rope"),
]

# Shortcuts that no name check can see: the calls the student's function makes while it runs are watched.
RUNTIME_SHORTCUTS = [
    (lab02.check_ridge_readout, ridge_via_getattr, "echo_tutor.ska.reference.ska_readout"),
    (lab02.check_power_filter, power_filter_via_layer_method, "echo_tutor.ska.reference.ska_readout"),
]


@pytest.mark.parametrize("check, student, name", RUNTIME_SHORTCUTS, ids=[s[1].__name__ for s in RUNTIME_SHORTCUTS])
def test_a_call_reached_at_run_time_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="the answer for you") as e:
        check(student)
    assert name in str(e.value)


def test_the_fused_twin_after_a_reshape_is_refused():
    with pytest.raises(ExerciseError, match="readout_forward"):
        lab02.check_ridge_readout(ridge_via_fused_twin)


def test_the_forbidden_set_is_computed_from_the_package():
    import echo_tutor.ska.ops  # noqa: F401  (loaded, as a student's import would)

    from echo_tutor.labs.guard import package_routines

    names = package_routines()
    assert {"readout_forward", "stats_prefix", "ska_readout", "ssd_chunked", "koopman_operator"} <= names
    assert not {"solve", "cholesky", "cumsum", "step", "sum"} & names  # torch's names stay the student's


@pytest.mark.parametrize("check, student, name", SHORTCUTS, ids=[s[1].__name__ for s in SHORTCUTS])
def test_a_call_to_what_computes_the_answer_is_refused(check, student, name):
    with pytest.raises(ExerciseError, match="the answer for you") as e:
        check(student)
    assert name in str(e.value)
    assert sigma_max is smax  # the alias above is the library's function


def test_an_unfinished_exercise_falls_back_to_the_solution_and_does_not_stop_the_lab(capsys, monkeypatch):
    monkeypatch.delenv("ECHO_TUTOR_SOLUTIONS", raising=False)

    def ridge_readout(G, C, q):
        raise NotImplementedError

    ex = labs.exercise(ridge_readout, "lab02")
    assert lab02.check_ridge_readout(ex) is None  # printed, not raised
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "the cells below use the reference solution" in out
    assert ex.status == "not attempted"
    G, C, q = torch.eye(3, dtype=torch.float64) * 2, torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(ex(G, C, q), (C @ q.T).T / 2)  # the solution answers for now

    def ridge_readout(G, C, q):  # noqa: F811 - the learner's wrong attempt, then the right one
        return (C @ q.mT).mT

    ex = labs.exercise(ridge_readout, "lab02")
    lab02.check_ridge_readout(ex)
    assert ex.status == "failed" and "linear attention" in capsys.readouterr().out

    def ridge_readout(G, C, q):  # noqa: F811
        return (C @ torch.linalg.solve(G, q.mT)).mT

    ex = labs.exercise(ridge_readout, "lab02")
    lab02.check_ridge_readout(ex)
    assert ex.status == "passed" and ex.student is ridge_readout
    assert labs.report("lab02")["ridge_readout"] == "passed"
    assert "passing" in capsys.readouterr().out


def test_a_shortcut_inside_a_lab_is_reported_and_the_solution_used(capsys, monkeypatch):
    monkeypatch.delenv("ECHO_TUTOR_SOLUTIONS", raising=False)
    ex = labs.exercise(sherman_morrison_by_inverse, lab07._sherman_morrison_solution)
    lab07.check_sherman_morrison(ex)
    assert ex.status == "failed" and "`inv`" in capsys.readouterr().out


def test_instructor_mode_checks_the_solution(monkeypatch, capsys):
    monkeypatch.setenv("ECHO_TUTOR_SOLUTIONS", "1")

    def ridge_readout(G, C, q):
        raise NotImplementedError

    ex = labs.exercise(ridge_readout, "lab02")
    lab02.check_ridge_readout(ex)
    assert ex.status == "solution" and "correct on fresh random inputs" in capsys.readouterr().out
    rows = labs.report("lab02")
    assert rows["ridge_readout"] == "solution"


def test_both_mode_checks_the_learners_stub_then_uses_the_solution(monkeypatch, capsys):
    """ECHO_TUTOR_SOLUTIONS=both (make test): one execution of a lab is the learner's no-exercise run and the
    instructor's: the stub must say "not attempted yet", then the solution is checked and used."""
    monkeypatch.setenv("ECHO_TUTOR_SOLUTIONS", "both")
    labs.REGISTRY.clear()

    def ridge_readout(G, C, q):
        raise NotImplementedError

    ex = labs.exercise(ridge_readout, "lab02")
    G, C, q = torch.eye(3, dtype=torch.float64) * 2, torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError):  # before its check a call reaches the stub, as in a learner's run
        ex(G, C, q)
    lab02.check_ridge_readout(ex)
    out = capsys.readouterr().out
    assert "not attempted yet" in out and "correct on fresh random inputs" in out
    assert ex.learner_status == "not attempted" and ex.status == "solution"
    torch.testing.assert_close(ex(G, C, q), (C @ q.T).T / 2)
    assert labs.report("lab02") == {"ridge_readout": "solution"}
    out = capsys.readouterr().out
    assert "As a learner with no exercise done: 0 of 1 passing" in out and "Exercises of lab02: 1 of 1 passing" in out

    def ridge_readout(G, C, q):  # noqa: F811 - a "stub" that already answers: the learner would not see "not attempted"
        return (C @ torch.linalg.solve(G, q.mT)).mT

    with pytest.raises(ExerciseError, match="not 'not attempted yet'"):
        lab02.check_ridge_readout(labs.exercise(ridge_readout, "lab02"))

    def ridge_readout(G, C, q):  # noqa: F811 - registered, never checked
        raise NotImplementedError

    labs.exercise(ridge_readout, "lab02")
    with pytest.raises(ExerciseError, match="never ran on the learner's stub"):
        labs.report("lab02")
    labs.REGISTRY.clear()


def test_exercise_names_its_lab_and_function():
    with pytest.raises(ValueError, match="lab must be a lab module name"):
        labs.exercise(lambda: None, "lab1")
    with pytest.raises(ValueError, match="lab02 has no exercise 'nope'"):
        def nope():
            pass
        labs.exercise(nope, "lab02")


def test_a_shortcut_that_crashes_is_still_named_as_a_shortcut():
    def ridge_readout(G, C, q):
        import importlib

        ref = importlib.import_module("echo_tutor.ska." + "reference")
        return vars(ref)["ska_" + "readout"](G, G, C, q[..., None, :], power_steps=-1)  # bad arguments: it raises

    with pytest.raises(ExerciseError, match="echo_tutor.ska.reference.ska_readout"):
        lab02.check_ridge_readout(ridge_readout)


from torch.linalg import inv as invert  # noqa: E402  (an alias of a forbidden built-in, under another name)


def sherman_morrison_by_alias(Ginv, k, a):
    return invert(invert(Ginv) + a * torch.outer(k, k))


def sherman_morrison_by_dynamic_name(Ginv, k, a):
    fn = getattr(torch.linalg, "i" + "nv")
    return fn(fn(Ginv) + a * torch.outer(k, k))


@pytest.mark.parametrize("student", [sherman_morrison_by_alias, sherman_morrison_by_dynamic_name])
def test_a_forbidden_builtin_is_refused_under_any_name(student):
    with pytest.raises(ExerciseError, match="inv"):
        lab07.check_sherman_morrison(student)


def ridge_in_a_thread(G, C, q):
    """The review's bypass: the solution run in a worker thread, which a per-thread profiler does not see."""
    from concurrent.futures import ThreadPoolExecutor
    import importlib

    mod = importlib.import_module("echo_tutor.labs.lab02")
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(getattr(mod, "_ridge_readout" + "_solution"), G, C, q).result()


def ridge_that_patches_the_checker(G, C, q):
    """Right answer or not, it makes every later comparison pass."""
    import echo_tutor.labs.checking as chk

    chk.close = lambda a, b, tol=1e-6: True
    return (C @ q.mT).mT


def test_a_thread_started_by_the_learner_is_refused():
    with pytest.raises(ExerciseError, match="thread or process"):
        lab02.check_ridge_readout(ridge_in_a_thread)


def test_a_function_that_patches_what_the_checker_uses_is_refused(monkeypatch):
    import echo_tutor.labs.checking as chk

    monkeypatch.setattr(chk, "close", chk.close)  # restored after the test whatever happens
    with pytest.raises(ExerciseError, match="replaced echo_tutor.labs.checking.close"):
        lab02.check_ridge_readout(ridge_that_patches_the_checker)


def test_a_function_with_bare_globals_does_not_crash_the_scan():
    ns: dict = {}
    exec("def ridge_readout(G, C, q):\n    return q", ns)
    with pytest.raises(ExerciseError, match="ridge_readout"):
        lab02.check_ridge_readout(ns["ridge_readout"])


def ridge_after_switching_the_watcher_off(G, C, q):
    """The second review's bypass: the profiler switched off by a computed name, then the package called."""
    getattr(__import__("s" + "ys"), "set" + "profile")(None)
    import importlib

    ref = importlib.import_module("echo_tutor.ska." + "reference")
    return vars(ref)["ska_" + "readout"](G[..., None, :, :], G[..., None, :, :], C[..., None, :, :], q[..., None, :, :],
                                          power_steps=0)[..., 0, :, :]


def ridge_that_rewrites_the_checkers_code(G, C, q):
    import echo_tutor.labs.checking as chk

    chk.close.__code__ = (lambda a, b, tol=1e-6: True).__code__
    return torch.zeros(*q.shape[:-1], C.shape[-2], dtype=q.dtype)


def test_switching_the_watcher_off_is_refused():
    with pytest.raises(ExerciseError, match="watcher was switched off"):
        lab02.check_ridge_readout(ridge_after_switching_the_watcher_off)


def test_rewriting_a_checkers_code_is_refused():
    import echo_tutor.labs.checking as chk

    code = chk.close.__code__
    try:
        with pytest.raises(ExerciseError, match=r"replaced echo_tutor.labs.checking.close.__code__"):
            lab02.check_ridge_readout(ridge_that_rewrites_the_checkers_code)
    finally:
        chk.close.__code__ = code
