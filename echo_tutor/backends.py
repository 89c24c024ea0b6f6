"""The ``backend=`` switch: which implementation of an op actually runs.

``"reference"`` is the chunked pure-PyTorch code in ``echo_tutor``. ``"triton"`` is the optional fast
path in the top-level ``kernels`` package (needs triton and a CUDA device). ``"auto"`` takes Triton
when it can run and the reference otherwise. Asking for ``"triton"`` where it cannot run warns once and
falls back; layers record the path that ran in ``last_backend`` so tests can assert it.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import torch

from ._checks import check_choice

BACKENDS = ("auto", "reference", "triton")
_warned: set[str] = set()


@functools.lru_cache(maxsize=None)
def triton_op(op: str, attr: str = "forward"):
    """Return the Triton implementation ``kernels.<op>.<attr>`` if it is installed and importable, else None.

    Cached: layers ask on every forward, and Python does not cache a failed import."""
    try:
        mod = importlib.import_module(f"kernels.{op}")
    except Exception:  # triton missing, kernels not built for this op, ...
        return None
    return getattr(mod, attr, None)


def resolve_backend(requested: str, op: str, device: torch.device) -> str:
    """Pick the backend that will run ``op`` on ``device``: ``"reference"`` or ``"triton"``."""
    check_choice("backend", requested, BACKENDS)
    if requested == "reference":
        return "reference"
    can_triton = device.type == "cuda" and triton_op(op) is not None
    if can_triton:
        return "triton"
    if requested == "triton" and op not in _warned:
        _warned.add(op)
        why = "no CUDA device" if device.type != "cuda" else f"no Triton kernel kernels.{op} could be imported"
        warnings.warn(
            f"backend='triton' asked for {op!r} but it cannot run here ({why}); falling back to the "
            "PyTorch reference. This warning is shown once.",
            RuntimeWarning,
            stacklevel=3,
        )
    return "reference"
