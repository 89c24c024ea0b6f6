"""The converted layers with statistics beside (or instead of) the window: SKA alone, window + SKA, window +
linear attention (see :mod:`echo_tutor.convert.mixer` for the table of variants and the symbols). Each class
registers itself under its variant, so ``ConvertedAttention(attn, spec, ...)`` builds it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadArgumentError
from ..ska import SKAState, ska_readout, token_statistics, write_token
from .mixer import CLASSES, GAMMA_RANGE, GATE_INIT, VARIANTS, ConvertedAttention, MixerState

__all__ = ["SKAAttention", "WindowLinearAttention", "WindowSKAAttention"]


class _FeatureMixer(ConvertedAttention):
    """A variant with key/query feature maps ``phi_k [Hkv, D, r]``, ``phi_q [Hq, D, r]`` (shared init)."""

    def __init__(self, attn, spec, **layout) -> None:
        super().__init__(attn, spec, **layout)
        r, D, dev = spec.rank, self.head_dim, self.q_proj.weight.device
        base = self._init_map(torch.Generator().manual_seed(1234 + (self.layer_idx or 0)), D, r)
        self.phi_k = nn.Parameter(base.expand(self.n_kv, *base.shape).clone().to(dev))
        self.phi_q = nn.Parameter(base.expand(self.n_q, *base.shape).clone().to(dev))

    def _init_map(self, g: torch.Generator, D: int, r: int) -> torch.Tensor:
        """The initial map ``[D, r]``: orthonormal columns (random Gaussian past ``r > D``)."""
        if r <= D:
            return torch.linalg.qr(torch.randn(D, max(D, r), generator=g))[0][:, :r]
        return torch.randn(D, r, generator=g) / math.sqrt(D)

    def features(self, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """``x [B, T, H, D] -> [B, T, H, r]``: unit-norm features ``normalize(phi^T x)``."""
        return F.normalize(torch.einsum("bthd,hdr->bthr", x, phi), dim=-1)

    def _features_t(self, k_t):
        return self.features(k_t[:, None], self.phi_k)[:, 0]

    def init_state(self, batch: int, device=None) -> MixerState:
        st = super().init_state(batch, device)
        H, r, D, S, dev = self.n_kv, self.spec.rank, self.head_dim, self.spec.sparse, st.k_win.device
        st.pending_k = torch.zeros(batch, H, 0, r, device=dev)
        if S:
            st.k_sp, st.v_sp = torch.zeros(batch, H, S, D, device=dev), torch.zeros(batch, H, S, D, device=dev)
            st.kf_sp = torch.zeros(batch, H, S, r, device=dev)
        return st

    # -- the sparse cache (spec.sparse = S > 0) --------------------------------------------------------
    # Beside the window, S exact key/value pairs per KV head: of the tokens that left the window, those the
    # statistics recall worst (LoLA's idea, arXiv 2505.23666, here with the state's own error). Every token
    # that leaves the window is written into the statistics as before *and* offered to the cache: while a slot
    # is free it goes in; then it replaces the cached pair with the smallest error if its own error is larger.
    # Errors are measured against the statistics of the moment (they include the token), so a pair the
    # statistics have learnt to recall leaves. The window's softmax reads the cached pairs like window rows.
    def _recall_stats(self, st: MixerState) -> tuple[torch.Tensor, ...]:
        """What :meth:`_recall_error` needs from a decode state (``[B, H, ...]`` tensors)."""
        raise NotImplementedError

    def _recall_stats_seq(self, kf: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The same for every prefix of the old tokens ``kf [B, n, H, r]``, ``v [B, n, H, D]``: ``[B, n, H, ...]``."""
        raise NotImplementedError

    def _recall_error(self, stats, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """How badly the statistics recall pairs ``kf [B, H, m, r]``, ``v [B, H, m, D]``: ``[B, H, m]``."""
        raise NotImplementedError

    def _choose(self, stats, kf_sp, v_sp, filled: int, kf, v):
        """Where a token leaving the window goes: ``(slot [B, H], take [B, H])`` for candidate ``kf [B, H, r]``,
        ``v [B, H, D]`` and a cache ``kf_sp [B, H, S, r]``, ``v_sp`` with ``filled`` slots used."""
        B, H = kf.shape[:2]
        if filled < self.spec.sparse:  # a free slot: the token goes in
            return torch.full((B, H), filled, dtype=torch.long, device=kf.device), torch.ones(B, H, dtype=torch.bool, device=kf.device)
        err = self._recall_error(stats, kf_sp, v_sp)  # [B, H, S]
        mine = self._recall_error(stats, kf[:, :, None], v[:, :, None])[..., 0]
        slot = err.argmin(-1)
        return slot, mine > err.gather(-1, slot[..., None])[..., 0]

    def _place(self, slot, take, cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """``cache [B, H, S, X]`` with ``new [B, H, X]`` written at ``slot`` where ``take``."""
        hit = take[..., None] & (torch.arange(cache.shape[2], device=cache.device) == slot[..., None])
        return torch.where(hit[..., None], new[:, :, None].to(cache.dtype), cache)

    def _admit_step(self, st, kf, k_rope, v) -> None:
        slot, take = self._choose(self._recall_stats(st), st.kf_sp, st.v_sp, st.sp_n, kf, v.float())
        st.k_sp, st.v_sp = self._place(slot, take, st.k_sp, k_rope), self._place(slot, take, st.v_sp, v)
        st.kf_sp = self._place(slot, take, st.kf_sp, kf)
        st.sp_n = min(st.sp_n + 1, self.spec.sparse)

    @torch.no_grad()
    def sparse_trace(self, hidden_states: torch.Tensor) -> dict[str, torch.Tensor]:
        """What the sparse cache does on inputs ``hidden_states`` [B, T, d] (after the layer's input norm):
        ``"error"`` ``[B, Hkv, T]``, each token's recall error when it left the window (nan for the sinks and the
        tokens still in the window), and ``"held"`` ``[B, Hkv, T]`` (bool), the tokens the cache holds for the
        last query. Needs ``spec.sparse > 0``."""
        if not self.spec.sparse:
            raise BadArgumentError(f"sparse_trace: this layer keeps no sparse cache ({self.spec.label}); "
                                   "give its MixerSpec sparse > 0")
        _, k, v = self._qkv(hidden_states.float())
        s, (B, T, H, _) = self.spec, k.shape
        err = torch.full((B, H, T), float("nan"), device=k.device)
        scan = self._sparse_scan(k, v)
        if scan is None:
            return {"error": err, "held": torch.zeros(B, H, T, dtype=torch.bool, device=k.device)}
        vis, kf, vo, stats = scan  # stats [B, n, H, ...]: the statistics when token A + i leaves the window
        n = kf.shape[1]
        flat = tuple(x.flatten(0, 1) for x in stats)  # [B n, H, ...]: each token against its own moment
        e = self._recall_error(flat, kf.flatten(0, 1)[:, :, None], vo.flatten(0, 1)[:, :, None])[..., 0]
        err[:, :, s.sinks:s.sinks + n] = e.view(B, n, H).transpose(1, 2)
        return {"error": err, "held": vis[:, :, -1]}

    def _sparse_visible(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
        """Which older keys each query reads exactly from the sparse cache: ``[B, Hkv, T, T]`` (bool), or None
        without one (pre-RoPE ``k``, ``v`` ``[B, T, Hkv, D]``)."""
        scan = self._sparse_scan(k, v)
        return None if scan is None else scan[0]

    def _sparse_scan(self, k: torch.Tensor, v: torch.Tensor):
        """The sparse cache replayed token by token as :meth:`step` fills it: ``(visible [B, Hkv, T, T], kf
        [B, n, Hkv, r], v [B, n, Hkv, D], stats)`` for the ``n`` tokens that leave the window (float32), or None."""
        s, (B, T, H, D) = self.spec, k.shape
        A, W, S = s.sinks, s.window, s.sparse
        n = T - W - A  # tokens that leave the window (token A + i leaves when query A + i + W arrives)
        if not S or n <= 0:
            return None
        kf = self.features(k[:, A:A + n], self.phi_k).float()
        vo = v[:, A:A + n].float()
        stats = self._recall_stats_seq(kf, vo)
        kf_sp, v_sp = kf.new_zeros(B, H, S, kf.shape[-1]), vo.new_zeros(B, H, S, D)
        pos = torch.full((B, H, S), -1, dtype=torch.long, device=k.device)
        held = torch.full((B, H, T, S), T, dtype=torch.long, device=k.device)  # T: an empty slot (a dummy column)
        for i in range(n):
            slot, take = self._choose(tuple(x[:, i] for x in stats), kf_sp, v_sp, min(i, S), kf[:, i], vo[:, i])
            kf_sp, v_sp = self._place(slot, take, kf_sp, kf[:, i]), self._place(slot, take, v_sp, vo[:, i])
            pos = self._place(slot, take, pos[..., None], torch.full((B, H, 1), A + i, device=k.device))[..., 0]
            held[:, :, A + i + W] = torch.where(pos >= 0, pos, T)
        vis = torch.zeros(B, H, T, T + 1, dtype=torch.bool, device=k.device)
        return vis.scatter_(-1, held, True)[..., :T], kf, vo, stats


class SKAAttention(_FeatureMixer):
    """``"ska"``: SKA's readout of statistics over every token so far, no window. Trainable: the feature maps,
    the output scale ``eta`` and the spectral gain ``gamma`` ``[Hq]``."""

    variant = "ska"

    def __init__(self, attn, spec, **layout) -> None:
        super().__init__(attn, spec, **layout)
        dev = self.q_proj.weight.device
        self.eta = nn.Parameter(torch.ones(self.n_q, device=dev))
        self.gamma = nn.Parameter(torch.ones(self.n_q, device=dev))

    def _scaled(self, y: torch.Tensor) -> torch.Tensor:
        """``y [B, Hq, n, D]`` times the per-query-head output scale ``eta * clamp(gamma)^K``."""
        y = y * self.eta.view(1, -1, 1, 1)
        K = self.spec.power_steps
        return y * self.gamma.clamp(*GAMMA_RANGE).view(1, -1, 1, 1) ** K if K > 0 else y

    def _old(self, q, k, v, delay: int) -> torch.Tensor:
        """SKA readout for every token t of statistics over tokens ``A <= s <= t - delay`` ([B, Hq, T, D]; zeros
        where nothing is old). q [B, T, Hq, D], k, v [B, T, Hkv, D], pre-RoPE."""
        B, T, Hq, _ = q.shape
        out = v.new_zeros(B, Hq, T, self.head_dim)
        n = T - delay  # tokens that read a non-empty history
        if n <= 0 or not self.readout_on:
            return out
        kf, qf = self.features(k, self.phi_k).float(), self.features(q, self.phi_q)
        # the sinks stay in the softmax: they never enter the statistics (zero rows write nothing)
        keep = (torch.arange(T, device=k.device) >= (self.spec.sinks if self.spec.has_window else 0)).float()
        kf, vf = kf[:, :n] * keep[None, :n, None, None], v[:, :n].float() * keep[None, :n, None, None]
        G, M, C = token_statistics(kf, vf, eps=self.spec.eps)  # [B, n, Hkv, r, r], [B, n, Hkv, D, r]
        qg = qf[:, delay:].float().reshape(B, n, self.n_kv, self.group, self.spec.rank)  # query heads per KV head
        K = self.spec.power_steps
        y = ska_readout(G, M, C, qg, power_steps=K, spectral_norm=K > 0).reshape(B, n, Hq, self.head_dim)
        y = self._scaled(y.transpose(1, 2))
        return torch.cat([out[:, :, :delay], y.to(out.dtype)], dim=2)

    def _mix(self, hidden, q, k, v, cos, sin):
        return self._old(q, k, v, 0)

    def _old_step(self, q, st: MixerState) -> torch.Tensor:
        """The statistics' readout for one query ``q [B, Hq, D]``: ``[B, Hq, 1, D]``."""
        B, K = q.shape[0], self.spec.power_steps
        if not self.readout_on:
            return q.new_zeros(B, self.n_q, 1, self.head_dim).float()
        qf = self.features(q[:, None], self.phi_q)[:, 0].float().view(B, self.n_kv, self.group, self.spec.rank)
        old = ska_readout(st.ska.G, st.ska.M, st.ska.C, qf, power_steps=K, spectral_norm=K > 0)  # [B, Hkv, g, D]
        return self._scaled(old.reshape(B, self.n_q, 1, self.head_dim))

    def init_state(self, batch: int, device=None) -> MixerState:
        st = super().init_state(batch, device)
        st.ska = SKAState.zeros(batch, self.n_kv, self.spec.rank, self.head_dim, eps=self.spec.eps, device=st.k_win.device)
        if not self.spec.has_window:  # SKA alone keeps no rows
            st.k_win = st.v_win = st.pending_k = None
        return st

    def _write(self, st, kf, v):
        st.ska = write_token(st.ska, kf, v)

    def _recall_stats(self, st):
        Gi = torch.linalg.inv(st.ska.G)
        return Gi, st.ska.C @ Gi

    def _recall_stats_seq(self, kf, v):
        r = kf.shape[-1]
        G = self.spec.eps * torch.eye(r, device=kf.device) + torch.einsum("bnhi,bnhj->bnhij", kf, kf).cumsum(1)
        C = torch.einsum("bnhp,bnhj->bnhpj", v, kf).cumsum(1)
        Gi = torch.linalg.inv(G)
        return Gi, C @ Gi

    def _recall_error(self, stats, kf, v):
        """The ridge's leave-one-out residual ``|v - C G^-1 kf|^2 / (1 - h)^2``, ``h = kf^T G^-1 kf`` (the
        pair's leverage; the statistics include the pair, and dividing by ``1 - h`` gives what they would
        predict without it: the PRESS identity). A pair only the cache can recall keeps a large error even
        though it is written into ``G`` and ``C``."""
        Gi, Wt = stats  # [B, H, r, r], [B, H, D, r]
        pred = torch.einsum("bhdr,bhmr->bhmd", Wt, kf)
        h = torch.einsum("bhmr,bhrs,bhms->bhm", kf, Gi, kf)
        return ((v - pred) ** 2).sum(-1) / (1 - h).clamp(min=1e-6) ** 2

    def _push(self, st, k_t, v_t, cos_t, sin_t) -> None:
        if self.spec.has_window:
            return super()._push(st, k_t, v_t, cos_t, sin_t)
        self._write(st, self._features_t(k_t).float(), v_t.float())
        st.count += 1

    def _mix_step(self, x_t, q, st, cos_t, sin_t):
        return self._old_step(q, st)


class WindowSKAAttention(SKAAttention):
    """``"window+ska"``: the window, plus SKA over the tokens that left it, mixed by a gate on the current token
    (``gate_w [Hq, d]``, ``gate_b [Hq]``; 0 until a token has left the window)."""

    variant = "window+ska"

    def __init__(self, attn, spec, **layout) -> None:
        super().__init__(attn, spec, **layout)
        dev = self.q_proj.weight.device
        self.gate_w = nn.Parameter(torch.zeros(self.n_q, self.q_proj.in_features, device=dev))
        self.gate_b = nn.Parameter(torch.full((self.n_q,), GATE_INIT, device=dev))

    def _mix(self, hidden, q, k, v, cos, sin):
        num, den = self._window(q, k, v, cos, sin, self._sparse_visible(k, v))
        gate = self._gate(hidden)[..., None]  # [B, Hq, T, 1]
        return (1 - gate) * (num / den) + gate * self._old(q, k, v, self.spec.window)

    def _gate(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, Hq, T]``: the statistics' weight, 0 where no token has left the window yet."""
        T = hidden.shape[1]
        if self.spec.fixed_gate is not None:
            g = hidden.new_full((hidden.shape[0], self.n_q, T), float(self.spec.fixed_gate))
        else:
            g = torch.sigmoid(torch.einsum("btd,hd->bht", hidden, self.gate_w) + self.gate_b[None, :, None])
        return g * (torch.arange(T, device=hidden.device) >= self.spec.window + self.spec.sinks)

    @torch.no_grad()
    def gate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The weight ``[B, Hq, T]`` this layer gives its statistics' readout (``1 - gate`` goes to the softmax)
        for inputs ``hidden_states`` [B, T, d]; 0 where no token has left the window yet."""
        return self._gate(hidden_states.float())

    def _mix_step(self, x_t, q, st, cos_t, sin_t):
        num, den = self._window_step(q, st, cos_t, sin_t)
        if st.count <= self.spec.window + self.spec.sinks:  # nothing is old yet
            return num / den
        if self.spec.fixed_gate is None:
            gate = torch.sigmoid(x_t @ self.gate_w.T + self.gate_b)[:, :, None, None]
        else:
            gate = float(self.spec.fixed_gate)
        return (1 - gate) * (num / den) + gate * self._old_step(q, st)


class WindowLinearAttention(_FeatureMixer):
    """``"window+linear"``: the window, plus linear attention over the tokens that left it, one normaliser for
    both (Hedgehog features ``[softmax(phi^T x), softmax(-phi^T x)]`` of size r; the old part's weight
    ``sigmoid(lin_b) [Hq]``)."""

    variant = "window+linear"

    def __init__(self, attn, spec, **layout) -> None:
        super().__init__(attn, spec, **layout)
        self.lin_b = nn.Parameter(torch.full((self.n_q,), GATE_INIT, device=self.q_proj.weight.device))

    def _init_map(self, g, D, r):
        return torch.randn(D, r // 2, generator=g) / math.sqrt(D)

    def features(self, x, phi):
        """``x [B, T, H, D] -> [B, T, H, r]``: Hedgehog's ``[softmax(z), softmax(-z)]``, ``z = phi^T x``."""
        z = torch.einsum("bthd,hdr->bthr", x, phi)
        return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], dim=-1)

    def _mix(self, hidden, q, k, v, cos, sin):
        s, T = self.spec, q.shape[1]
        num, den = self._window(q, k, v, cos, sin, self._sparse_visible(k, v))
        qf = self.features(q, self.phi_q).transpose(1, 2)  # [B, Hq, T, r]
        kf = self.features(k, self.phi_k).transpose(1, 2).repeat_interleave(self.group, 1)
        t = torch.arange(T, device=q.device)
        old = ((t[:, None] - t[None, :]) >= s.window) & (t[None, :] >= s.sinks)
        a = (qf @ kf.transpose(-1, -2)) * old * torch.sigmoid(self.lin_b).view(1, -1, 1, 1)  # [B, Hq, T, T]
        a = a * float(self.readout_on)  # shut: the old part adds neither values nor mass (both read old keys)
        return (num + a @ v.transpose(1, 2).repeat_interleave(self.group, 1)) / (den + a.sum(-1, keepdim=True))

    def init_state(self, batch: int, device=None) -> MixerState:
        st = super().init_state(batch, device)
        H, r, D, dev = self.n_kv, self.spec.rank, self.head_dim, st.k_win.device
        st.S, st.z = torch.zeros(batch, H, r, D, device=dev), torch.zeros(batch, H, r, device=dev)
        return st

    def _write(self, st, kf, v):
        st.S = st.S + kf[..., :, None] * v[..., None, :]
        st.z = st.z + kf

    def _recall_stats(self, st):
        return st.S, st.z

    def _recall_stats_seq(self, kf, v):
        return torch.einsum("bnhr,bnhd->bnhrd", kf, v).cumsum(1), kf.cumsum(1)

    def _recall_error(self, stats, kf, v):
        """Linear attention's recall error ``|v - S^T phi(k) / (z^T phi(k))|^2`` (LoLA's self-recall error)."""
        S, z = stats  # [B, H, r, D], [B, H, r]
        pred = (kf @ S) / (kf * z[:, :, None]).sum(-1, keepdim=True).clamp(min=1e-12)
        return ((v - pred) ** 2).sum(-1)

    def _mix_step(self, x_t, q, st, cos_t, sin_t):
        num, den = self._window_step(q, st, cos_t, sin_t)
        qf = self.features(q[:, None], self.phi_q)[:, 0]  # [B, Hq, r]
        lam = torch.sigmoid(self.lin_b).view(1, -1, 1, 1) * float(self.readout_on)
        lin_num = lam * (qf[:, :, None] @ st.S.repeat_interleave(self.group, 1))  # [B, Hq, 1, D]
        lin_den = lam * (qf * st.z.repeat_interleave(self.group, 1)).sum(-1)[:, :, None, None]
        return (num + lin_num) / (den + lin_den)


assert set(CLASSES) == set(VARIANTS), f"a variant has no class: {set(VARIANTS) - set(CLASSES)}"
