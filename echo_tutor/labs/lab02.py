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

This module holds section 6's tools. The solutions, section 6's shapes and the tools the checkers share live in
:mod:`echo_tutor.labs.lab02_common`, the checkers of exercises 1-5 in :mod:`echo_tutor.labs.lab02_parts`, exercise
8's in :mod:`echo_tutor.labs.lab02_decode`; all are re-exported here (the lab, the grader and the tests import
every name from ``lab02``).
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch

from .exercises import Exercise
from .lab02_common import (LAYER_FUNCTIONS, SECTION6, _exclusive_prefix_sum_solution, _kernel_ridge_readout_solution,
                           _power_filter_solution, _ridge_readout_solution, _ska_statistics_solution,
                           _ska_step_solution, _whitened_operator_solution)
from .lab02_decode import STEP_DRIFT_LEAD, check_ska_step
from .lab02_parts import (check_exclusive_prefix_sum, check_kernel_ridge_readout, check_power_filter,
                          check_ridge_readout, check_ska_statistics, check_whitened_operator)

__all__ = [
    "_ska_statistics_solution", "_ridge_readout_solution", "_kernel_ridge_readout_solution",
    "_whitened_operator_solution", "_power_filter_solution", "_exclusive_prefix_sum_solution", "_ska_step_solution",
    "check_ska_statistics", "check_ridge_readout", "check_kernel_ridge_readout", "check_whitened_operator",
    "check_power_filter", "check_exclusive_prefix_sum", "check_ska_step", "record_calls", "check_layer",
    "LAYER_FUNCTIONS", "SECTION6", "STEP_DRIFT_LEAD",
]


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
