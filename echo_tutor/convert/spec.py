"""What a converted layer is (:class:`MixerSpec`) and what it carries while decoding (:class:`MixerState`).

See :mod:`echo_tutor.convert.mixer` for the mixers themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_int, check_positive
from ..errors import BadArgumentError
from ..ska import SKAState

__all__ = ["SPARSE_VARIANTS", "VARIANTS", "MixerSpec", "MixerState", "base_variant", "parse_variant"]

VARIANTS = ("window", "ska", "window+ska", "window+linear")
SPARSE_VARIANTS = ("window+ska", "window+linear")  # the variants that can keep a sparse cache (MixerSpec.sparse)


@dataclass(frozen=True)
class MixerSpec:
    """What to replace an attention layer with.

    Args:
        variant: one of :data:`VARIANTS`.
        window: W, the softmax window in tokens (ignored by ``"ska"``).
        sinks: A, the first tokens the softmax always sees (StreamingLLM's attention sinks; ignored by ``"ska"``).
        rank: r, the feature size of the SKA statistics / linear-attention feature map.
        power_steps: K, SKA's power-filter order (0: ridge regression; ignored by the others).
        eps: SKA's ridge strength.
        sparse: S, exact key/value pairs kept per KV head beside the window, chosen among the tokens that left
            it by how badly the statistics recall them (``"window+ska"``: the ridge's leave-one-out residual;
            ``"window+linear"``: linear attention's recall error); 0 keeps none. The same bytes buy ``S`` more
            window tokens (see :meth:`~echo_tutor.convert.mixer.ConvertedAttention.state_nbytes_for`).
        fixed_gate: ``"window+ska"`` only: the statistics' share of the output, the same for every token past the
            window, instead of the learned gate (None: learned). The Echo paper adds SKA's output with a fixed
            scale rather than a gate; here it tests whether the gate is what keeps the statistics out.
    """

    variant: str = "window+ska"
    window: int = 64
    sinks: int = 4
    rank: int = 32
    power_steps: int = 1
    eps: float = 1e-2
    sparse: int = 0
    fixed_gate: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise BadArgumentError(f"variant must be one of {list(VARIANTS)}, got {self.variant!r}")
        check_int("window", self.window, min_value=1)
        check_int("sinks", self.sinks, min_value=0)
        check_int("rank", self.rank, min_value=1)
        check_int("power_steps", self.power_steps, min_value=0)
        check_positive("eps", self.eps)
        check_int("sparse", self.sparse, min_value=0)
        if self.fixed_gate is not None:
            if self.variant != "window+ska":
                raise BadArgumentError(f"fixed_gate: only 'window+ska' has a gate, got variant {self.variant!r}")
            if isinstance(self.fixed_gate, bool) or not isinstance(self.fixed_gate, (int, float)) or not 0 <= self.fixed_gate <= 1:
                raise BadArgumentError(f"fixed_gate must be a number in [0, 1] (the statistics' share), got {self.fixed_gate!r}")
        if self.sparse and self.variant not in SPARSE_VARIANTS:
            raise BadArgumentError(f"sparse: a cache of the worst-recalled pairs needs statistics beside a window "
                                   f"(variant one of {list(SPARSE_VARIANTS)}), got variant {self.variant!r}")
        if self.variant == "window+linear" and self.rank % 2:
            raise BadArgumentError(f"rank must be even for 'window+linear' (Hedgehog features [softmax(xW), softmax(-xW)]), got {self.rank}")

    @property
    def has_window(self) -> bool:
        return self.variant != "ska"

    @property
    def has_ska(self) -> bool:
        return "ska" in self.variant

    @property
    def label(self) -> str:
        """A short name for tables and legends, e.g. ``"window+ska K1 r32 W64"``."""
        parts = [self.variant]
        if self.has_ska:
            parts.append(f"K{self.power_steps}")
        if self.variant != "window":
            parts.append(f"r{self.rank}")
        if self.has_window:
            parts.append(f"W{self.window}" + (f"+{self.sinks}" if self.sinks else ""))
        if self.sparse:
            parts.append(f"S{self.sparse}")
        if self.fixed_gate is not None:
            parts.append(f"gate {self.fixed_gate:g}")
        return " ".join(parts)


@dataclass
class MixerState:
    """The decode state of one converted layer (batch B, KV heads H, head size D, feature size r).

    Attributes:
        k_win, v_win: ``[B, H, n, D]`` the sink tokens' and the last ``n - A <= W`` keys (after RoPE) and values
            (window variants; the first A rows are the sinks and never leave).
        pending_k: ``[B, H, n - A, r]`` the pre-RoPE key features of the window's tokens, written into the
            statistics when they leave the window (window + a fixed state).
        ska: the :class:`~echo_tutor.ska.SKAState` of the tokens older than the window (SKA variants).
        S: ``[B, H, r, D]``, z: ``[B, H, r]`` (linear attention: sum of phi(k) v^T and of phi(k)).
        k_sp, v_sp: ``[B, H, S, D]`` the sparse cache's keys (after RoPE) and values; kf_sp ``[B, H, S, r]`` their
            key features (to score them again as the statistics grow). Slots fill in order: ``sp_n`` are used.
        count: tokens read so far.
    """

    count: int = 0
    k_win: torch.Tensor | None = None
    v_win: torch.Tensor | None = None
    pending_k: torch.Tensor | None = None
    ska: SKAState | None = None
    S: torch.Tensor | None = None
    z: torch.Tensor | None = None
    k_sp: torch.Tensor | None = None
    v_sp: torch.Tensor | None = None
    kf_sp: torch.Tensor | None = None
    sp_n: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held (bounded by :meth:`ConvertedAttention.state_nbytes`)."""
        ts = [self.k_win, self.v_win, self.pending_k, self.S, self.z, self.k_sp, self.v_sp, self.kf_sp, *(self.ska.tensors() if self.ska else [])]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


def parse_variant(name: str, **kw) -> MixerSpec:
    """``"window+ska:K1"`` -> ``MixerSpec("window+ska", power_steps=1, **kw)``; ``"window"`` -> the window;
    ``"window+ska:K1:S16"`` adds a sparse cache of 16 pairs (``sparse=16``); ``"window:W80"`` sets the window;
    ``"window+ska:K1:G50"`` fixes the gate at 0.50."""
    if not isinstance(name, str):
        raise BadArgumentError(f"variant must be a string like 'window+ska:K1', got {name!r}")
    base, *tags = name.split(":")
    if base not in VARIANTS:
        raise BadArgumentError(f"variant must be one of {list(VARIANTS)} (with ':K<n>' for the SKA ones), got {name!r}")
    fields = {"K": "power_steps", "S": "sparse", "W": "window", "G": "fixed_gate"}
    out: dict = {"power_steps": 1}
    for tag in tags:
        if not (tag[:1] in fields and tag[1:].isdigit()):
            raise BadArgumentError(f"variant {name!r}: each tag is ':K<n>' (power order), ':S<n>' (sparse pairs), "
                                   "':W<n>' (window) or ':G<percent>' (a fixed gate), e.g. 'window+ska:K1:S16'")
        out[fields[tag[0]]] = int(tag[1:]) / 100 if tag[0] == "G" else int(tag[1:])
    return MixerSpec(base, **{**kw, **out})


def base_variant(name: str) -> str:
    """The trained variant a name's mixers come from: ``"window+ska:K1:S16"`` -> ``"window+ska:K1"`` (a sparse
    cache, another window or a fixed gate changes no trained parameter)."""
    base, *tags = name.split(":")
    return ":".join([base, *(t for t in tags if t.startswith("K"))])
