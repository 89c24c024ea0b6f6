"""EchoKV-lite stage 1: slot selection and reconstructors.

Our reconstruction of the method (only the EchoKV abstract is public): keep a fraction of the
*slots* (layer, KV head, K or V); rebuild every discarded slot from the retained slots of the same
kind in the same layer and the ``window`` layers on either side. Keys are handled before RoPE.

* :class:`SlotMoments` -- second moments of the captured slots (fit part and held-out part), from
  which every ridge map and its held-out R^2 follow in closed form.
* :func:`select_slots` -- which slots to keep for a compression ratio: ``"greedy"`` (add the slot that
  most raises the summed held-out R^2 over all slots, a kept slot counting 1), ``"fixed"`` (evenly
  spaced), ``"random"``. K and V have separate budgets.
The default window is 2 layers (the design notes suggested 1; on SmolLM2 at 50% of the bytes,
window 2 cut the perplexity increase from +2.6 to +0.95, see docs/results.md).

* :class:`Reconstructor` -- one map per discarded slot: ridge (closed form, stage 1) plus an optional
  low-rank MLP branch with zero-initialised output (so it starts as the ridge map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .capture import KVCapture

KINDS = ("K", "V")


def _check_ratio(name: str, ratio: object) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise ValueError(f"{name} must be a number in (0, 1], got {ratio!r}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the fraction of KV slots kept), got {ratio}")
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
            raise ValueError(f"kind must be 'K' or 'V', got {kind!r}")
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

    def window(self, slot: int, window: int) -> list[int]:
        l = self.layer(slot)
        lo, hi = max(0, l - window), min(self.L - 1, l + window)
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
    ratio = _check_ratio("ratio", ratio)
    kr = ratio if key_ratio is None else _check_ratio("key_ratio", key_ratio)
    vr = 2 * ratio - kr
    if not 0.0 < vr <= 1.0 + 1e-9:
        raise ValueError(
            f"key_ratio={kr} with ratio={ratio} leaves a V fraction of {vr:.3f}; it must be in (0, 1]"
        )
    n_k = max(1, min(n_slots, round(kr * n_slots)))
    n_total = round(2 * ratio * n_slots)
    n_v = max(1, min(n_slots, n_total - n_k))
    return n_k, n_v


def light_keys(ratio: float) -> float:
    """A K/V split that spends less on keys (they are the easier kind to rebuild): the K fraction is
    ``max(ratio / 2, 2 * ratio - 1)``, so V gets up to 1.5 x ratio. E.g. 0.5 -> K 0.25, V 0.75."""
    ratio = _check_ratio("ratio", ratio)
    return max(ratio / 2, 2 * ratio - 1)


def greedy_select(mom: SlotMoments, n_keep: int, window: int = 2) -> list[int]:
    """Greedy slot selection: repeatedly keep the slot that most raises the summed held-out R^2 of
    all slots (a kept slot counts as 1; a discarded one scores the R^2 of its ridge map from the kept
    slots in its layer window)."""
    S = mom.n_slots
    kept: set[int] = set()

    def score(slot: int, kept_set: set[int]) -> float:
        if slot in kept_set:
            return 1.0
        return mom.r2(sorted(kept_set.intersection(mom.window(slot, window))), slot)

    while len(kept) < n_keep:
        best, best_gain = None, -float("inf")
        for c in range(S):
            if c in kept:
                continue
            trial = kept | {c}
            affected = mom.window(c, window)  # c's window == the slots whose window holds c
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
    window: int = 2,
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
        window: reconstruction window in layers (greedy scores slots with it).
        moments: precomputed ``{"K": SlotMoments, "V": SlotMoments}`` (saves recomputing).
        layout: ``(n_layers, n_kv_heads)`` when no capture is given.

    Returns ``{"K": sorted slot ids, "V": sorted slot ids}`` (slot = layer * H + head).
    """
    if method not in ("greedy", "fixed", "random"):
        raise ValueError(f"method must be 'greedy', 'fixed' or 'random', got {method!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0 (layers on each side), got {window!r}")
    if capture is not None:
        L, H = capture.keys.shape[:2]
    elif layout is not None:
        L, H = layout
    else:
        raise ValueError("select_slots needs capture (or layout=(n_layers, n_kv_heads) for 'fixed'/'random')")
    S = L * H
    n_k, n_v = kept_counts(S, ratio, key_ratio)
    if method == "greedy":
        if capture is None and moments is None:
            raise ValueError("method='greedy' needs capture (calibration K/V)")
        moments = moments or {k: SlotMoments(capture, k) for k in KINDS}  # type: ignore[arg-type]
        return {k: greedy_select(moments[k], n, window) for k, n in (("K", n_k), ("V", n_v))}
    if method == "fixed":
        # evenly spaced over the layer-major slot order, V offset by half a step from K
        return {
            "K": sorted({int(i * S / n_k) for i in range(n_k)}),
            "V": sorted({min(S - 1, int((i + 0.5) * S / n_v)) for i in range(n_v)}),
        }
    g = torch.Generator().manual_seed(seed)
    return {k: sorted(torch.randperm(S, generator=g)[:n].tolist()) for k, n in (("K", n_k), ("V", n_v))}


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
    n_layers: int
    n_kv_heads: int
    head_dim: int
    kept: dict[str, list[int]]
    window: int = 2
    rank: int = 0
    inputs: dict[str, dict[int, list[int]]] = field(default_factory=dict)


class Reconstructor(nn.Module):
    """Rebuilds every discarded slot from retained ones.

    ``spec.kept[kind]`` lists the retained slots; ``spec.inputs[kind][s]`` the retained slots that
    feed discarded slot ``s`` (same kind, layers within ``window``). ``forward`` works in pre-RoPE
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
                lo, hi = max(0, l - spec.window), min(L - 1, l + spec.window)
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


def fit_reconstructor(
    capture: KVCapture,
    ratio: float = 0.5,
    *,
    method: str = "greedy",
    key_ratio: float | None = None,
    window: int = 2,
    rank: int = 0,
    lam: float = 1e-3,
    seed: int = 0,
    kept: dict[str, list[int]] | None = None,
    moments: dict[str, SlotMoments] | None = None,
) -> Reconstructor:
    """Select slots (unless ``kept`` is given) and fit ridge reconstructors in closed form.

    ``rank > 0`` adds the low-rank MLP branch (starting at zero; train it with :func:`train_mlp` or
    stage 2, :func:`echo_tutor.echokv.distill`)."""
    L, H, W, T, D = capture.keys.shape
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0 (layers on each side), got {window!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be an int >= 0, got {rank!r}")
    moments = moments or {k: SlotMoments(capture, k, lam=lam) for k in KINDS}
    if kept is None:
        kept = select_slots(capture, ratio, method=method, key_ratio=key_ratio, window=window, seed=seed, moments=moments)
    spec = ReconstructorSpec(L, H, D, {k: sorted(v) for k, v in kept.items()}, window, rank)
    return Reconstructor(spec).init_ridge(moments)


def train_mlp(rec: Reconstructor, capture: KVCapture, *, steps: int = 200, lr: float = 3e-3, batch: int = 1024, seed: int = 0) -> list[float]:
    """Stage 1b: fit the MLP branches by MSE on captured slots (pre-RoPE). Returns the loss curve."""
    params = [p for n, p in rec.named_parameters() if ".down." in n or ".up." in n]
    if not params:
        raise ValueError("the reconstructor has no MLP branch: build it with rank > 0")
    X = {k: capture.slots(k) for k in KINDS}     # [S, N, D]
    N = X["K"].shape[1]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, N, (min(batch, N),), generator=g)
        loss = 0.0
        for kind in KINDS:
            retained = {r: X[kind][r, idx] for r in rec.kept[kind]}
            for s in rec.spec.inputs[kind]:
                y = X[kind][s, idx]
                loss = loss + ((rec.rebuild(kind, s, retained) - y) ** 2).mean() / y.var().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def slot_errors(rec: Reconstructor, capture: KVCapture) -> dict[str, dict[str, torch.Tensor]]:
    """Per-slot reconstruction quality on ``capture`` (pre-RoPE): for each kind, ``rel_err``
    (||y_hat - y|| / ||y|| over all tokens) and ``cosine`` (mean per-token), both [L, H];
    retained slots score 0 and 1."""
    L, H = rec.spec.n_layers, rec.spec.n_kv_heads
    out: dict[str, dict[str, torch.Tensor]] = {}
    for kind in KINDS:
        X = capture.slots(kind)
        rel = torch.zeros(L * H)
        cos = torch.ones(L * H)
        retained = {r: X[r] for r in rec.kept[kind]}
        for s in rec.spec.inputs[kind]:
            y = X[s]
            y_hat = rec.rebuild(kind, s, retained).expand_as(y)
            rel[s] = (y_hat - y).norm() / y.norm().clamp_min(1e-12)
            cos[s] = torch.nn.functional.cosine_similarity(y_hat, y, dim=-1).mean()
        out[kind] = {"rel_err": rel.view(L, H), "cosine": cos.view(L, H)}
    return out
