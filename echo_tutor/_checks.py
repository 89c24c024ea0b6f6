"""Argument checks shared by the public functions.

Every public entry point validates what the user passed and raises a ``BadArgumentError`` (a
``ValueError``, see ``echo_tutor.errors``) that names the argument and says what was expected, instead of
letting a shape error surface from deep in torch.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import BadArgumentError

# Checks that read a tensor's *values* (NaN/Inf, token ids in range) and SKA's Cholesky retry need the data on
# the host: free for a CPU tensor, a device synchronisation for a CUDA one, and a graph break under
# torch.compile. "auto" (the default) runs them on CPU tensors only and never while compiling; "on" runs them
# everywhere (a debug switch for the GPU), "off" nowhere. Set with ECHO_TUTOR_HOST_CHECKS or host_checks().
HOST_CHECK_MODES = ("auto", "on", "off")
_host_mode = os.environ.get("ECHO_TUTOR_HOST_CHECKS", "auto")
if _host_mode not in HOST_CHECK_MODES:
    raise BadArgumentError(f"ECHO_TUTOR_HOST_CHECKS must be one of {list(HOST_CHECK_MODES)}, got {_host_mode!r}")


def set_host_checks(mode: str) -> str:
    """Set when value checks read tensors on the host ("auto", "on", "off"); returns the previous mode."""
    global _host_mode
    check_choice("mode", mode, HOST_CHECK_MODES)
    old, _host_mode = _host_mode, mode
    return old


@contextlib.contextmanager
def host_checks(mode: str) -> Iterator[None]:
    """``with host_checks("on"):`` value checks (and their device syncs) inside the block only."""
    old = set_host_checks(mode)
    try:
        yield
    finally:
        set_host_checks(old)


def reads_on_host(x: torch.Tensor) -> bool:
    """Whether a check may read ``x``'s values: never while compiling; else by the mode ("auto": CPU only)."""
    if torch.compiler.is_compiling() or _host_mode == "off":
        return False
    return _host_mode == "on" or x.device.type == "cpu"


def check_tensor(
    name: str,
    x: object,
    ndim: int | None = None,
    *,
    layout: str | None = None,
    finite: bool = True,
    floating: bool = True,
) -> torch.Tensor:
    """Check that ``x`` is a (floating, finite) tensor with ``ndim`` dims; ``layout`` names the dims
    for the error message, e.g. ``"[B, T, H, r]"``. Finiteness reads the values: only where
    :func:`reads_on_host` allows (CPU tensors by default), so a CUDA forward never waits on it."""
    what = f" {layout}" if layout else (f" with {ndim} dims" if ndim is not None else "")
    if not isinstance(x, torch.Tensor):
        raise BadArgumentError(f"{name} must be a torch.Tensor{what}, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise BadArgumentError(f"{name} must have {ndim} dims{what}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise BadArgumentError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if finite and x.numel() and reads_on_host(x) and not bool(torch.isfinite(x).all()):
        raise BadArgumentError(f"{name} contains NaN or Inf values")
    return x


def check_same(name: str, x: torch.Tensor, dims: Sequence[int], expected: Sequence[int], layout: str) -> None:
    """Check that ``x.shape[d] == expected[i]`` for the listed dims."""
    got = [x.shape[d] for d in dims]
    if list(got) != list(expected):
        raise BadArgumentError(
            f"{name} has shape {tuple(x.shape)}, expected {layout} matching the other inputs "
            f"(dims {list(dims)} should be {list(expected)})"
        )


def check_int(name: str, x: object, *, min_value: int | None = None) -> int:
    """``x`` as a Python int (numpy integers accepted, bools refused), at least ``min_value``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise BadArgumentError(f"{name} must be an int, got {x!r}")
    if min_value is not None and x < min_value:
        raise BadArgumentError(f"{name} must be >= {min_value}, got {x}")
    return int(x)


def check_positive(name: str, x: object) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadArgumentError(f"{name} must be a positive number, got {x!r}")
    if not math.isfinite(x) or x <= 0:
        raise BadArgumentError(f"{name} must be a finite number > 0, got {x}")
    return float(x)


def check_choice(name: str, x: object, choices: Sequence[str]) -> str:
    if x not in choices:
        raise BadArgumentError(f"{name} must be one of {list(choices)}, got {x!r}")
    return x  # type: ignore[return-value]


def check_per_head(name: str, x: object, n_heads: int) -> torch.Tensor | float:
    """A scalar, or a tensor of shape [] or [H]."""
    if isinstance(x, torch.Tensor):
        if x.ndim > 1 or (x.ndim == 1 and x.shape[0] != n_heads):
            raise BadArgumentError(f"{name} must be a float or a tensor of shape [] or [H={n_heads}], got {tuple(x.shape)}")
        check_tensor(name, x)
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise BadArgumentError(f"{name} must be a finite float or a tensor of shape [H], got {x!r}")
    return float(x)
