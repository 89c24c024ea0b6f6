"""Optional Triton fast paths for echo_tutor.

One sub-package per method (``kernels/echo_kernels/ska``, ``kernels/echo_kernels/echokv``), each exposing ``forward`` with the same
signature and shape docstring as its pure-PyTorch twin in ``echo_tutor``. ``echo_tutor`` never imports
this package directly: ``echo_tutor.backends.resolve_backend`` looks a kernel up by name and falls back
to the reference (warning once) when triton, a CUDA device, or the kernel is missing.
"""

try:  # triton is an optional extra: `pip install -e ".[triton]"`
    import triton  # noqa: F401

    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the environment
    HAS_TRITON = False
