"""Lab 02: the reference solutions of its exercises (see :mod:`echo_tutor.labs.lab02`, which re-exports them),
the exact shapes section 6's layer calls them with, and the tools the checkers of
:mod:`echo_tutor.labs.lab02_parts` and :mod:`echo_tutor.labs.lab02_decode` share: a call of the student's
function whose refusals stop the check at once, a watch on the torch operations it performs, the loop over
leading shapes, and the inputs and hints they build."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode

from . import ExerciseError, NotAttempted, batch_dims_hint, call_student, close

__all__ = [
    "_ska_statistics_solution", "_ridge_readout_solution", "_kernel_ridge_readout_solution",
    "_whitened_operator_solution", "_power_filter_solution", "_exclusive_prefix_sum_solution", "_ska_step_solution",
    "LAYER_FUNCTIONS", "SECTION6", "_Refused", "_call", "_WatchOps", "_over_leads", "_dims", "_spd", "_first_wrong",
    "_tuple_of",
]

# The exact shapes section 6's layer (MySKA, d = 32, 2 heads, r = 8, chunks of 16, 150 tokens -> 10 chunks)
# calls the functions with: three leading dims (batch, head, chunk) for the statistics and the readout, two
# (batch, head) for the prefix's X0. Section 7 trains the same layer with other sizes and the same ranks.
SECTION6 = dict(lead=(2, 2, 10), T=16, r=8, P=16)
LAYER_FUNCTIONS = ("ska_statistics", "exclusive_prefix_sum", "power_filter", "ridge_readout", "whitened_operator")


# ---------------------------------------------------------------------------------------------- solutions
def _ska_statistics_solution(k, v, beta, k_prev):
    k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], dim=-2)  # k_{t-1}, the first from before the block
    bk = beta[..., None] * k  # beta_t k_t
    return bk.mT @ k, bk.mT @ k_lag, (beta[..., None] * v).mT @ k


def _ridge_readout_solution(G, C, q):
    return (C @ torch.linalg.solve(G, q.mT)).mT  # (C G^-1 q) for every query row


def _kernel_ridge_readout_solution(k, v, beta, q, eps):
    # W = C G^-1 = V^T B Z (eps I_r + Z^T B Z)^-1 = V^T B (eps I_T + Z Z^T B)^-1 Z   (push-through), so
    # y = W q  and  Y = Q Z^T (eps I_T + B Z Z^T)^-1 B V: only T x T and T x n matrices, never r x r
    T = k.shape[-2]
    bv = v if beta is None else beta[..., None] * v  # B V        [..., T, P]
    kern = k @ k.mT  # the kernel matrix Z Z^T                    [..., T, T]
    if beta is not None:
        kern = beta[..., None] * kern  # B Z Z^T (rows scaled)
    eye = torch.eye(T, dtype=k.dtype, device=k.device)
    alpha = torch.linalg.solve(eps * eye + kern, bv)  # (eps I + B K)^-1 B V   [..., T, P]
    return (q @ k.mT) @ alpha  # [..., n, T] @ [..., T, P]


def _whitened_operator_solution(G, M):
    L = torch.linalg.cholesky(G)
    Lm = torch.linalg.solve_triangular(L, M, upper=False)  # L^-1 M
    return L, torch.linalg.solve_triangular(L, Lm.mT, upper=False).mT  # L^-1 M L^-T


def _power_filter_solution(G, M, C, q, K, gamma, eta):
    L, A_w = _whitened_operator_solution(G, M)
    s = gamma / torch.linalg.matrix_norm(A_w.detach(), ord=2).clamp_min(1.0)  # [...]
    u = torch.linalg.solve_triangular(L, q.mT, upper=False)  # L^-1 q   [..., r, n]
    for _ in range(K):
        u = A_w @ u
    u = L @ u  # L A_w^K L^-1 q = (M G^-1)^K q
    return _ridge_readout_solution(G, C, u.mT) * (eta * s**K)[..., None, None]


def _exclusive_prefix_sum_solution(X0, Xc):
    csum = Xc.cumsum(-3)
    prefix = X0[..., None, :, :] + torch.cat([torch.zeros_like(Xc[..., :1, :, :]), csum[..., :-1, :, :]], dim=-3)
    return prefix, X0 + csum[..., -1, :, :]


def _ska_step_solution(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    if state is None:  # a fresh state: G = eps I, so G^-1 = I / eps; M, C and the previous key zero
        r, P, lead = k_t.shape[-1], v_t.shape[-1], k_t.shape[:-1]
        eye = torch.eye(r, dtype=k_t.dtype, device=k_t.device)
        state = ((eye / eps).expand(*lead, r, r), k_t.new_zeros(*lead, r, r), k_t.new_zeros(*lead, P, r),
                 torch.zeros_like(k_t))
    G_inv, M, C, k_prev = state
    b = beta_t[..., None]  # [..., 1]
    # (1) write token t. G + b k k^T by Sherman-Morrison on G^-1: G^-1 - b g g^T / (1 + b k^T g), g = G^-1 k
    g = (G_inv @ k_t[..., None])[..., 0]  # O(r^2)
    G_inv = G_inv - (b / (1.0 + b * (k_t * g).sum(-1, keepdim=True)))[..., None] * (g[..., :, None] * g[..., None, :])
    M = M + b[..., None] * (k_t[..., :, None] * k_prev[..., None, :])
    C = C + b[..., None] * (v_t[..., :, None] * k_t[..., None, :])
    # (2) then read, as decoding does: y = eta C G^-1 (M G^-1)^K q with matrix-vector products only
    u = q_t
    for _ in range(K):
        u = (M @ (G_inv @ u[..., None]))[..., 0]
    y = eta * (C @ (G_inv @ u[..., None]))[..., 0]
    return y, (G_inv, M, C, k_t)


# ---------------------------------------------------------------------------------------------- checker tools
class _Refused(ExerciseError):
    """A call the exercise does not allow (a package routine, a factorisation): said at once, not per shape."""


def _call(name: str, fn, *args, watch: "_WatchOps | None" = None):
    """``call_student``, with refusals raised as :class:`_Refused` and, with ``watch``, the torch operations the
    student's function performs inspected while it runs."""
    try:
        if watch is None:
            return call_student(name, fn, *args)
        with watch:
            out = call_student(name, fn, *args)
    except NotAttempted:
        raise
    except ExerciseError as e:
        if e.__cause__ is None:  # not a crash of the student's code: a call the guard refused
            raise _Refused(str(e)) from None
        raise
    if watch is not None and watch.found:
        raise _Refused(f"{name}: {watch.found}")
    return out


_FACTORISATIONS = {"inv", "inv_ex", "inverse", "pinv", "pinverse", "tensorinv", "solve", "solve_ex", "tensorsolve",
                   "solve_triangular", "triangular_solve", "cholesky", "cholesky_ex", "cholesky_solve",
                   "cholesky_inverse", "lstsq", "lu", "lu_factor", "lu_factor_ex", "lu_solve", "ldl_factor",
                   "ldl_factor_ex", "ldl_solve", "qr", "eig", "eigh", "eigvals", "eigvalsh", "svd", "svdvals"}
_PRODUCTS = {"matmul", "mm", "bmm", "__matmul__", "__rmatmul__", "einsum", "tensordot", "multi_dot", "chain_matmul",
             "addmm", "baddbmm", "addbmm"}


class _WatchOps(TorchFunctionMode):
    """Watch the torch operations a student's function performs (a ``TorchFunctionMode``: every torch function
    and tensor method, however it was reached). ``no_rr_output``: refuse an ``r x r`` result (the primal Gram);
    ``no_factorisation``: refuse an inverse, solve or factorisation; ``no_rr_product``: refuse a product of two
    ``r x r`` matrices (``O(r^3)``). ``found`` says what was refused."""

    def __init__(self, r: int, *, no_rr_output=False, no_factorisation=False, no_rr_product=False) -> None:
        super().__init__()
        self.r, self.found = r, None
        self.no_rr_output, self.no_factorisation, self.no_rr_product = no_rr_output, no_factorisation, no_rr_product

    def _rr(self, x) -> bool:
        return isinstance(x, torch.Tensor) and x.ndim >= 2 and tuple(x.shape[-2:]) == (self.r, self.r)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "").removeprefix("linalg_")
        if self.found is None and self.no_factorisation:
            negative_power = name == "matrix_power" and len(args) > 1 and isinstance(args[1], int) and args[1] < 0
            if name in _FACTORISATIONS or negative_power:
                self.found = (f"your step calls `{name}` (an inverse, solve or factorisation, O(r^3)). Keep G^-1 "
                              "itself in the state and update it by Sherman-Morrison: only matrix-vector products "
                              "and a rank-1 update per token.")
        if self.found is None and self.no_rr_product and name in _PRODUCTS:
            flat = [a for x in args for a in (x if isinstance(x, (list, tuple)) else [x])]
            if sum(self._rr(a) for a in flat) >= 2:
                self.found = (f"your step multiplies two r x r matrices (`{name}`), O(r^3) per token. Apply them to "
                              "vectors instead: (M G^-1) q = M (G^-1 q) costs two O(r^2) matrix-vector products.")
        out = func(*args, **kwargs)
        if self.found is None and self.no_rr_output:
            outs = out if isinstance(out, (list, tuple)) else [out]
            if any(self._rr(o) for o in outs):
                self.found = (f"your function builds an r x r matrix (`{name}` returned shape "
                              f"{tuple(next(o for o in outs if self._rr(o)).shape)}, r = {self.r}): that is the "
                              "primal route through the Gram G = Z^T B Z + eps I. The kernel form works with the "
                              "T x T kernel matrix Z Z^T and never forms an r x r matrix.")
        return out


def _over_leads(name: str, leads: Iterable[tuple[int, ...]], trial: Callable[[tuple[int, ...]], str | None]) -> None:
    """Run ``trial(lead)`` for every leading shape (it returns None when right, else what is wrong). A function
    right for some leading shapes and wrong for others is told so (``batch_dims_hint``); a refused call stops
    the check at once."""
    passed_leads, failures = [], []
    for lead in leads:
        try:
            msg = trial(lead)
        except (NotAttempted, _Refused):
            raise
        except ExerciseError as e:
            msg = str(e)
        if msg is None:
            passed_leads.append(lead)
        else:
            failures.append((lead, msg))
    if failures:
        lead, msg = failures[0]
        raise ExerciseError(msg + batch_dims_hint(lead, passed_leads))


def _dims(lead: tuple[int, ...]) -> str:
    return f"leading dims {lead}"


def _spd(g, lead, r):
    X = torch.randn(*lead, 2 * r, r, generator=g, dtype=torch.float64)
    return X.mT @ X / (2 * r) + 0.1 * torch.eye(r, dtype=torch.float64)


def _first_wrong(out, typical: dict, tol: float = 1e-6) -> str:
    return next((hint for hint, wrong in typical.items() if wrong is not None and wrong.shape == out.shape
                 and close(out, wrong, tol)), "")


def _tuple_of(name: str, out, n: int, what: str):
    if not isinstance(out, (tuple, list)) or len(out) != n:
        raise ExerciseError(f"{name}: should return {what}, got {type(out).__name__}")
    return out
