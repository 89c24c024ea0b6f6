"""Lab 04 (Koopman spectra): exercises, checkers and solutions.

1. ``dmd_operator(X [N, d], Y [N, d], eps) -> A [d, d]``: the ridge DMD fit ``y_i ~ A x_i``,
   ``A = (Y^T X)(X^T X + eps I)^-1``. (SKA's ``M G^-1`` is this fit only approximately: its ``M`` is the
   gate-weighted ``Y^T X``, but its ``G`` is the gate-weighted Gram of the keys themselves, last key
   included, not of the previous keys; the lab checks this on ``ska_recurrent``.)
2. ``sigma_max_power(A [r, r], iters) -> float``: the largest singular value of A by power iteration on
   ``A^T A`` (what SKA's spectral normalisation divides by), from the start vector ``ones / sqrt(r)``.
"""

from __future__ import annotations

import torch

from . import ExerciseError, call_student, checker, close, expect_tensor, fresh_generator, passed

__all__ = ["_dmd_operator_solution", "_sigma_max_power_solution", "check_dmd_operator", "check_sigma_max_power"]


def _dmd_operator_solution(X, Y, eps):
    d = X.shape[1]
    return torch.linalg.solve(X.T @ X + eps * torch.eye(d, dtype=X.dtype), X.T @ Y).T  # (Y^T X)(X^T X + eps I)^-1


def _sigma_max_power_solution(A, iters):
    # exactly what SKA's spectral normalisation runs (ones / sqrt(r) start, iters steps on A^T A)
    from ..ska import sigma_max

    return float(sigma_max(A, iters))


def _power_on_A(A, iters):
    """The usual mistake: power iteration on A itself (tends to the spectral radius, when it converges)."""
    x = torch.ones(A.shape[1], dtype=A.dtype) / A.shape[1] ** 0.5
    for _ in range(iters):
        x = A @ x
        x = x / x.norm()
    return float((A @ x).norm())


@checker()
def check_dmd_operator(fn) -> None:
    """Check ``fn(X [N, d], Y [N, d], eps) -> A [d, d]``."""
    name = "dmd_operator"
    g, seed = fresh_generator()
    N, d, eps = 30, 4, 0.3
    X = torch.randn(N, d, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(d, d, generator=g, dtype=torch.float64).T + 0.1 * torch.randn(N, d, generator=g, dtype=torch.float64)
    out = expect_tensor(name, call_student(name, fn, X, Y, eps), (d, d), "[d, d]")
    want = _dmd_operator_solution(X, Y, eps)
    if close(out, want):
        return passed(name)
    typical = {
        " You have the transpose: rows of X and Y are snapshots, and y_i ~ A x_i means A = (Y^T X)(X^T X + eps I)^-1.":
            want.T,
        " It matches the fit without ridge: add eps * I to X^T X.": _dmd_operator_solution(X, Y, 0.0),
        " That fits x_i from y_i (X and Y swapped).": _dmd_operator_solution(Y, X, eps),
    }
    hint = next((h for h, w in typical.items() if close(out, w)), "")
    raise ExerciseError(f"{name}: wrong values (seed {seed}): max abs error {(out - want).abs().max():.3g}.{hint}")


@checker(forbid=("svd", "svdvals", "matrix_norm", "eig", "eigh", "eigvals", "eigvalsh", "cond", "spectral_norm"))
def check_sigma_max_power(fn) -> None:
    """Check ``fn(A [r, r], iters) -> float`` against power iteration on A^T A (and, for many
    iterations, against the exact sigma_max)."""
    name = "sigma_max_power"
    g, seed = fresh_generator()
    r = 5
    # a non-normal matrix: its spectral radius is well below its largest singular value
    A = torch.triu(torch.randn(r, r, generator=g, dtype=torch.float64)) * 0.5 + torch.diag(torch.full((r,), 0.3, dtype=torch.float64))
    A[0, -1] = 3.0
    out = call_student(name, fn, A, 60)
    if isinstance(out, torch.Tensor):
        if out.numel() != 1:
            raise ExerciseError(f"{name}: return one number, got a tensor of shape {tuple(out.shape)}")
        out = float(out)
    if not isinstance(out, (float, int)):
        raise ExerciseError(f"{name}: return a float, got {type(out).__name__}")
    exact = float(torch.linalg.matrix_norm(A, ord=2))
    if abs(out - exact) < 1e-6 * exact:
        few = call_student(name, fn, A, 2)
        if abs(float(few) - _sigma_max_power_solution(A, 2)) < 1e-9 * exact:
            return passed(name)
        raise ExerciseError(f"{name}: right after 60 iterations but not after 2 ({float(few):.6g} vs "
                            f"{_sigma_max_power_solution(A, 2):.6g}): start from ones/sqrt(r) and use iters steps.")
    radius = float(torch.linalg.eigvals(A).abs().max())
    on_A = _power_on_A(A, 60)
    hint = ""
    if abs(out - radius) < 1e-3 * radius or abs(out - on_A) < 1e-9 * max(on_A, 1e-12):
        hint = (" That is the spectral radius |lambda|_max (power iteration on A). sigma_max needs A^T A; for a "
                "non-normal A the two differ, and spectral normalisation bounds sigma_max.")
    elif abs(out - exact**2) < 1e-3 * exact**2:
        hint = " That is sigma_max squared (the eigenvalue of A^T A): return ||A x||."
    raise ExerciseError(f"{name}: got {out:.6g}, expected {exact:.6g} (seed {seed}).{hint}")
