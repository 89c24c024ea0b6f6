"""Lab 04 (Koopman spectra): exercises, checkers and solutions.

1. ``dmd_operator(X [..., N, d], Y [..., N, d], eps) -> A [..., d, d]``: the ridge DMD fit ``y_i ~ A x_i``,
   the ``A`` that minimises ``sum_i ||y_i - A x_i||^2 + eps ||A||_F^2``, i.e. ``A = (Y^T X)(X^T X + eps I)^-1``
   (the learner derives it from the objective). (SKA's ``M G^-1`` is this fit only approximately: its ``M`` is
   the gate-weighted ``Y^T X``, but its ``G`` is the gate-weighted Gram of the keys themselves, last key
   included, not of the previous keys; the lab checks this on ``ska_recurrent``.)
2. ``sigma_max_power(A [..., r, r], iters) -> [...]``: the largest singular value of each A by power iteration
   on ``A^T A`` (what SKA's spectral normalisation divides by), from the start vector ``ones / sqrt(r)``.
3. ``paired_ablation(measure, arm_a, arm_b, seeds) -> dict`` (open-ended, with a rubric in the instructor's
   answer key): a paired comparison of two settings ("arms") of SKA over seeds: ``measure(arm, seed)`` for
   both arms at every seed, the per-seed differences ``a - b``, their mean, a 95% interval of the mean by the
   course's rule (``echo_tutor.experiments.stats``: with fewer than 10 seeds Student's t interval, ``n - 1``
   degrees of freedom; from 10 seeds the percentile bootstrap over seeds, or a t interval, also accepted) and a
   verdict: the better arm's name where the interval excludes 0, else ``"no verdict"``. The checker runs it on
   measures of its own (an effect each way and none; 3-5, 6-9 and 10-12 seeds);
   :func:`review_ablation` grades the learner's own run from its records.

This module holds exercises 1 and 2; exercise 3 and :func:`review_ablation` live in
:mod:`echo_tutor.labs.lab04_ablation` and are re-exported here (the lab, the grader and the tests import every
name from ``lab04``).
"""

from __future__ import annotations

from typing import Any

import torch

from . import (ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, close, expect_tensor,
               fresh_generator, leading_dims, passed)
from .checking import right_one_by_one
from .lab04_ablation import (_T_BELOW, NO_VERDICT, _paired_ablation_solution, _t_quantile, check_paired_ablation,
                             review_ablation)

__all__ = ["_dmd_operator_solution", "_sigma_max_power_solution", "_paired_ablation_solution", "check_dmd_operator",
           "check_sigma_max_power", "check_paired_ablation", "review_ablation", "NO_VERDICT", "_T_BELOW", "_t_quantile"]


# ----------------------------------------------------------------------------------------- dmd_operator
def _dmd_operator_solution(X, Y, eps):
    d = X.shape[-1]
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(X.mT @ X + eps * eye, X.mT @ Y).mT  # (Y^T X)(X^T X + eps I)^-1, [..., d, d]


@checker()
def check_dmd_operator(fn) -> None:
    """Check ``fn(X [..., N, d], Y [..., N, d], eps) -> A [..., d, d]`` with zero, one and two leading dims."""
    name = "dmd_operator"
    g, seed = fresh_generator()
    N, d, eps = 30, 4, 0.3
    ok: list[tuple[int, ...]] = []
    for lead in leading_dims():
        X = torch.randn(*lead, N, d, generator=g, dtype=torch.float64)
        W = torch.randn(*lead, d, d, generator=g, dtype=torch.float64)
        Y = X @ W.mT + 0.1 * torch.randn(*lead, N, d, generator=g, dtype=torch.float64)
        where = f"X, Y {tuple(X.shape)}"
        try:
            out = expect_tensor(name, call_student(name, fn, X, Y, eps), (*lead, d, d), "[..., d, d]")
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, ok)}") from None
        want = _dmd_operator_solution(X, Y, eps)
        if close(out, want):
            ok.append(lead)
            continue
        typical = {
            " You have the transpose: rows of X and Y are snapshots, and y_i ~ A x_i means A = (Y^T X)(X^T X + eps I)^-1.":
                want.mT,
            " It matches the fit without ridge: the eps ||A||^2 term adds eps * I to X^T X.": _dmd_operator_solution(X, Y, 0.0),
            " That fits x_i from y_i (X and Y swapped).": _dmd_operator_solution(Y, X, eps),
        }
        batching = bool(ok) and right_one_by_one(fn, lead, (X, Y, eps), lambda o, i: isinstance(o, torch.Tensor) and close(o, want[i]))
        hint = batch_dims_hint(lead, ok) if batching else next((h for h, w in typical.items() if close(out, w)), "")
        raise ExerciseError(f"{name}: wrong values with {where} (seed {seed}): max abs error "
                            f"{(out - want).abs().max():.3g}.{hint}")
    return passed(name)


# -------------------------------------------------------------------------------------- sigma_max_power
def _sigma_max_power_solution(A, iters):
    x = torch.ones(A.shape[:-1], dtype=A.dtype, device=A.device) / A.shape[-1] ** 0.5  # [..., r]
    for _ in range(iters):
        x = (A.mT @ (A @ x[..., None]))[..., 0]  # A^T A x
        x = x / x.norm(dim=-1, keepdim=True)
    return (A @ x[..., None])[..., 0].norm(dim=-1)  # ||A x|| -> sigma_max, [...]


def _power_on_A(A, iters):
    """The usual mistake: power iteration on A itself (tends to the spectral radius, when it converges)."""
    x = torch.ones(A.shape[:-1], dtype=A.dtype) / A.shape[-1] ** 0.5
    for _ in range(iters):
        x = (A @ x[..., None])[..., 0]
        x = x / x.norm(dim=-1, keepdim=True)
    return (A @ x[..., None])[..., 0].norm(dim=-1)


def _as_values(name: str, out: Any, lead: tuple[int, ...]) -> torch.Tensor:
    if isinstance(out, (float, int)) and lead == ():
        return torch.tensor(float(out), dtype=torch.float64)
    if not isinstance(out, torch.Tensor):
        raise ExerciseError(f"{name}: return a tensor of shape [...] = {lead} (one sigma_max per matrix), got "
                            f"{type(out).__name__}")
    if tuple(out.shape) != lead:
        raise ExerciseError(f"{name}: wrong shape: expected [...] = {lead} (one number per matrix), got "
                            f"{tuple(out.shape)}")
    return out.double()


def _non_normal(g: torch.Generator, lead: tuple[int, ...], r: int) -> torch.Tensor:
    """Upper-triangular matrices with a large corner: the spectral radius is well below sigma_max."""
    A = torch.triu(torch.randn(*lead, r, r, generator=g, dtype=torch.float64)) * 0.5
    A = A + torch.diag(torch.full((r,), 0.3, dtype=torch.float64))
    A[..., 0, -1] = 3.0
    return A


@checker(forbid=("svd", "svdvals", "matrix_norm", "eig", "eigh", "eigvals", "eigvalsh", "cond", "spectral_norm"))
def check_sigma_max_power(fn) -> None:
    """Check ``fn(A [..., r, r], iters) -> [...]`` against power iteration on A^T A (after 2 iterations) and,
    for many iterations, against the exact sigma_max; with zero, one and two leading dims."""
    name = "sigma_max_power"
    g, seed = fresh_generator()
    r = 5
    ok: list[tuple[int, ...]] = []
    for lead in leading_dims():
        A = _non_normal(g, lead, r)
        where = f"A {tuple(A.shape)}"
        try:
            out = _as_values(name, call_student(name, fn, A.clone(), 60), lead)
            few = _as_values(name, call_student(name, fn, A.clone(), 2), lead)
        except NotAttempted:
            raise
        except ExerciseError as e:
            raise ExerciseError(f"{e} ({where}, seed {seed}).{batch_dims_hint(lead, ok)}") from None
        exact = torch.linalg.matrix_norm(A, ord=2)
        want_few = _sigma_max_power_solution(A, 2)
        if bool(((out - exact).abs() < 1e-6 * exact).all()):
            if bool(((few - want_few).abs() < 1e-9 * exact).all()):
                ok.append(lead)
                continue
            raise ExerciseError(f"{name}: right after 60 iterations but not after 2 ({few.flatten()[0]:.10g} vs "
                                f"{want_few.flatten()[0]:.10g}) with {where}: start from ones/sqrt(r) and use iters "
                                f"steps (seed {seed}).{batch_dims_hint(lead, ok)}")
        radius = torch.linalg.eigvals(A).abs().amax(-1)
        hint = batch_dims_hint(lead, ok) if ok and right_one_by_one(
            fn, lead, (A, 60), lambda o, i: abs(float(o) - float(exact[i])) < 1e-6 * float(exact[i])) else ""
        if not hint and (bool(((out - radius).abs() < 1e-3 * radius).all())
                         or bool(((out - _power_on_A(A, 60)).abs() < 1e-9 * exact).all())):
            hint = (" That is the spectral radius |lambda|_max (power iteration on A). sigma_max needs A^T A; for a "
                    "non-normal A the two differ, and spectral normalisation bounds sigma_max.")
        elif not hint and bool(((out - exact**2).abs() < 1e-3 * exact**2).all()):
            hint = " That is sigma_max squared (the eigenvalue of A^T A): return ||A x||."
        raise ExerciseError(f"{name}: got {out.flatten()[:3].tolist()}, expected {exact.flatten()[:3].tolist()} "
                            f"(first 3) with {where} (seed {seed}).{hint}")
    return passed(name)
