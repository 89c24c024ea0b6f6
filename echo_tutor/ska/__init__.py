"""Spectral Koopman Attention (Echo): references, state and layer. See ``README.md`` here.

Modules: ``reference`` (the two pure-PyTorch references and :class:`SKAState`), ``linalg`` (the shared
linear algebra: Cholesky, whitening, sigma_max, the exclusive prefix over chunks), ``ops`` (the PyTorch twins
of the Triton kernels), ``layer`` (the ``nn.Module``).
"""

from .layer import SpectralKoopmanAttention
from .linalg import exclusive_prefix, safe_cholesky, sigma_max, whiten
from .reference import SKAState, ska_chunked, ska_readout, ska_recurrent

__all__ = [
    "SKAState",
    "SpectralKoopmanAttention",
    "exclusive_prefix",
    "safe_cholesky",
    "sigma_max",
    "ska_chunked",
    "ska_readout",
    "ska_recurrent",
    "whiten",
]
