"""One backbone for every model of the labs (Zoology-style): mixers plugged in by name.

``HybridLM(HybridConfig(vocab_size, d_model, layout))`` stacks blocks ``x += mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x))``
where ``layout`` names each block's sequence mixer in order, e.g. ``"mamba2,mamba2,ska,ska"``. Mixer names:

    mamba2       echo_tutor.ssm.Mamba2                        state: conv + SSM, constant in T
    ska          echo_tutor.ska.SpectralKoopmanAttention      state: G, M, C, k_prev, constant in T
    attn         echo_tutor.attention.CausalSelfAttention     state: KV cache, linear in T
    linear_attn  echo_tutor.attention.LinearAttention         state: C, constant in T

Two scales of presets, ``build(name, vocab_size, **overrides)``: the CPU lab scale (``LAB_PRESETS``: ``echo``,
``ssm``, ...) and the paper's sub-million models (``PRESETS``: ``synth1m-echo``, ``synth1m-ssm``, ...); see
``presets``.

Modules: ``config`` (the frozen :class:`HybridConfig`), ``blocks`` (norm, MLP, block), ``hybrid``
(:class:`HybridLM`), ``presets`` (the preset tables, ``LAB_RECIPE``, ``build``), ``checkpoint`` (``load``,
``grow_ska_rank``), ``measure`` (state bytes, parameter counts, SKA's prefix mask), ``mixer`` (the
:class:`Mixer` protocol every mixer implements, and ``register_mixer``: a new mixer by name, no other change).
"""

from .blocks import Block, RMSNorm, SwiGLU
from .checkpoint import grow_ska_rank, load, rebuilt
from .config import MIXERS, HybridConfig, parse_layout
from .hybrid import HybridLM
from .measure import count_parameters, prefix_mask, state_nbytes
from .mixer import Mixer, mixer_names, register_mixer
from .presets import LAB_PRESETS, LAB_RECIPE, LAB_SCALE, SYNTH1M_PREFIX, PRESETS, SCALES, LabRecipe, build, presets_of, scale_of

__all__ = ["HybridLM", "HybridConfig", "MIXERS", "PRESETS", "LAB_PRESETS", "LAB_SCALE", "LAB_RECIPE", "LabRecipe", "SCALES", "build",
           "presets_of", "scale_of", "SYNTH1M_PREFIX", "load", "rebuilt", "grow_ska_rank", "prefix_mask", "state_nbytes",
           "count_parameters", "Block", "RMSNorm", "SwiGLU", "parse_layout", "Mixer", "register_mixer", "mixer_names"]
