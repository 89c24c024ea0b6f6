"""Echo meets a real LM: SmolLM2's attention layers converted into fixed-state mixers."""

from .mixer import VARIANTS, ConvertedAttention, MixerSpec, MixerState

__all__ = ["VARIANTS", "ConvertedAttention", "MixerSpec", "MixerState"]
