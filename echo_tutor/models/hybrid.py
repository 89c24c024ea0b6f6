"""``HybridLM``: one backbone for every model of the labs, its blocks' mixers named by the layout."""

from __future__ import annotations

import pathlib
from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_tensor, reads_on_host
from ..attention import CausalSelfAttention, LinearAttention
from ..errors import BadArgumentError
from ..ska import SpectralKoopmanAttention
from ..ssm import Mamba2
from .blocks import Block, RMSNorm
from .config import HybridConfig
from .mixer import MIXER_BUILDERS, register_mixer

__all__ = ["HybridLM", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "echo_tutor.HybridLM/1"

# the built-in mixers; any other is added with models.mixer.register_mixer
register_mixer("mamba2", lambda cfg, kw: Mamba2(cfg.d_model, **{"d_state": cfg.d_state,
                                                                 "headdim": max(1, 2 * cfg.d_model // cfg.n_heads),
                                                                 **kw}))
register_mixer("ska", lambda cfg, kw: SpectralKoopmanAttention(cfg.d_model, cfg.n_heads, cfg.ska_rank,
                                                               **kw))
register_mixer("attn", lambda cfg, kw: CausalSelfAttention(cfg.d_model, cfg.n_heads, **kw))
register_mixer("linear_attn", lambda cfg, kw: LinearAttention(cfg.d_model, cfg.n_heads, **kw))


def make_mixer(name: str, cfg: HybridConfig) -> nn.Module:
    """The sequence mixer ``name`` of a block, from the config (its own copy of the mixer's overrides)."""
    return MIXER_BUILDERS[name](cfg, cfg.mixer_overrides(name))


class HybridLM(nn.Module):
    """A language model whose blocks mix the sequence with the mixers named in ``layout``.

    ``HybridLM(HybridConfig(vocab_size, d_model=..., layout=..., ...))``: built from its frozen config alone (see
    :class:`HybridConfig` for each field; ``build(preset)`` for the presets). ``model.config`` is that config.

    Shapes: ``forward(ids [B, T], state=None) -> (logits [B, T, V], state)``;
    ``step(ids [B], state) -> (logits [B, V], state)``; ``state`` is a list with one entry per block.
    """

    def __init__(self, config: HybridConfig) -> None:
        if not isinstance(config, HybridConfig):
            raise BadArgumentError(f"config must be a HybridConfig (e.g. HybridConfig(vocab_size=128, layout='mamba2,ska')), "
                                   f"got {type(config).__name__}")
        super().__init__()
        cfg = config
        self.config = cfg
        self.layout = cfg.mixers
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(make_mixer(n, cfg), cfg.d_model, cfg.mlp_hidden) for n in cfg.mixers)
        self.norm_f = RMSNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight

    # ---------------------------------------------------------------------------------------------
    def _check_ids(self, name: str, ids: object, ndim: int, layout: str) -> torch.Tensor:
        check_tensor(name, ids, ndim, layout=layout, floating=False)
        if ids.is_floating_point() or ids.is_complex():
            raise BadArgumentError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
        V = self.config.vocab_size
        if ids.numel() and reads_on_host(ids) and (ids.min() < 0 or ids.max() >= V):
            raise BadArgumentError(f"{name} must hold token ids in [0, {V}), got min {int(ids.min())}, max {int(ids.max())}")
        return ids

    def forward(
        self, ids: torch.Tensor, state: list | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list]:
        """ids ``[B, T]`` -> logits ``[B, T, V]`` and the per-block states after the last token.

        ``mask [B, T]``: SKA's prefix/action weights (1 = write to the statistics, 0 = read only), passed to
        every SKA mixer and ignored by the others (see ``prefix_mask``)."""
        self._check_ids("ids", ids, 2, "[B, T]")
        if state is not None and len(state) != len(self.blocks):
            raise BadArgumentError(f"state must hold one entry per block ({len(self.blocks)}), got {len(state)}")
        x = self.embed(ids)
        new_state = []
        for i, blk in enumerate(self.blocks):
            x, s = blk(x, None if state is None else state[i], mask)
            new_state.append(s)
        return self.head(self.norm_f(x)), new_state

    def init_state(self, batch: int, device: torch.device | str | None = None) -> list:
        check_int("batch", batch, min_value=1)
        device = device if device is not None else self.embed.weight.device
        return [blk.mixer.init_state(batch, device=device) for blk in self.blocks]

    def step(self, ids: torch.Tensor, state: list) -> tuple[torch.Tensor, list]:
        """Decode one token per sequence: ids ``[B]`` -> logits ``[B, V]``."""
        self._check_ids("ids", ids, 1, "[B]")
        if not isinstance(state, list) or len(state) != len(self.blocks):
            raise BadArgumentError(f"state must be the list from init_state() with {len(self.blocks)} entries")
        x = self.embed(ids)
        new_state = []
        for blk, s in zip(self.blocks, state):
            x, s = blk.step(x, s)
            new_state.append(s)
        return self.head(self.norm_f(x)), new_state

    def save(self, path: str | pathlib.Path, dtype: torch.dtype | None = None) -> None:
        """Save config and weights in one file; ``load(path)`` rebuilds the model (in float32).

        ``dtype=torch.float16`` halves the file (the shipped checkpoints); floating tensors only."""
        sd = self.state_dict()
        if dtype is not None:
            sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
        torch.save({"config": self.config.to_dict(), "state_dict": sd, "format": CHECKPOINT_FORMAT}, path)
