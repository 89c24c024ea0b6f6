"""The ``backend=`` switch: which implementation of an op actually runs. One resolution for every op.

``"reference"`` is the pure-PyTorch code in ``echo_tutor``. Each op has one optional fast path, named in
``FAST_PATHS``: ``"triton"`` for SKA's chunk mode and decode step and EchoKV's rebuild (the top-level
``echo_kernels`` package; needs triton and a CUDA device), ``"mamba_ssm"`` for Mamba-2's scan (mamba-ssm's fused
kernel; a CUDA build of torch). ``"auto"`` takes the fast path when it can run and the reference otherwise.
Asking for the fast path where it cannot run warns once per op and falls back; layers record the path that
ran in ``last_backend`` so tests can assert it.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import torch

from ._checks import check_choice
from .errors import BadArgumentError

__all__ = ["BACKENDS", "FAST_PATHS", "backends_of", "mamba_ssm_available", "resolve_backend", "triton_op"]

FAST_PATHS: dict[str, str] = {"ska": "triton", "echokv": "triton", "ssd": "mamba_ssm"}
BACKENDS = ("auto", "reference", "triton")  # the choices of the Triton-backed ops (ska, echokv)
_warned: set[str] = set()


def backends_of(op: str) -> tuple[str, str, str]:
    """The ``backend=`` choices of ``op``: ``("auto", "reference", <its fast path>)``."""
    if op not in FAST_PATHS:
        raise BadArgumentError(f"op must be one of {list(FAST_PATHS)}, got {op!r}")
    return ("auto", "reference", FAST_PATHS[op])


@functools.lru_cache(maxsize=None)
def triton_op(op: str, attr: str = "forward"):
    """Return the Triton implementation ``echo_kernels.<op>.<attr>`` if it is installed and importable, else None.

    Cached: layers ask on every forward, and Python does not cache a failed import."""
    try:
        mod = importlib.import_module(f"echo_kernels.{op}")
    except Exception:  # triton missing, kernels not built for this op, ...
        return None
    return getattr(mod, attr, None)


@functools.lru_cache(maxsize=None)
def _mamba_ssm_importable() -> bool:
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined  # noqa: F401
    except Exception:
        return False
    return True


def mamba_ssm_available() -> bool:
    """True when mamba-ssm's fused SSD scan imports and a CUDA device is present."""
    return torch.cuda.is_available() and _mamba_ssm_importable()


def _fast_path_missing(op: str, device: torch.device) -> str | None:
    """Why the fast path of ``op`` cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return "no CUDA device"
    if FAST_PATHS[op] == "triton":
        return None if triton_op(op) is not None else f"no Triton kernel echo_kernels.{op} could be imported"
    return None if _mamba_ssm_importable() else "mamba-ssm is not installed (it needs a CUDA build of torch)"


def resolve_backend(requested: str, op: str, device: torch.device) -> str:
    """Pick the backend that will run ``op`` on ``device``: ``"reference"`` or ``FAST_PATHS[op]``."""
    check_choice("backend", requested, backends_of(op))
    if requested == "reference":
        return "reference"
    why = _fast_path_missing(op, device)
    if why is None:
        return FAST_PATHS[op]
    if requested != "auto" and op not in _warned:
        _warned.add(op)
        warnings.warn(
            f"backend={requested!r} asked for {op!r} but it cannot run here ({why}); falling back to the "
            "PyTorch reference. This warning is shown once.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"
