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

``forward`` is a drop-in for :func:`echo_tutor.ska.ska_chunked` (the layer's ``backend="triton"``):
mode "chunk" runs the kernels (the Cholesky for G^-1 and the optional spectral scale run in PyTorch,
r x r per chunk); mode "token" is delegated to the reference. **Backward** is a documented
recomputation: the saved inputs are re-run through the PyTorch reference under autograd and its
gradients returned, so training through ``forward`` is exact but costs a reference forward+backward.

Computation is float32 inside the kernels (fp16/bf16 inputs are loaded and cast at once: the Triton
CPU interpreter cannot do bf16 arithmetic). Under ``TRITON_INTERPRET=1`` everything runs on CPU
tensors, for tests; on a GPU the block sizes are at least 16 (``tl.dot``'s minimum).

Modules: ``chunk`` (chunk_stats, exclusive_prefix, readout_inverse, forward), ``decode`` (decode_step, decode).
"""

from .chunk import chunk_stats, exclusive_prefix, forward, readout_inverse
from .decode import decode, decode_step

__all__ = ["chunk_stats", "exclusive_prefix", "readout_inverse", "decode_step", "forward", "decode"]
