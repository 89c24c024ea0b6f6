"""Spectral Koopman Attention (Echo): references, state and layer. See ``README.md`` here.

Modules: ``state`` (:class:`SKAState` and how it grows), ``reference`` (the two pure-PyTorch references), ``linalg`` (the shared
linear algebra: Cholesky, whitening, sigma_max, the exclusive prefix over chunks), ``ops`` (the PyTorch twins
of the Triton kernels), ``layer`` (the ``nn.Module``).
"""

from .layer import SpectralKoopmanAttention
from .linalg import exclusive_prefix, safe_cholesky, sigma_max, whiten
from .reference import ska_chunked, ska_readout, ska_recurrent
from .state import SKAState, prefix_statistics, token_statistics, write_token

__all__ = [
    "SKAState",
    "SpectralKoopmanAttention",
    "exclusive_prefix",
    "safe_cholesky",
    "sigma_max",
    "ska_chunked",
    "prefix_statistics",
    "ska_readout",
    "ska_recurrent",
    "token_statistics",
    "whiten",
    "write_token",
]
