"""Lab 02 (build SKA yourself): exercises, checkers and solutions.

Numbered by the lab's sections. All array functions work on any leading batch dims ``[...]`` (heads,
chunks), so that lab 02 can assemble a layer from them and train it; every checker tries none, one and two
leading dims and the exact shapes the lab's later cells call the function with (section 6's layer calls
three of them with three leading dims).

1. ``ska_statistics(k [..., T, r], v [..., T, P], beta [..., T], k_prev [..., r]) -> (G, M, C)``: the sums a
   block of tokens adds to SKA's state, ``G = sum_t beta_t k_t k_t^T``, ``M = sum_t beta_t k_t k_{t-1}^T``
   (``k_{-1} = k_prev``, the key before the block), ``C = sum_t beta_t v_t k_t^T``.
2. ``ridge_readout(G [..., r, r], C [..., P, r], q [..., n, r]) -> y [..., n, P]``: the ridge-regression
   readout ``y = C G^-1 q`` per query row (the learner derives it from the objective).
2b. ``kernel_ridge_readout(k [..., T, r], v [..., T, P], beta [..., T] or None, q [..., n, r], eps)``: the same
   regression in its dual (kernel) form, through the ``T x T`` kernel matrix of the keys, never an ``r x r``
   matrix (a thought exercise: the push-through identity).
3. ``whitened_operator(G, M) -> (L, A_w)``: ``G = L L^T`` (Cholesky) and ``A_w = L^-1 A L`` with
   ``A = M G^-1``, which simplifies to ``L^-1 M L^-T`` (the learner derives it).
4. ``power_filter(G, M, C, q, K, gamma, eta) -> y [..., n, P]``: ``y = eta s^K C G^-1 L A_w^K L^-1 q`` with
   ``s = gamma / max(1, sigma_max(A_w))`` (sigma_max exact, gradient stopped, as the paper does).
5. ``exclusive_prefix_sum(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix [..., nc, a, b], total [..., a, b])``:
   what chunk ``c`` reads in chunk mode, ``X0 + sum_{c' < c} Xc[c']``, and the state after the last chunk.
8. ``ska_step(state, k_t, v_t, q_t, beta_t, K, eps, eta) -> (y_t, state)`` (open-ended, graded with a rubric):
   one token of SKA's token-causal decode over the learner's own state ``(G^-1, M, C, k_prev)``, ``G^-1`` kept
   by Sherman-Morrison updates (no inverse, solve or factorisation: ``O(r^2)`` per token), read after the
   token is written, as the library's decoding and ``ska_chunked(..., mode="token")`` do.

Section 6 of the lab assembles the learner's functions into a layer: :func:`record_calls` records what the
layer passes to each of them and :func:`check_layer` compares each with its reference on those inputs, names
the one at fault and makes the lab use its reference from there on.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch.overrides import TorchFunctionMode

from ..ska import SKAState, ska_chunked, ska_readout, ska_recurrent
from ..ska.linalg import whiten
from . import ExerciseError, NotAttempted, batch_dims_hint, call_student, checker, close, expect_tensor, \
    fresh_generator, leading_dims, passed
from .exercises import Exercise

__all__ = [
    "_ska_statistics_solution", "_ridge_readout_solution", "_kernel_ridge_readout_solution",
    "_whitened_operator_solution", "_power_filter_solution", "_exclusive_prefix_sum_solution", "_ska_step_solution",
    "check_ska_statistics", "check_ridge_readout", "check_kernel_ridge_readout", "check_whitened_operator",
    "check_power_filter", "check_exclusive_prefix_sum", "check_ska_step", "record_calls", "check_layer",
    "LAYER_FUNCTIONS", "SECTION6",
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


# ---------------------------------------------------------------------------------------------- 1. statistics
@checker()
def check_ska_statistics(fn) -> None:
    """Check ``fn(k, v, beta, k_prev) -> (G, M, C)`` against the state the library's reference keeps, for no,
    one and two leading dims and section 6's three."""
    name = "ska_statistics"
    sizes = {(): (9, 4, 3), (3,): (1, 5, 2), (2, 3): (13, 3, 6)}
    s6 = SECTION6
    sizes[s6["lead"]] = (s6["T"], s6["r"], s6["P"])

    def trial(lead):
        T, r, P = sizes[lead]
        g, seed = fresh_generator()
        k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
        v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
        beta = torch.rand(*lead, T, generator=g, dtype=torch.float64)
        k_prev = torch.randn(*lead, r, generator=g, dtype=torch.float64)
        out = _tuple_of(name, _call(name, fn, k, v, beta, k_prev), 3, "the three sums (G, M, C)")
        G, M, C = (expect_tensor(name, x, (*lead, *shape), lay) for x, shape, lay in
                   zip(out, [(r, r), (r, r), (P, r)], ["G [..., r, r]", "M [..., r, r]", "C [..., P, r]"]))
        # the library's token-by-token reference, heads = the flattened leading dims; it keeps eps I + the sums
        N = k[..., 0, 0].numel()
        st = SKAState.zeros(1, N, r, P, eps=1.0, dtype=torch.float64)
        st.k_prev = k_prev.reshape(1, N, r).clone()
        flat = lambda x: x.reshape(N, T, -1).transpose(0, 1)[None]  # noqa: E731   [1, T, N, .]
        _, end = ska_recurrent(flat(k), flat(k), flat(v), beta.reshape(N, T).T[None], power_steps=0, eps=1.0, state=st)
        eye = torch.eye(r, dtype=torch.float64)
        want = ((end.G[0] - eye).reshape(*lead, r, r), end.M[0].reshape(*lead, r, r), end.C[0].reshape(*lead, P, r))
        for label, got, ref in zip("GMC", (G, M, C), want):
            if close(got, ref, 1e-9):
                continue
            bk = beta[..., None] * k
            k_lag = torch.cat([k_prev[..., None, :], k[..., :-1, :]], -2)
            typical = {
                " The gate beta_t is missing (every token must write with its weight beta_t).":
                    {"G": k.mT @ k, "M": k.mT @ k_lag, "C": v.mT @ k}[label],
                " That includes eps I: return the sums only (the state adds eps I once, at the start).":
                    ref + eye if label == "G" else None,
            }
            if label == "M":
                typical.update({
                    " It is transposed: M = sum_t beta_t k_t k_{t-1}^T (the new key on the left).": (bk.mT @ k_lag).mT,
                    " M misses the first term beta_0 k_0 k_prev^T: the key before the block pairs with the first key.":
                        bk[..., 1:, :].mT @ k[..., :-1, :] if T > 1 else None,
                    " M pairs each key with itself: M is the lag-one moment, k_t with k_{t-1}.": bk.mT @ k,
                })
            hint = _first_wrong(got, typical, 1e-9)
            return (f"{name}: wrong {label} with {_dims(lead)}, T={T}, r={r}, P={P} (seed {seed}): max abs error "
                    f"{(got - ref).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 2. ridge readout
@checker()
def check_ridge_readout(fn) -> None:
    """Check ``fn(G, C, q) -> C G^-1 q`` per query row, for no, one and two leading dims and the shapes section
    6's layer reaches it with (through a power filter that calls it)."""
    name = "ridge_readout"
    sizes = {(): (5, 3, 4), (3,): (8, 2, 1), (2, 3): (6, 4, 3)}
    s6 = SECTION6
    sizes[s6["lead"]] = (s6["r"], s6["P"], s6["T"])

    def trial(lead):
        r, P, n = sizes[lead]
        g, seed = fresh_generator()
        G = _spd(g, lead, r)
        C = torch.randn(*lead, P, r, generator=g, dtype=torch.float64)
        q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
        out = expect_tensor(name, _call(name, fn, G, C, q), (*lead, n, P), "y [..., n, P]")
        want = ska_readout(G, G, C, q, power_steps=0)  # the library's readout with K = 0
        if close(out, want, 1e-9):
            return None
        typical = {
            " That is linear attention (C q): the ridge solution undoes the keys' overlaps with G^-1, C G^-1 q.":
                (C @ q.mT).mT,
            " That is C G q: the minimiser needs the inverse of G (torch.linalg.solve(G, ...)), not G itself.":
                (C @ G @ q.mT).mT,
        }
        hint = _first_wrong(out, typical, 1e-9)
        return (f"{name}: wrong values with {_dims(lead)}, r={r}, P={P}, n={n} (seed {seed}): max abs error "
                f"{(out - want).abs().max():.3g}.{hint}")

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 2b. kernel ridge
_OTHER_EXERCISES = ("ska_statistics", "ridge_readout", "whitened_operator", "power_filter", "exclusive_prefix_sum",
                    "ska_step")


@checker(forbid=_OTHER_EXERCISES)
def check_kernel_ridge_readout(fn) -> None:
    """Check ``fn(k, v, beta, q, eps)`` (the dual form) against the primal ridge readout ``C G^-1 q``: fresh
    inputs with fewer and more tokens than the rank, with and without write weights (one of them 0), no, one
    and two leading dims; refused if it builds an ``r x r`` matrix (the primal route) or calls the lab's other
    exercises."""
    name = "kernel_ridge_readout"
    cases = [((), 5, 9, 3, 2, True), ((), 12, 7, 4, 3, False), ((3,), 6, 11, 2, 4, True), ((3,), 14, 5, 3, 2, False),
             ((2, 3), 4, 7, 5, 3, True), ((2, 3), 10, 6, 2, 5, True)]  # (lead, T, r, P, n, with beta)

    def trial(lead):
        for lead_, T, r, P, n, with_beta in cases:
            if lead_ != lead:
                continue
            g, seed = fresh_generator()
            k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
            v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
            q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
            beta = None
            if with_beta:
                beta = 0.05 + torch.rand(*lead, T, generator=g, dtype=torch.float64)
                beta[..., 1] = 0.0  # a token that writes nothing (a padded one, or a gate shut)
            eps = float(torch.empty(()).uniform_(0.05, 0.5, generator=g))
            where = (f"with {_dims(lead)}, T={T}, r={r}, P={P}, n={n}, "
                     f"{'with' if beta is not None else 'without'} write weights (seed {seed})")
            why = (" The ridge keeps the system solvable: Z Z^T has rank at most r, so without eps I it is singular "
                   "when T > r; and one token here has beta_t = 0 (it writes nothing), so keep B outside any inverse.")
            try:
                out = _call(name, fn, k, v, beta, q, eps, watch=_WatchOps(r, no_rr_output=True))
            except (NotAttempted, _Refused):
                raise
            except ExerciseError as e:
                return f"{e} ({where}).{why}"
            if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
                return f"{name}: the output contains NaN or Inf {where}.{why}"
            out = expect_tensor(name, out, (*lead, n, P), "y [..., n, P]")
            b = torch.ones(*lead, T, dtype=torch.float64) if beta is None else beta
            G = eps * torch.eye(r, dtype=torch.float64) + (b[..., None] * k).mT @ k  # the primal statistics
            C = (b[..., None] * v).mT @ k
            want = ska_readout(G, G, C, q, power_steps=0)
            if close(out, want, 1e-9):
                continue
            eye_T = torch.eye(T, dtype=torch.float64)
            kern = k @ k.mT
            bv = b[..., None] * v
            typical = {
                " The write weights beta_t are missing: each token's squared error counts beta_t times.":
                    (q @ k.mT) @ torch.linalg.solve(eps * eye_T + kern, v) if beta is not None else None,
                " B is on the wrong side: (eps I + K B)^-1 B V is not (eps I + B K)^-1 B V; K = Z Z^T is symmetric, "
                "K B is not.": (q @ k.mT) @ torch.linalg.solve(eps * eye_T + kern * b[..., None, :], bv)
                if beta is not None else None,
                " That is linear attention (q Z^T B V, the kernel matrix never inverted): the ridge solution solves "
                "with eps I + B K first.": (q @ k.mT) @ bv,
                " The ridge eps is missing (the kernel matrix alone is inverted).":
                    (q @ k.mT) @ torch.linalg.solve(kern, v) if beta is None and T <= r else None,
            }
            hint = _first_wrong(out, typical, 1e-8)
            return (f"{name}: wrong values {where}: max abs error {(out - want).abs().max():.3g} from the primal "
                    f"C G^-1 q.{hint}")
        return None

    _over_leads(name, leading_dims(), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 3. whitened operator
@checker(forbid=("koopman_operator",))
def check_whitened_operator(fn) -> None:
    """Check ``fn(G, M) -> (L, A_w)``: ``L L^T = G`` (lower triangular) and ``A_w = L^-1 A L = L^-1 M L^-T``."""
    name = "whitened_operator"
    sizes = {(): 3, (3,): 6, (2, 3): 4, SECTION6["lead"]: SECTION6["r"]}

    def trial(lead):
        r = sizes[lead]
        g, seed = fresh_generator()
        G = _spd(g, lead, r)
        M = torch.randn(*lead, r, r, generator=g, dtype=torch.float64)
        out = _tuple_of(name, _call(name, fn, G, M), 2, "(L, A_w)")
        L, A_w = (expect_tensor(name, x, (*lead, r, r), lay) for x, lay in zip(out, ["L [..., r, r]", "A_w [..., r, r]"]))
        if not close(L @ L.mT, G, 1e-9) or not close(L, L.tril(), 1e-12):
            return (f"{name}: L must be the lower-triangular Cholesky factor, L L^T = G (torch.linalg.cholesky), "
                    f"with {_dims(lead)} (seed {seed}).")
        L_ref = torch.linalg.cholesky(G)
        want = whiten(M, L_ref)  # the library's
        if close(A_w, want, 1e-9):
            return None
        Linv = torch.linalg.inv(L_ref)
        typical = {
            " You have L^-1 M L^-1: the right factor is L^-T (the transpose), A_w = L^-1 M L^-T.": Linv @ M @ Linv,
            " That is A = M G^-1, the unwhitened operator (similar to A_w, same eigenvalues, different matrix).":
                M @ torch.linalg.inv(G),
            " You have L^-T M L^-1 (the factors swapped): A_w = L^-1 M L^-T.": Linv.mT @ M @ Linv,
            " That is L^-1 M: A = M G^-1, so L^-1 A L = L^-1 M G^-1 L, and G^-1 L = L^-T.": Linv @ M,
        }
        hint = _first_wrong(A_w, typical, 1e-9)
        return (f"{name}: wrong A_w with {_dims(lead)}, r={r} (seed {seed}): max abs error "
                f"{(A_w - want).abs().max():.3g}.{hint}")

    _over_leads(name, leading_dims(SECTION6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 4. power filter
def _power_filter_inputs(g, lead, r, P, n):
    G = _spd(g, lead, r)
    M = 1.5 * torch.randn(*lead, r, r, generator=g, dtype=torch.float64) / r ** 0.5  # sigma_max(A_w) often above 1
    C = torch.randn(*lead, P, r, generator=g, dtype=torch.float64)
    q = torch.randn(*lead, n, r, generator=g, dtype=torch.float64)
    return G, M, C, q


@checker()
def check_power_filter(fn) -> None:
    """Check ``fn(G, M, C, q, K, gamma, eta)`` against the library's readout with the exact spectral norm, values
    and gradients (the spectral scale carries no gradient), K = 0, 1, 2, for no, one and two leading dims and
    section 6's call (three leading dims, K = 1, gamma = eta = 1)."""
    name = "power_filter"
    s6 = SECTION6
    sizes = {(): (4, 3, 2), (3,): (5, 2, 3), (2, 3): (3, 2, 1), s6["lead"]: (s6["r"], s6["P"], s6["T"])}

    def trial(lead):
        r, P, n = sizes[lead]
        runs = [(1, 1.0, 1.0)] if lead == s6["lead"] else [(K, 0.8, 1.3) for K in (1, 2, 0)]
        for K, gamma, eta in runs:
            g, seed = fresh_generator()
            G, M, C, q = _power_filter_inputs(g, lead, r, P, n)
            Mg, qg = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
            out = expect_tensor(name, _call(name, fn, G, Mg, C, qg, K, gamma, eta), (*lead, n, P), "y [..., n, P]")
            ref_M, ref_q = M.clone().requires_grad_(True), q.clone().requires_grad_(True)
            want = ska_readout(G, ref_M, C, ref_q, power_steps=K, eta=eta, gamma=gamma, spectral_norm=True,
                               spectral_iters=None)
            if not close(out.detach(), want.detach(), 1e-8):
                A = M @ torch.linalg.inv(G)
                _, A_w = _whitened_operator_solution(G, M)
                sig = torch.linalg.matrix_norm(A_w, ord=2).clamp_min(1.0)
                base = _ridge_readout_solution(G, C, (torch.linalg.matrix_power(A, K) @ q.mT).mT)  # C G^-1 A^K q
                typical = {
                    " The spectral scale is missing: multiply by eta * s^K, s = gamma / max(1, sigma_max(A_w)).":
                        eta * base,
                    " s is applied once: the filter applies A K times, so the scale is s^K.":
                        base * (eta * gamma / sig)[..., None, None] if K != 1 else None,
                    " s divides by sigma_max(A_w) even when it is below 1: s = gamma / max(1, sigma_max(A_w)).":
                        base * (eta * (gamma / torch.linalg.matrix_norm(A_w, ord=2)) ** K)[..., None, None],
                    " That uses G^-1 M, not A = M G^-1 (same eigenvalues, but it does not map k_{t-1} to k_t).":
                        _ridge_readout_solution(G, C, (torch.linalg.matrix_power(torch.linalg.solve(G, M), K)
                                                       @ q.mT).mT) * (eta * (gamma / sig) ** K)[..., None, None],
                }
                hint = _first_wrong(out.detach(), typical, 1e-8)
                return (f"{name}: wrong values with {_dims(lead)}, r={r}, K={K} (seed {seed}): max abs error "
                        f"{(out.detach() - want.detach()).abs().max():.3g}.{hint}")
            w = torch.randn(out.shape, generator=g, dtype=torch.float64)
            got_g = torch.autograd.grad((out * w).sum(), (Mg, qg), allow_unused=True)
            ref_g = torch.autograd.grad((want * w).sum(), (ref_M, ref_q), allow_unused=True)
            for label, a, b in zip(("M", "q"), got_g, ref_g):
                a = torch.zeros_like(M) if a is None else a  # K = 0 does not use M
                b = torch.zeros_like(M) if b is None else b
                if not close(a, b, 1e-7):
                    return (f"{name}: right values, but the gradient with respect to {label} differs with "
                            f"{_dims(lead)}, K={K} (seed {seed}). Stop the gradient through sigma_max, as the "
                            "paper does: torch.linalg.matrix_norm(A_w.detach(), ord=2).")
        return None

    _over_leads(name, leading_dims(s6["lead"]), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 5. exclusive prefix
@checker()
def check_exclusive_prefix_sum(fn) -> None:
    """Check ``fn(X0 [..., a, b], Xc [..., nc, a, b]) -> (prefix, total)`` for no, one and two leading dims and
    section 6's calls (X0 with two leading dims, ten chunks of r x r and P x r sums)."""
    name = "exclusive_prefix_sum"
    s6 = SECTION6
    B, H, nc6 = s6["lead"]
    cases = {(): [(5, 3, 3)], (3,): [(1, 2, 4), (6, 3, 2)], (2, 3): [(7, 4, 2)],
             (B, H): [(nc6, s6["r"], s6["r"]), (nc6, s6["P"], s6["r"])]}

    def trial(lead):
        for nc, a, b in cases[lead]:
            g, seed = fresh_generator()
            X0 = torch.randn(*lead, a, b, generator=g, dtype=torch.float64)
            Xc = torch.randn(*lead, nc, a, b, generator=g, dtype=torch.float64)
            out = _tuple_of(name, _call(name, fn, X0, Xc), 2, "(prefix, total)")
            prefix = expect_tensor(name, out[0], (*lead, nc, a, b), "prefix [..., nc, a, b]")
            total = expect_tensor(name, out[1], (*lead, a, b), "total [..., a, b]")
            csum = torch.cumsum(Xc, dim=len(lead))  # over the chunks, computed here from the left
            want_p = X0[..., None, :, :] + csum - Xc
            want_t = X0 + Xc.sum(len(lead))
            if close(prefix, want_p, 1e-10) and close(total, want_t, 1e-10):
                continue
            if close(prefix, want_p, 1e-10):
                return (f"{name}: the prefix is right, the total is not, with {_dims(lead)} (seed {seed}): the "
                        "state after the last chunk is X0 plus every chunk.")
            typical = {
                " Each chunk reads its own sums too (an inclusive cumsum): chunk c may read only the chunks before it.":
                    X0[..., None, :, :] + csum,
                " X0 (what the state already held before this call) is missing.": want_p - X0[..., None, :, :],
                " That is the chunks' own sums: chunk c reads the sum of every chunk before it.": Xc,
            }
            hint = _first_wrong(prefix, typical, 1e-10)
            return (f"{name}: wrong prefix with {_dims(lead)}, nc={nc} (seed {seed}): max abs error "
                    f"{(prefix - want_p).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims((B, H)), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- 8. the decode step
def _ska_step_variant(kind: str):
    """A typical wrong decode step, for the checker's hints."""

    def step(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
        if state is None:
            r, P, lead = k_t.shape[-1], v_t.shape[-1], k_t.shape[:-1]
            eye = torch.eye(r, dtype=k_t.dtype)
            state = ((eye / eps).expand(*lead, r, r), k_t.new_zeros(*lead, r, r), k_t.new_zeros(*lead, P, r),
                     torch.zeros_like(k_t))
        G_inv, M, C, k_prev = state
        b = beta_t[..., None]
        if kind == "read_first":
            y = _ska_step_solution((G_inv, M, C, k_prev), k_t, v_t, q_t, torch.zeros_like(beta_t), K, eps, eta)[0]
            return y, _ska_step_solution(state, k_t, v_t, q_t, beta_t, K, eps, eta)[1]
        g = (G_inv @ k_t[..., None])[..., 0]
        a = torch.ones_like(b) if kind == "no_beta_rank1" else b
        denom = 1.0 + a * (k_t * g).sum(-1, keepdim=True)
        outer = g[..., :, None] * g[..., None, :]
        if kind == "sign":
            G_new = G_inv + (a / denom)[..., None] * outer
        elif kind == "no_denominator":
            G_new = G_inv - a[..., None] * outer
        else:
            G_new = G_inv - (a / denom)[..., None] * outer
        M_new = M + b[..., None] * (k_t[..., :, None] * k_prev[..., None, :])
        C_new = C + b[..., None] * (v_t[..., :, None] * k_t[..., None, :])
        u = q_t
        for _ in range(0 if kind == "no_power" else K):
            u = (M_new @ (G_new @ u[..., None]))[..., 0]
        y = eta * (C_new @ (G_new @ u[..., None]))[..., 0]
        return y, (G_new, M_new, C_new, k_prev if kind == "k_prev_kept" else k_t)

    return step


_STEP_MISTAKES = {
    "sign": " Wrong sign in the Sherman-Morrison update: adding a key to G shrinks G^-1, "
            "(G + b k k^T)^-1 = G^-1 - b g g^T / (1 + b k^T g) with g = G^-1 k.",
    "no_beta_rank1": " beta_t is missing from the rank-1 update of G^-1 (M and C have it): G grows by beta_t k_t k_t^T.",
    "no_denominator": " The Sherman-Morrison denominator 1 + beta_t k_t^T G^-1 k_t is missing.",
    "read_first": " You read before writing token t: that is what chunk mode with S = 1 computes (position t reads "
                  "tokens < t). Decoding writes token t first, then reads (mode='token').",
    "k_prev_kept": " The previous key is never updated: return k_t as the new k_prev, so that M pairs k_{t+1} with k_t.",
    "no_power": " K is ignored: push the query K times through A = M G^-1 (K matrix-vector pairs) before the readout.",
}
_STEP_FORBID = ("inv", "inv_ex", "inverse", "pinv", "pinverse", "tensorinv", "solve", "solve_ex", "tensorsolve",
                "solve_triangular", "triangular_solve", "cholesky", "cholesky_ex", "cholesky_solve", "cholesky_inverse",
                "lstsq", "lu_factor", "lu_solve", "ldl_factor", "ridge_readout", "power_filter", "whitened_operator",
                "kernel_ridge_readout")
STEP_DRIFT_LEAD = (2,)  # the float32 drift cell of section 8 streams two heads


def _stream(step, k, v, q, beta, K, eps, eta, call=None):
    """Stream ``[..., T, *]`` inputs token by token through ``step``; returns (y [..., T, P], last state)."""
    state, ys = None, []
    for t in range(k.shape[-2]):
        args = (state, k[..., t, :], v[..., t, :], q[..., t, :], beta[..., t], K, eps, eta)
        y, state = step(*args) if call is None else call(*args)
        ys.append(y)
    return torch.stack(ys, -2), state


@checker(forbid=_STEP_FORBID)
def check_ska_step(fn) -> None:
    """Check ``fn(state, k_t, v_t, q_t, beta_t, K, eps, eta) -> (y_t, state)`` streamed over whole sequences
    against the library's chunk-parallel forward in token mode (``ska_chunked(..., mode="token")``, spectral
    norm off), K = 0 and 1, float64, no, one and two leading dims and section 8's shape; the state must be
    ``(G^-1, M, C, k_prev)``; refused: an inverse, solve or factorisation, or a product of two r x r matrices,
    inside the step."""
    name = "ska_step"
    r, P, T = 5, 3, 11

    def trial(lead):
        for K, eps in ((0, 1e-3), (1, 0.2)):
            g, seed = fresh_generator()
            k = torch.nn.functional.normalize(torch.randn(*lead, T, r, generator=g, dtype=torch.float64), dim=-1)
            v = torch.randn(*lead, T, P, generator=g, dtype=torch.float64)
            q = torch.randn(*lead, T, r, generator=g, dtype=torch.float64)
            beta = torch.rand(*lead, T, generator=g, dtype=torch.float64)
            beta[..., 3] = 0.0  # a token whose gate is shut writes nothing
            eta = 1.3

            def call(state, *args):
                out = _call(name, fn, state, *args, watch=_WatchOps(r, no_factorisation=True, no_rr_product=True))
                y, new = _tuple_of(name, out, 2, "(y_t, state)")
                expect_tensor(name, y, (*lead, P), "y_t [..., P]")
                _tuple_of(name, new, 4, "the state (G_inv, M, C, k_prev)")
                return y, new

            ys, end = _stream(None, k, v, q, beta, K, eps, eta, call=call)
            # the library's chunk-parallel forward, token-causal: heads = the flattened leading dims
            N = k[..., 0, 0].numel()
            flat = lambda x: x.reshape(N, T, -1).transpose(0, 1)[None]  # noqa: E731   [1, T, N, .]
            b_flat = beta.reshape(N, T).T[None]
            ref = dict(power_steps=K, eps=eps, eta=eta, spectral_norm=False)
            y_ref, st = ska_chunked(flat(q), flat(k), flat(v), b_flat, mode="token", chunk_size=4, **ref)
            unflat = lambda y: y[0].transpose(0, 1).reshape(*lead, T, -1)  # noqa: E731
            want = unflat(y_ref)
            G_inv, M, C, k_prev = end
            if close(ys, want, 1e-9):
                shapes = [(r, r), (r, r), (P, r), (r,)]
                wants = [torch.linalg.inv(st.G[0]), st.M[0], st.C[0], st.k_prev[0]]
                for i, (label, got, shape, ref_x) in enumerate(zip(("G_inv", "M", "C", "k_prev"), end, shapes, wants)):
                    expect_tensor(name, got, (*lead, *shape), f"{label} [..., {', '.join(map(str, shape))}]")
                    if not close(got, ref_x.reshape(*lead, *shape), 1e-8):
                        hint = next((msg for kind, msg in _STEP_MISTAKES.items() if close(got, _stream(
                            _ska_step_variant(kind), k, v, q, beta, K, eps, eta)[1][i], 1e-8)), "")
                        what = "G^-1 (the inverse of eps I + sum_t beta_t k_t k_t^T)" if label == "G_inv" else label
                        return (f"{name}: right outputs, but the state's {label} after {T} tokens is not {what} "
                                f"with {_dims(lead)}, K={K} (seed {seed}). Keep (G^-1, M, C, k_prev) in the "
                                f"state.{hint}")
                continue
            bad = (ys - want).abs().amax(-1).reshape(-1, T).amax(0)  # per token
            first = int(torch.argmax((bad > 1e-9 * (1 + float(want.abs().max()))).to(torch.int8)))
            hint = ""
            y_s1 = unflat(ska_chunked(flat(q), flat(k), flat(v), b_flat, mode="chunk", chunk_size=1, **ref)[0])
            if close(ys, y_s1, 1e-9):
                hint = _STEP_MISTAKES["read_first"]
            else:
                for kind, msg in _STEP_MISTAKES.items():
                    if close(ys, _stream(_ska_step_variant(kind), k, v, q, beta, K, eps, eta)[0], 1e-9):
                        hint = msg
                        break
            return (f"{name}: the output first differs from the library's token-mode forward at token {first} of "
                    f"{T} with {_dims(lead)}, K={K}, eps={eps} (seed {seed}): max abs error "
                    f"{(ys - want).abs().max():.3g}.{hint}")
        return None

    _over_leads(name, leading_dims(STEP_DRIFT_LEAD), trial)
    return passed(name)


# ---------------------------------------------------------------------------------------------- section 6: the layer
@contextlib.contextmanager
def record_calls(namespace: dict, names: Iterable[str] = LAYER_FUNCTIONS):
    """Within the block, the functions ``names`` of ``namespace`` (a lab's ``globals()``) record every call:
    yields a list of ``(name, function, args, output)``; the functions are put back afterwards."""
    calls: list = []
    saved = {n: namespace[n] for n in names if n in namespace}

    def recording(n, f):
        def run(*args):
            out = f(*args)
            calls.append((n, f, args, out))
            return out
        return run

    try:
        for n, f in saved.items():
            namespace[n] = recording(n, f)
        yield calls
    finally:
        namespace.update(saved)


_PARTS = {"ska_statistics": ("G", "M", "C"), "exclusive_prefix_sum": ("prefix", "total"),
          "whitened_operator": ("L", "A_w")}
_ARGS = {"ska_statistics": ("k", "v", "beta", "k_prev"), "exclusive_prefix_sum": ("X0", "Xc"),
         "power_filter": ("G", "M", "C", "q", "K", "gamma", "eta"), "ridge_readout": ("G", "C", "q"),
         "whitened_operator": ("G", "M")}


def _describe(fname: str, args) -> str:
    parts = [f"{a} {list(x.shape)}" for a, x in zip(_ARGS.get(fname, ()), args) if isinstance(x, torch.Tensor)]
    first = next((x for x in args if isinstance(x, torch.Tensor)), None)
    lead = "" if first is None else f" ({first.ndim - 2} leading dims)"  # every first argument is [..., a, b]
    return ", ".join(parts) + lead


def check_layer(y_mine: torch.Tensor, y_ref: torch.Tensor, calls: list, tol: float = 1e-8) -> bool:
    """Section 6: does the learner's layer give the library's output? If not, compare each of the learner's
    functions with its reference solution on the very inputs the layer passed it (``calls``, from
    :func:`record_calls`), print which one differs and how, and make the lab use the reference of each one at
    fault from here on (its exercise is marked failed). Returns True when the layer matches."""
    y_mine, y_ref = y_mine.detach(), y_ref.detach()
    diff = float((y_mine - y_ref).abs().max())
    if diff <= tol * (1.0 + float(y_ref.abs().max())):
        print(f"\N{WHITE HEAVY CHECK MARK} your layer equals the library's: max |difference| {diff:.2e} "
              f"(output scale {float(y_ref.abs().max()):.2f}).")
        return True
    faults: dict[str, str] = {}
    for fname, f, args, out in calls:
        if fname in faults:
            continue
        solution = getattr(f, "solution", None) or globals().get(f"_{fname}_solution")
        with torch.no_grad():
            want = solution(*args)
            got = out
        outs = got if isinstance(got, (tuple, list)) else (got,)
        wants = want if isinstance(want, (tuple, list)) else (want,)
        labels = _PARTS.get(fname, ("output",))
        for label, a, b in zip(labels, outs, wants):
            if not isinstance(a, torch.Tensor) or a.shape != b.shape:
                faults[fname] = (f"its {label} has shape {list(getattr(a, 'shape', []))} where the reference has "
                                 f"{list(b.shape)}")
                break
            err = float((a.detach() - b).abs().max())
            if not err <= 1e-6 * (1.0 + float(b.abs().max())):
                faults[fname] = f"its {label} differs from the reference by up to {err:.3g}"
                break
        if fname in faults:
            faults[fname] += f", on the inputs the layer gave it: {_describe(fname, args)}"
            if isinstance(f, Exercise) and f.status in ("passed", "unchecked"):
                f.status, f.message = "failed", f"wrong inside the layer: {faults[fname]}"
    print(f"\N{CROSS MARK} your layer differs from the library's: max |difference| {diff:.3g} "
          f"(output scale {float(y_ref.abs().max()):.2f}).")
    if not faults:
        print("   Each of your functions agrees with its reference on the inputs the layer gave it: the difference "
              "is in the layer's own code (MySKA). Compare it with the equations line by line.")
        return False
    for fname, why in faults.items():
        print(f"   The function at fault: `{fname}`: {why}. Call it on these inputs beside its reference to see "
              "where it goes wrong; if only the number of leading dims differs from what its checker tried, count "
              "dims from the end (`dim=-3`, `x[..., None, :]`, `...` in einsum).")
    print("   From here on the lab uses the reference solution of " + ", ".join(f"`{n}`" for n in faults)
          + ". Fix it, run its exercise cell again, then this cell.")
    return False
