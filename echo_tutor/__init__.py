"""echo_tutor: learn, reproduce and probe Spectral Koopman Attention (Echo) and EchoKV.

Subpackages:
    echo_tutor.ska      the SKA references (token-recurrent and chunked), its state and its layer
    echo_tutor.koopman  Koopman operator / spectrum of an SKA state, DMD from snapshots
    echo_tutor.ssm      Mamba-2 in pure PyTorch (SSD loop and chunked scan, the mixer)
    echo_tutor.attention  softmax attention with a KV cache; linear attention
    echo_tutor.models   HybridLM, presets (ssm, ssm+attn, echo, ssm+ridge, attn), state bytes
    echo_tutor.tasks    seeded recall task generators (MQAR, MQAR-gap, NIAH, tool trace, ...)
    echo_tutor.train    training / evaluation harness
    echo_tutor.echokv   EchoKV-lite: KV-cache compression by rebuilding heads (needs the echokv extra)
    echo_tutor.labs     the lab switches (FAST, SOLUTIONS) and the exercise checkers

``echo_tutor.pretrained(name)`` loads a shipped trained model.
"""

__version__ = "0.1.0"

from . import pretrained  # noqa: E402  (a callable module: pretrained(name), pretrained.info(name), ...)
from .ska import SKAState, SpectralKoopmanAttention, ska_chunked, ska_recurrent  # noqa: E402

__all__ = ["SKAState", "SpectralKoopmanAttention", "ska_chunked", "ska_recurrent", "pretrained", "__version__"]
