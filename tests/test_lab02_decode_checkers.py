"""Lab 02's decode-step checker (section 8, ``ska_step``), tried as an adversary would: a step written from
scratch passes; each typical mistake is named; any inverse, solve or factorisation (however it is reached), any
O(r^3) product of two r x r matrices and a call into the package are refused; a step right for one leading batch
dim only is refused with the batch-dims hint. The other exercises' checkers are tried in
``test_lab02_checkers.py``."""

from __future__ import annotations

import importlib

import pytest
import torch

from echo_tutor.labs import ExerciseError, lab02

HINT = "It was right with leading dims"


def refused(check, fn, *needles):
    with pytest.raises(ExerciseError) as e:
        check(fn)
    for needle in needles:
        assert needle in str(e.value), f"{needle!r} not in: {e.value}"
    return str(e.value)


# ------------------------------------------------------------------------------------------ the decode step
def step_from_scratch(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    r, P = k_t.shape[-1], v_t.shape[-1]
    if state is None:
        eye = torch.eye(r, dtype=k_t.dtype)
        z = torch.zeros(*k_t.shape[:-1], r, r, dtype=k_t.dtype)
        state = (z + eye / eps, z.clone(), torch.zeros(*k_t.shape[:-1], P, r, dtype=k_t.dtype), torch.zeros_like(k_t))
    Gi, M, C, kp = state
    b = beta_t[..., None, None]
    g = Gi @ k_t[..., :, None]  # [..., r, 1]
    Gi = Gi - b * (g @ g.mT) / (1 + b * (k_t[..., None, :] @ g))
    M = M + b * k_t[..., :, None] * kp[..., None, :]
    C = C + b * v_t[..., :, None] * k_t[..., None, :]
    u = q_t[..., :, None]
    for _ in range(K):
        u = M @ (Gi @ u)
    return eta * (C @ (Gi @ u))[..., 0], (Gi, M, C, k_t)


def _step_variant(change):
    def step(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
        r, P = k_t.shape[-1], v_t.shape[-1]
        if state is None:
            eye = torch.eye(r, dtype=k_t.dtype)
            z = torch.zeros(*k_t.shape[:-1], r, r, dtype=k_t.dtype)
            state = (z + eye / eps, z.clone(), torch.zeros(*k_t.shape[:-1], P, r, dtype=k_t.dtype),
                     torch.zeros_like(k_t))
        Gi, M, C, kp = state
        b = beta_t[..., None, None]
        if change == "read_first":
            u = q_t[..., :, None]
            for _ in range(K):
                u = M @ (Gi @ u)
            y = eta * (C @ (Gi @ u))[..., 0]
        g = Gi @ k_t[..., :, None]
        a = torch.ones_like(b) if change == "no_beta" else b
        sign = 1.0 if change == "sign" else -1.0
        Gi = Gi + sign * a * (g @ g.mT) / (1 + a * (k_t[..., None, :] @ g))
        M = M + b * k_t[..., :, None] * kp[..., None, :]
        C = C + b * v_t[..., :, None] * k_t[..., None, :]
        if change != "read_first":
            u = q_t[..., :, None]
            for _ in range(K):
                u = M @ (Gi @ u)
            y = eta * (C @ (Gi @ u))[..., 0]
        return y, (Gi, M, C, kp if change == "k_prev" else k_t)

    step.__name__ = f"step_{change}"
    return step


def step_with_inverse(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    """Keeps G and inverts it every token (O(r^3))."""
    r = k_t.shape[-1]
    if state is None:
        state = (eps * torch.eye(r, dtype=k_t.dtype) + torch.zeros(*k_t.shape[:-1], r, r, dtype=k_t.dtype),)
    G = state[0] + beta_t[..., None, None] * k_t[..., :, None] * k_t[..., None, :]
    return torch.linalg.inv(G)[..., 0], (G,)


def step_with_hidden_solve(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    """No forbidden name in the code: the solve is reached through getattr."""
    y, new = step_from_scratch(state, k_t, v_t, q_t, beta_t, K, eps, eta)
    fn = getattr(torch.linalg, "so" + "lve")
    return y + 0 * fn(new[0], q_t[..., None])[..., 0, 0, None], new


def step_with_cubic_products(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    """Right, but forms A = M G^-1 (a product of two r x r matrices) every token."""
    y, new = step_from_scratch(state, k_t, v_t, q_t, beta_t, K, eps, eta)
    Gi, M, C, _ = new
    A = M @ Gi
    u = q_t[..., :, None]
    for _ in range(K):
        u = A @ u
    return eta * (C @ (Gi @ u))[..., 0], new


def step_via_the_library(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
    ops = importlib.import_module("echo_tutor.ska.ops")
    fn = getattr(ops, "decode" + "_step")
    y, new = step_from_scratch(state, k_t, v_t, q_t, beta_t, K, eps, eta)
    N = k_t[..., 0].numel()
    r = k_t.shape[-1]
    fn(new[0].reshape(N, r, r), new[0].reshape(N, r, r), new[1].reshape(N, r, r), new[2].reshape(N, -1, r),
       new[3].reshape(N, r), q_t.reshape(N, r), k_t.reshape(N, r), v_t.reshape(N, -1), beta_t.reshape(N),
       torch.ones(N, dtype=k_t.dtype), K, torch.ones(N, dtype=k_t.dtype))
    return y, new


def test_the_decode_step_from_scratch_passes(capsys):
    lab02.check_ska_step(step_from_scratch)
    assert "ska_step: correct" in capsys.readouterr().out


@pytest.mark.parametrize("change, msg", [("sign", "Wrong sign"), ("no_beta", "beta_t is missing from the rank-1"),
                                         ("read_first", "read before writing"), ("k_prev", "previous key")])
def test_the_decode_step_names_the_typical_mistakes(change, msg):
    refused(lab02.check_ska_step, _step_variant(change), msg)


@pytest.mark.parametrize("fn, msg", [(step_with_inverse, "`inv`"), (step_with_hidden_solve, "`solve`"),
                                     (step_with_cubic_products, "two r x r matrices"),
                                     (step_via_the_library, "decode_step")],
                         ids=lambda x: getattr(x, "__name__", x))
def test_the_decode_step_refuses_factorisations_cubic_products_and_the_package(fn, msg):
    refused(lab02.check_ska_step, fn, msg)


def test_the_decode_step_one_lead_version_is_refused_with_the_hint():
    def step_beta_one_lead(state, k_t, v_t, q_t, beta_t, K=1, eps=1e-3, eta=1.0):
        y, new = step_from_scratch(state, k_t, v_t, q_t, beta_t, K, eps, eta)
        if k_t.ndim != 2:  # what `beta_t[:, None]` does to other shapes: a wrong broadcast
            y = 1.5 * y
        return y, new

    refused(lab02.check_ska_step, step_beta_one_lead, HINT)
