"""Spectral Koopman Attention (Echo): references, state and layer. See ``README.md`` here."""

from .layer import SpectralKoopmanAttention
from .reference import SKAState, safe_cholesky, sigma_max, ska_chunked, ska_readout, ska_recurrent

__all__ = [
    "SKAState",
    "SpectralKoopmanAttention",
    "safe_cholesky",
    "sigma_max",
    "ska_chunked",
    "ska_readout",
    "ska_recurrent",
]
