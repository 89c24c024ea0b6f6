"""The mixer interface: what a block's sequence mixer must offer, written down once, and the registry that
maps a layout name to a mixer. A new mixer implements :class:`Mixer` and is registered with
:func:`register_mixer`; ``HybridLM`` then builds it from a layout name without any change to ``blocks`` or
``hybrid`` (tests/test_mixer_protocol.py trains one defined in the test file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import BadArgumentError

__all__ = ["Mixer", "MIXER_BUILDERS", "register_mixer", "mixer_names"]


@runtime_checkable
class Mixer(Protocol):
    """A block's sequence mixer (an ``nn.Module``). Shapes: ``x [B, T, d_model]``, ``x_t [B, d_model]``.

    * ``forward(x, state=None, mask=None) -> (y [B, T, d_model], state)``: the whole sequence, continuing
      from ``state`` (None: a fresh one); ``mask [B, T]`` is SKA's write weights (1 = write to the
      statistics, 0 = read only), which a mixer without such weights ignores.
    * ``step(x_t, state) -> (y_t [B, d_model], state)``: one token; scanned over a sequence it equals
      ``forward``.
    * ``init_state(batch, device=None, dtype=None)``: a fresh state for ``batch`` sequences, whose tensors
      ``models.state_nbytes`` counts (a dataclass, tensors, or lists/dicts of them).
    * ``state_nbytes(batch=1, context=0) -> int``: the state's bytes for ``batch`` sequences after
      ``context`` tokens (a fixed-state mixer ignores ``context``; a KV cache grows with it).
    """

    def forward(self, x: torch.Tensor, state: Any = None, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        ...

    def step(self, x_t: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        ...

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Any:
        ...

    def state_nbytes(self, batch: int = 1, context: int = 0) -> int:
        ...


# name -> build(cfg, kw): the mixer of a block from the model's HybridConfig and that mixer's own overrides
MIXER_BUILDERS: dict[str, Callable[[Any, dict[str, Any]], nn.Module]] = {}


def register_mixer(name: str, build: Callable[[Any, dict[str, Any]], nn.Module]) -> None:
    """Make ``name`` usable in a layout: ``build(cfg, kw)`` returns the mixer (``cfg`` the model's
    ``HybridConfig``, ``kw`` its ``mixer_kwargs[name]``), which must implement :class:`Mixer`."""
    if not isinstance(name, str) or not name or "," in name or name != name.strip():
        raise BadArgumentError(f"name must be a non-empty mixer name without commas or spaces, got {name!r}")
    if not callable(build):
        raise BadArgumentError(f"build must be callable (cfg, kw) -> mixer, got {type(build).__name__}")
    MIXER_BUILDERS[name] = build


def mixer_names() -> tuple[str, ...]:
    """The names a layout may use: the built-in mixers, then those registered since."""
    return tuple(MIXER_BUILDERS)
