"""Echo meets a real LM: SmolLM2's attention layers converted into fixed-state mixers (one class per variant,
all of them ``ConvertedAttention``), and the cache that keeps their decode state."""

from .cache import ConvertedCache, MixerSlot
from .fixed_state import SKAAttention, WindowLinearAttention, WindowSKAAttention
from .mixer import VARIANTS, ConvertedAttention, MixerSpec, MixerState, WindowAttention

__all__ = ["VARIANTS", "ConvertedAttention", "ConvertedCache", "MixerSlot", "MixerSpec", "MixerState", "SKAAttention",
           "WindowAttention", "WindowLinearAttention", "WindowSKAAttention"]
