"""The model's configuration: a frozen dataclass, built once and never changed (nanoGPT's ``GPTConfig``).

A model is a function of its :class:`HybridConfig`: saving the config saves the architecture, and no code path
can change one block's settings by touching another's (``mixer_kwargs`` is read-only; each block gets its own
copy of its mixer's overrides).
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Mapping
from typing import Any

from .._checks import check_int
from ..errors import BadArgumentError
from .mixer import mixer_names

__all__ = ["MIXERS", "HybridConfig", "parse_layout"]

MIXERS = ("mamba2", "ska", "attn", "linear_attn")  # the built-in mixers (models.hybrid registers them)


def parse_layout(layout: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [s.strip() for s in layout.split(",")] if isinstance(layout, str) else list(layout)
    if not names or any(n == "" for n in names):
        raise BadArgumentError(f"layout must name at least one mixer, comma-separated, got {layout!r}")
    bad = [n for n in names if n not in mixer_names()]
    if bad:
        raise BadArgumentError(f"layout: unknown mixer name(s) {bad}; known: {list(mixer_names())}")
    return names



def _freeze(kw: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Mapping[str, Any]]:
    return types.MappingProxyType({name: types.MappingProxyType(copy.deepcopy(dict(v))) for name, v in kw.items()})


@dataclasses.dataclass(frozen=True, repr=False)
class HybridConfig:
    """Everything that defines a :class:`~echo_tutor.models.HybridLM`'s architecture.

    Args:
        vocab_size: V.
        d_model: width d.
        layout: mixer names in order, comma-separated (a list is joined); see ``MIXERS`` (and ``models.mixer.register_mixer``).
        n_heads: heads of attention / SKA; Mamba-2 uses ``headdim = 2 d / n_heads`` (expand 2).
        d_state: Mamba-2's N.
        ska_rank: SKA's r, the one way to set it (a ``"rank"`` in ``mixer_kwargs["ska"]`` is refused).
        mlp_hidden: SwiGLU hidden width (None: ``13 d / 4``, 416 at d=128, which puts the synth1m-size presets
            within 3.2% of the paper's parameter counts).
        mixer_kwargs: per-mixer overrides, e.g. ``{"ska": {"power_steps": 0}, "mamba2": {"chunk_size": 32}}``;
            stored read-only.
        tie_embeddings: share the input embedding with the output head.
    """

    vocab_size: int
    d_model: int = 128
    layout: str = "mamba2,mamba2,ska,ska"
    n_heads: int = 4
    d_state: int = 16
    ska_rank: int = 24
    mlp_hidden: int | None = None
    mixer_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        check_int("vocab_size", self.vocab_size, min_value=2)
        check_int("d_model", self.d_model, min_value=1)
        check_int("n_heads", self.n_heads, min_value=1)
        check_int("d_state", self.d_state, min_value=1)
        check_int("ska_rank", self.ska_rank, min_value=1)
        if self.d_model % self.n_heads:
            raise BadArgumentError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        names = parse_layout(self.layout)
        kw = self.mixer_kwargs if self.mixer_kwargs is not None else {}
        if not isinstance(kw, Mapping) or not all(isinstance(v, Mapping) for v in kw.values()):
            raise BadArgumentError(f"mixer_kwargs must map mixer names to dicts of arguments, got {kw!r}")
        unknown = set(kw) - set(mixer_names())
        if unknown:
            raise BadArgumentError(f"mixer_kwargs: unknown mixer name(s) {sorted(unknown)}; known: {list(mixer_names())}")
        if "rank" in kw.get("ska", {}):
            raise BadArgumentError(f"mixer_kwargs['ska'] must not set 'rank': SKA's rank is the config's ska_rank "
                                   f"(HybridConfig(..., ska_rank={kw['ska']['rank']!r}))")
        mlp = 13 * self.d_model // 4 if self.mlp_hidden is None else self.mlp_hidden
        check_int("mlp_hidden", mlp, min_value=1)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - a frozen dataclass sets its fields once, here
        set_("layout", ",".join(names))
        set_("mlp_hidden", mlp)
        set_("mixer_kwargs", _freeze(kw))

    @property
    def mixers(self) -> list[str]:
        """The mixer name of every block, in order."""
        return self.layout.split(",")

    def mixer_overrides(self, name: str) -> dict[str, Any]:
        """A fresh, mutable copy of the overrides of mixer ``name`` (empty if none)."""
        return copy.deepcopy(dict(self.mixer_kwargs.get(name, {})))

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able dicts (what a checkpoint stores): ``HybridConfig(**cfg.to_dict()) == cfg``."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["mixer_kwargs"] = {name: self.mixer_overrides(name) for name in self.mixer_kwargs}
        return out

    def replace(self, **changes: Any) -> "HybridConfig":
        """A new config with ``changes`` (``mixer_kwargs`` replaced as a whole)."""
        return HybridConfig(**{**self.to_dict(), **changes})

    def __repr__(self) -> str:
        return "HybridConfig(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    # immutable: a copy is the object itself; pickling goes through the plain dict
    def __deepcopy__(self, memo: dict) -> "HybridConfig":
        return self

    def __reduce__(self):
        return (_from_dict, (self.to_dict(),))


def _from_dict(d: dict[str, Any]) -> HybridConfig:
    return HybridConfig(**d)
