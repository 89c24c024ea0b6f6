"""EchoKV-lite stage 1, part 1: which slots to keep.

Our reconstruction of the method (only the EchoKV abstract is public): keep a fraction of the
*slots* (layer, KV head, K or V); rebuild every discarded slot from the retained slots of the same
kind in the same layer and the ``layer_window`` layers on either side. Keys are handled before RoPE.

* :class:`SlotMoments` -- second moments of the captured slots (fit part and held-out part), from
  which every ridge map and its held-out R^2 follow in closed form.
* :func:`select_slots` -- which slots to keep for a compression ratio: ``"greedy"`` (add the slot that
  most raises the summed held-out R^2 over all slots, a kept slot counting 1), ``"fixed"`` (evenly
  spaced), ``"random"``. K and V have separate budgets.
The default ``layer_window`` is 2 layers (the design notes suggested 1; on SmolLM2 at 50% of the bytes,
a layer window of 2 cut the perplexity increase from +2.6 to +0.95, see docs/results.md).

The maps themselves are in :mod:`echo_tutor.echokv.reconstructor`, fitting them in
:mod:`echo_tutor.echokv.fit`.
"""

from __future__ import annotations

import math

import torch

from ..errors import BadArgumentError
from .capture import KVCapture

KINDS = ("K", "V")


def check_ratio(name: str, ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise BadArgumentError(f"{name} must be a number in (0, 1], got {ratio!r}")
    if not 0.0 < ratio <= 1.0:
        raise BadArgumentError(f"{name} must be in (0, 1] (the fraction of KV slots kept), got {ratio}")
    return float(ratio)


class SlotMoments:
    """Moments of one kind's slots for closed-form ridge maps and their held-out R^2.

    Args:
        capture: a :class:`KVCapture` ([L, H, W, T, D] keys and values, pre-RoPE).
        kind: "K" or "V".
        fit_frac: fraction of windows used for fitting; the rest scores R^2.
        lam: ridge strength, relative to the mean input variance.
    """

    def __init__(self, capture: KVCapture, kind: str, *, fit_frac: float = 0.75, lam: float = 1e-3):
        if kind not in KINDS:
            raise BadArgumentError(f"kind must be 'K' or 'V', got {kind!r}")
        L, H, W, T, D = capture.keys.shape
        self.kind, self.L, self.H, self.D, self.lam = kind, L, H, D, lam
        fit, held = capture.split(fit_frac)
        X = fit.slots(kind).float()
        Y = held.slots(kind).float()
        S = X.shape[0]
        self.mean = X.double().mean(1)                         # [S, D] fit-part mean
        # centred with the fit mean; the Grams are formed in float32 (the big matmuls) and kept in
        # float64 for the small solves
        a = (X - self.mean[:, None].float()).permute(1, 0, 2).reshape(X.shape[1], S * D)
        b = (Y - self.mean[:, None].float()).permute(1, 0, 2).reshape(Y.shape[1], S * D)
        self.n_fit, self.n_held = a.shape[0], b.shape[0]
        self.G_fit = (a.T @ a).double()                        # [S*D, S*D]
        self.G_held = (b.T @ b).double()
        self.s_held = b.double().sum(0)                        # [S*D] (held-out mean offset)
        self.sst = ((Y.double() - Y.double().mean(1, keepdim=True)) ** 2).sum((1, 2))  # [S]
        self._r2_cache: dict[tuple[int, tuple[int, ...]], float] = {}

    @property
    def n_slots(self) -> int:
        return self.L * self.H

    def layer(self, slot: int) -> int:
        return slot // self.H

    def neighbours(self, slot: int, layer_window: int) -> list[int]:
        """The slots of the layers within ``layer_window`` layers of ``slot``'s layer (its own included)."""
        l = self.layer(slot)
        lo, hi = max(0, l - layer_window), min(self.L - 1, l + layer_window)
        return list(range(lo * self.H, (hi + 1) * self.H))

    def _idx(self, slots) -> torch.Tensor:
        D = self.D
        return torch.cat([torch.arange(s * D, (s + 1) * D) for s in slots]) if slots else torch.zeros(0, dtype=torch.long)

    @staticmethod
    def _block(G: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return G[rows[:, None], cols[None, :]]  # gathers only the block (G[rows][:, cols] copies whole rows)

    def ridge(self, inputs: list[int], target: int) -> torch.Tensor:
        """Ridge map on centred data, fitted on the fit part: [len(inputs)*D, D] (no intercept
        needed: the data are centred with the fit mean)."""
        i, t = self._idx(inputs), self._idx([target])
        if i.numel() == 0:
            return torch.zeros(0, self.D, dtype=torch.float64)
        A = self._block(self.G_fit, i, i)
        reg = self.lam * A.diagonal().mean().clamp_min(1e-12)
        return torch.linalg.solve(A + reg * torch.eye(len(i), dtype=A.dtype), self._block(self.G_fit, i, t))

    def r2(self, inputs: list[int], target: int) -> float:
        """Held-out R^2 of the ridge map from ``inputs`` to ``target`` (0 inputs: the fit mean)."""
        key = (target, tuple(sorted(inputs)))
        if key in self._r2_cache:
            return self._r2_cache[key]
        i, t = self._idx(list(key[1])), self._idx([target])
        yy = self._block(self.G_held, t, t).trace()
        if i.numel():
            W = self.ridge(list(key[1]), target)
            cross = (W * self._block(self.G_held, i, t)).sum()
            quad = (W * (self._block(self.G_held, i, i) @ W)).sum()
            sse = yy - 2 * cross + quad
        else:
            sse = yy
        val = float(1.0 - sse / self.sst[target].clamp_min(1e-12))
        self._r2_cache[key] = val
        return val

    def _all_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gram of all windows centred at their own mean, and that mean (computed once)."""
        if getattr(self, "_all", None) is None:
            n = self.n_fit + self.n_held
            delta = self.s_held / n  # the fit part sums to zero around its own mean
            Gc = self.G_fit + self.G_held
            Gc -= n * torch.outer(delta, delta)
            self._all = (Gc, self.mean.reshape(-1) + delta)
        return self._all

    def fit_final(self, inputs: list[int], target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge map fitted on *all* windows: returns (W [len*D, D], b [D]) with y ~ x @ W + b."""
        i, t = self._idx(inputs), self._idx([target])
        Gc, mean = self._all_moments()
        if i.numel() == 0:
            return torch.zeros(0, self.D, dtype=torch.float64), mean[t]
        A = self._block(Gc, i, i)
        reg = self.lam * A.diagonal().mean().clamp_min(1e-12)
        W = torch.linalg.solve(A + reg * torch.eye(len(i), dtype=A.dtype), self._block(Gc, i, t))
        b = mean[t] - mean[i] @ W
        return W, b


def kept_counts(n_slots: int, ratio: float, key_ratio: float | None = None) -> tuple[int, int]:
    """Slots of each kind to keep: ``(n_K, n_V)``. ``key_ratio`` (default ``ratio``) is the fraction
    of K slots kept; the V fraction is then ``2 * ratio - key_ratio`` so the total is ``ratio``."""
    ratio = check_ratio("ratio", ratio)
    kr = ratio if key_ratio is None else check_ratio("key_ratio", key_ratio)
    vr = 2 * ratio - kr
    if not 0.0 < vr <= 1.0 + 1e-9:
        raise BadArgumentError(
            f"key_ratio={kr} with ratio={ratio} leaves a V fraction of {vr:.3f}; it must be in (0, 1]"
        )
    n_k = max(1, min(n_slots, round(kr * n_slots)))
    n_total = round(2 * ratio * n_slots)
    n_v = max(1, min(n_slots, n_total - n_k))
    return n_k, n_v


def light_keys(ratio: float) -> float:
    """A K/V split that spends less on keys (they are the easier kind to rebuild): the K fraction is
    ``max(ratio / 2, 2 * ratio - 1)``, so V gets up to 1.5 x ratio. E.g. 0.5 -> K 0.25, V 0.75."""
    ratio = check_ratio("ratio", ratio)
    return max(ratio / 2, 2 * ratio - 1)


def greedy_select(mom: SlotMoments, n_keep: int, layer_window: int = 2) -> list[int]:
    """Greedy slot selection: repeatedly keep the slot that most raises the summed held-out R^2 of
    all slots (a kept slot counts as 1; a discarded one scores the R^2 of its ridge map from the kept
    slots within ``layer_window`` layers of it)."""
    S = mom.n_slots
    kept: set[int] = set()

    def score(slot: int, kept_set: set[int]) -> float:
        if slot in kept_set:
            return 1.0
        return mom.r2(sorted(kept_set.intersection(mom.neighbours(slot, layer_window))), slot)

    while len(kept) < n_keep:
        best, best_gain = None, -float("inf")
        for c in range(S):
            if c in kept:
                continue
            trial = kept | {c}
            affected = mom.neighbours(c, layer_window)  # c's neighbours == the slots whose neighbours hold c
            gain = sum(score(s, trial) - score(s, kept) for s in affected)
            if gain > best_gain + 1e-12:
                best, best_gain = c, gain
        kept.add(best)  # type: ignore[arg-type]
    return sorted(kept)


def select_slots(
    capture: KVCapture | None = None,
    ratio: float = 0.5,
    *,
    method: str = "greedy",
    key_ratio: float | None = None,
    layer_window: int = 2,
    seed: int = 0,
    moments: dict[str, SlotMoments] | None = None,
    layout: tuple[int, int] | None = None,
) -> dict[str, list[int]]:
    """Choose the retained slots for a compression ratio.

    Args:
        capture: calibration K/V (needed for ``"greedy"``; its shape gives the layout otherwise).
        ratio: fraction of KV slots (= cache bytes) kept, in (0, 1].
        method: "greedy" | "fixed" | "random".
        key_ratio: fraction of K slots kept (default ``ratio``); V gets the rest of the budget.
        layer_window: how many layers on each side of a discarded slot feed its reconstruction, in
            layers (greedy scores slots with it).
        moments: precomputed ``{"K": SlotMoments, "V": SlotMoments}`` (saves recomputing).
        layout: ``(n_layers, n_kv_heads)`` when no capture is given.

    Returns ``{"K": sorted slot ids, "V": sorted slot ids}`` (slot = layer * H + head).
    """
    if method not in ("greedy", "fixed", "random"):
        raise BadArgumentError(f"method must be 'greedy', 'fixed' or 'random', got {method!r}")
    if isinstance(layer_window, bool) or not isinstance(layer_window, int) or layer_window < 0:
        raise BadArgumentError(f"layer_window must be an int >= 0 (layers on each side), got {layer_window!r}")
    if capture is not None:
        L, H = capture.keys.shape[:2]
    elif layout is not None:
        L, H = layout
    else:
        raise BadArgumentError("select_slots needs capture (or layout=(n_layers, n_kv_heads) for 'fixed'/'random')")
    S = L * H
    n_k, n_v = kept_counts(S, ratio, key_ratio)
    if method == "greedy":
        if capture is None and moments is None:
            raise BadArgumentError("method='greedy' needs capture (calibration K/V)")
        moments = moments or {k: SlotMoments(capture, k) for k in KINDS}  # type: ignore[arg-type]
        return {k: greedy_select(moments[k], n, layer_window) for k, n in (("K", n_k), ("V", n_v))}
    if method == "fixed":
        # evenly spaced over the layer-major slot order, V offset by half a step from K
        return {
            "K": sorted({int(i * S / n_k) for i in range(n_k)}),
            "V": sorted({min(S - 1, int((i + 0.5) * S / n_v)) for i in range(n_v)}),
        }
    g = torch.Generator().manual_seed(seed)
    return {k: sorted(torch.randperm(S, generator=g)[:n].tolist()) for k, n in (("K", n_k), ("V", n_v))}
