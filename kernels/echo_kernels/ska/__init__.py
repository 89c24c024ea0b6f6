"""Triton kernels for SKA's chunk mode and decode step. Twins: :mod:`echo_tutor.ska.ops`.

Kernels (same signatures as the twins; heads flattened, ``N = B * H``):

* ``chunk_stats(ok, kk, k_lag, ov, chunk_size)``: one program per (head, chunk): three ``tl.dot``
  products of the chunk's [S, r] / [S, P] tiles -> per-chunk G, M, C.
* ``exclusive_prefix(X0, Xc)``: one program per (head, block of matrix entries), walking the chunks
  in order: the state plus the sum of the chunks before each one.
* ``readout_inverse(Ginv, M, C, q, K, scale)``: one program per (head x chunk, block of queries):
  A^T = G^-1 M^T and B^T = G^-1 C^T in registers, then K + 1 products with the query block.
* ``decode_step(...)``: one program per head: rank-1 updates of G, M, C, k_prev and G^-1
  (Sherman-Morrison), then the readout as matrix-vector products.

* ``stats_prefix`` / ``readout`` (module ``fused``, kernels in ``fused_kernels``): the chunk mode in two
  fused kernels with a Triton backward each: one program per head walks the chunks (statistics and prefix
  in one pass), then one program per (head, chunk) factorises G on chip (Cholesky by default, Gauss-Jordan
  or Newton-Schulz), estimates the spectral norm's sigma_max, applies the power filter and reads out the
  chunk's queries.

``forward`` is a drop-in for :func:`echo_tutor.ska.ska_chunked` (the layer's ``backend="triton"``):
mode "chunk" runs the fused kernels forward and backward (only an exact-SVD spectral scale,
``spectral_iters=None``, is computed in PyTorch); mode "token" is delegated to the reference. The three unfused kernels above are
the teaching steps of lab 07 (``ska_chunked_ops(..., ops=echo_kernels.ska)`` composes them).

Computation is float32 inside the kernels (fp16/bf16 inputs are loaded and cast at once: the Triton
CPU interpreter cannot do bf16 arithmetic). Under ``TRITON_INTERPRET=1`` everything runs on CPU
tensors, for tests; on a GPU the block sizes are at least 16 (``tl.dot``'s minimum).

Modules: ``chunk`` (chunk_stats, exclusive_prefix, readout_inverse, forward), ``fused`` (stats_prefix,
readout, fused_forward; the kernels in ``fused_kernels``), ``decode`` (decode_step, decode).
"""

from .chunk import chunk_stats, exclusive_prefix, forward, readout_inverse
from .decode import decode, decode_step
from .fused import SOLVERS, fused_forward, readout, stats_prefix

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "decode_step", "forward", "decode", "SOLVERS",
           "stats_prefix", "readout", "fused_forward"]
