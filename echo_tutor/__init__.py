"""echo_tutor: learn, reproduce and probe Spectral Koopman Attention (Echo) and EchoKV.

Subpackages:
    echo_tutor.ska      the SKA references (token-recurrent and chunked), its state and its layer
    echo_tutor.koopman  Koopman operator / spectrum of an SKA state, DMD from snapshots
    echo_tutor.labs     the lab switches (FAST, SOLUTIONS) and the exercise checkers
"""

__version__ = "0.1.0"

from .ska import SKAState, SpectralKoopmanAttention, ska_chunked, ska_recurrent  # noqa: E402

__all__ = ["SKAState", "SpectralKoopmanAttention", "ska_chunked", "ska_recurrent", "__version__"]
