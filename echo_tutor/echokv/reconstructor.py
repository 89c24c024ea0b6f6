"""EchoKV-lite stage 1, part 2: the reconstructor that rebuilds discarded slots.

* :class:`Reconstructor` -- one map per discarded slot (from the retained slots of the same kind in
  the layers within ``layer_window`` layers): ridge (closed form, stage 1, :meth:`Reconstructor.init_ridge`) plus
  an optional low-rank MLP branch with zero-initialised output (so it starts as the ridge map).
* :class:`ReconstructorSpec` -- its shape: layout, retained slots, layer window, MLP rank, and the inputs
  of every discarded slot.
* :class:`SlotMap` -- the map of one discarded slot.

Which slots are kept: :mod:`echo_tutor.echokv.slots`; fitting: :mod:`echo_tutor.echokv.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .slots import KINDS, SlotMoments


class SlotMap(nn.Module):
    """y = x W + b + up(gelu(down(x_n))) for one discarded slot: x [.., n_in] -> y [.., D].

    The low-rank MLP branch (``rank > 0``) sees standardised inputs and its ``up`` starts at zero,
    so a fresh SlotMap equals its ridge initialisation."""

    def __init__(self, n_in: int, d: int, rank: int = 0):
        super().__init__()
        self.linear = nn.Linear(n_in, d) if n_in else None
        self.bias = nn.Parameter(torch.zeros(d)) if not n_in else None
        self.rank = rank if n_in else 0
        if self.rank:
            self.down = nn.Linear(n_in, self.rank)
            self.up = nn.Linear(self.rank, d, bias=False)
            nn.init.zeros_(self.up.weight)
            self.register_buffer("in_mean", torch.zeros(n_in))
            self.register_buffer("in_scale", torch.ones(n_in))

    def forward(self, x: torch.Tensor | None) -> torch.Tensor:
        if self.linear is None:
            return self.bias
        y = self.linear(x)
        if self.rank:
            y = y + self.up(torch.nn.functional.gelu(self.down((x - self.in_mean) * self.in_scale)))
        return y


@dataclass
class ReconstructorSpec:
    """A reconstructor's shape. ``layer_window``: a discarded slot is rebuilt from the kept slots of its
    kind within this many layers on each side, in layers (-1: from nothing, only its bias). ``inputs``
    is filled in by :class:`Reconstructor`."""

    n_layers: int
    n_kv_heads: int
    head_dim: int
    kept: dict[str, list[int]]
    layer_window: int = 2
    rank: int = 0
    inputs: dict[str, dict[int, list[int]]] = field(default_factory=dict)


class Reconstructor(nn.Module):
    """Rebuilds every discarded slot from retained ones.

    ``spec.kept[kind]`` lists the retained slots; ``spec.inputs[kind][s]`` the retained slots that
    feed discarded slot ``s`` (same kind, layers within ``layer_window`` layers). ``forward`` works in pre-RoPE
    space: it takes the retained slots' vectors and returns the rebuilt ones.
    """

    def __init__(self, spec: ReconstructorSpec):
        super().__init__()
        self.spec = spec
        L, H, D = spec.n_layers, spec.n_kv_heads, spec.head_dim
        S = L * H
        self.maps = nn.ModuleDict()
        for kind in KINDS:
            kept = set(spec.kept[kind])
            spec.inputs.setdefault(kind, {})
            for s in range(S):
                if s in kept:
                    continue
                l = s // H
                lo, hi = max(0, l - spec.layer_window), min(L - 1, l + spec.layer_window)
                ins = [r for r in sorted(kept) if lo <= r // H <= hi]
                spec.inputs[kind][s] = ins
                self.maps[f"{kind}{s}"] = SlotMap(len(ins) * D, D, spec.rank)
        # the per-layer head lists are read on every compressed-cache read: derive them once
        self._kept_heads = {(k, l): [s % H for s in sorted(spec.kept[k]) if s // H == l] for k in KINDS for l in range(L)}
        self._missing_heads = {key: [h for h in range(H) if h not in kept_h] for key, kept_h in self._kept_heads.items()}

    @property
    def kept(self) -> dict[str, list[int]]:
        return self.spec.kept

    def kept_heads(self, kind: str, layer: int) -> list[int]:
        """Retained heads of ``layer`` (ascending): the order a compressed cache stores them in."""
        return self._kept_heads[(kind, layer)]

    def missing_heads(self, kind: str, layer: int) -> list[int]:
        return self._missing_heads[(kind, layer)]

    def linear_stack(self, kind: str, layer: int):
        """The linear maps of ``layer``'s discarded heads of one kind, stacked for the fused op:
        ``(input slots [J], W [O, J, D, D], b [O, D], heads [O])``, or None when a map has an MLP
        branch or the heads do not share their inputs (the fused op covers linear maps only)."""
        H, D = self.spec.n_kv_heads, self.spec.head_dim
        heads = self.missing_heads(kind, layer)
        if not heads or self.spec.rank:
            return None
        ins = self.spec.inputs[kind][layer * H + heads[0]]
        if any(self.spec.inputs[kind][layer * H + h] != ins for h in heads):
            return None
        Ws, bs = [], []
        for h in heads:
            m = self.maps[f"{kind}{layer * H + h}"]
            if m.linear is None:
                Ws.append(torch.zeros(0, D, D, device=m.bias.device))
                bs.append(m.bias)
            else:
                Ws.append(m.linear.weight.T.reshape(len(ins), D, D))
                bs.append(m.linear.bias)
        return ins, torch.stack(Ws), torch.stack(bs), heads

    def fraction_kept(self) -> float:
        S = self.spec.n_layers * self.spec.n_kv_heads
        return (len(self.spec.kept["K"]) + len(self.spec.kept["V"])) / (2 * S)

    def rebuild(self, kind: str, slot: int, retained: dict[int, torch.Tensor]) -> torch.Tensor:
        """Rebuild discarded ``slot`` from ``retained`` ({slot: [..., T, D] pre-RoPE}): [..., T, D]."""
        ins = self.spec.inputs[kind][slot]
        m = self.maps[f"{kind}{slot}"]
        if not ins:
            ref = next(iter(retained.values()), None)
            shape = (*ref.shape[:-1], self.spec.head_dim) if ref is not None else (self.spec.head_dim,)
            out = m(None)
            return out.to(ref.dtype).to(ref.device).expand(shape) if ref is not None else out
        x = torch.cat([retained[r] for r in ins], dim=-1)
        w = m.linear.weight
        # inputs move to the maps' device and dtype, the result comes back (no-ops when they agree)
        return m(x.to(device=w.device, dtype=w.dtype)).to(device=x.device, dtype=x.dtype)

    @torch.no_grad()
    def init_ridge(self, moments: dict[str, SlotMoments]) -> "Reconstructor":
        """Stage 1 (closed form): set every map's linear part to the ridge solution on all windows."""
        for kind in KINDS:
            for s, ins in self.spec.inputs[kind].items():
                W, b = moments[kind].fit_final(ins, s)
                m = self.maps[f"{kind}{s}"]
                if m.linear is None:
                    m.bias.copy_(b.float())
                else:
                    m.linear.weight.copy_(W.T.float())
                    m.linear.bias.copy_(b.float())
                    if m.rank:
                        mu = moments[kind]
                        idx = mu._idx(ins)
                        var = (mu.G_fit.diagonal()[idx] / mu.n_fit).clamp_min(1e-8)
                        m.in_mean.copy_(mu.mean.reshape(-1)[idx].float())
                        m.in_scale.copy_(var.rsqrt().float())
        return self
