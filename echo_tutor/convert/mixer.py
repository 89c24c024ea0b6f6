"""Fixed-state mixers that replace one attention layer of a pretrained Llama-style model.

A converted layer keeps the layer's own ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (frozen, shared
KV heads as the model shares them) and changes only *what a query reads*:

    variant          a query at position t reads                                       inference state
    ---------------  ---------------------------------------------------------------  --------------------------
    "window"         softmax over the first A tokens ("sinks") and the last W tokens     (A + W) rows of K and V
                     (s < A or s in (t-W, t]), RoPE as before
    "ska"            SKA's ridge / Koopman readout of statistics over s <= t           O(r^2) per KV head
    "window+ska"     the window, plus SKA statistics of everything else (A <= s <= t-W), (A + W) rows + O(r^2)
                     mixed by a learned gate g_t: (1 - g_t) window + g_t ska
    "window+linear"  the window, plus linear attention over A <= s <= t-W, one shared  (A + W) rows + O(r^2)
                     normaliser (LoLCATs' form; Hedgehog feature map of size r)

Symbols (per KV head; a query head reads its group's KV head):

    q_t, k_t  [D]        the layer's own query / key, *before* RoPE, for the SKA and linear parts
    phi_k     [D, r]     learned key feature map (orthonormal init, shared by the query map)
    kf_t = normalize(phi_k^T k_t),  qf_t = normalize(phi_q^T q_t)                     [r]
    G = eps I + sum kf kf^T   M = sum kf_s kf_{s-1}^T   C = sum v kf^T                the SKA state
    ska_t = eta * s^K * C G^-1 (M G^-1)^K qf_t                                          [D]

The sinks are StreamingLLM's (arXiv 2309.17453): SmolLM2's heads park much of their attention on the
first tokens, and a window without them changes a layer's output more than dropping the layer would
(measured: relative error 1.21 at layer 5 with W = 64 and no sinks, see ``docs/results.md``).

With ``window >= T`` every variant with a window *is* the original attention: nothing is older than the
window, the old part is empty and the gate is not applied (tested). Shapes: ``forward(hidden [B, T, d],
position_embeddings=(cos, sin) [B, T, D]) -> (out [B, T, d], None)``; ``step`` decodes one token from a
:class:`MixerState` whose size does not depend on how many tokens it has read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadArgumentError
from ..echokv.capture import apply_rope
from ..ska.reference import ska_readout
from .spec import VARIANTS, MixerSpec, MixerState

__all__ = ["VARIANTS", "ConvertedAttention", "MixerSpec", "MixerState"]

class ConvertedAttention(nn.Module):
    """One attention layer of a Llama-style model, converted to a fixed-state mixer (see module doc).

    Args:
        attn: the layer's ``self_attn`` (its projections are shared, frozen).
        spec: a :class:`MixerSpec`.
        n_q_heads, n_kv_heads, head_dim: the model's attention shape.

    Trainable parameters (stage 1 fits them): the feature maps ``phi_q`` ``[Hq, D, r]`` and ``phi_k``
    ``[Hkv, D, r]``, SKA's output scale ``eta`` and spectral gain ``gamma`` ``[Hq]``, the gate
    (``gate_w [Hq, d]``, ``gate_b [Hq]``) of ``"window+ska"`` and the linear part's weight ``lin_b [Hq]``.
    """

    def __init__(self, attn: nn.Module, spec: MixerSpec, *, n_q_heads: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        if not isinstance(spec, MixerSpec):
            raise BadArgumentError(f"spec must be a MixerSpec, got {type(spec).__name__}")
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            if not isinstance(getattr(attn, name, None), nn.Linear):
                raise BadArgumentError(f"attn must be a Llama-style attention with nn.Linear {name}, got {type(attn).__name__}")
        if n_q_heads % n_kv_heads:
            raise BadArgumentError(f"n_kv_heads={n_kv_heads} must divide n_q_heads={n_q_heads}")
        self.spec = spec
        self.n_q, self.n_kv, self.head_dim = n_q_heads, n_kv_heads, head_dim
        self.group = n_q_heads // n_kv_heads
        self.layer_idx = getattr(attn, "layer_idx", None)
        self.scaling = head_dim**-0.5
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
        for p in (*self.q_proj.parameters(), *self.k_proj.parameters(), *self.v_proj.parameters(), *self.o_proj.parameters()):
            p.requires_grad_(False)
        d_model = self.q_proj.in_features
        r, D = spec.rank, head_dim
        dev = self.q_proj.weight.device
        g = torch.Generator().manual_seed(1234 + (self.layer_idx or 0))
        if spec.variant == "window+linear":
            base = torch.randn(D, r // 2, generator=g) / math.sqrt(D)
        else:
            base = torch.linalg.qr(torch.randn(D, max(D, r), generator=g))[0][:, :r] if r <= D else torch.randn(D, r, generator=g) / math.sqrt(D)
        self.phi_k = nn.Parameter(base.expand(n_kv_heads, *base.shape).clone().to(dev))
        self.phi_q = nn.Parameter(base.expand(n_q_heads, *base.shape).clone().to(dev))
        self.eta = nn.Parameter(torch.ones(n_q_heads, device=dev))
        self.gamma = nn.Parameter(torch.ones(n_q_heads, device=dev))
        self.gate_w = nn.Parameter(torch.zeros(n_q_heads, d_model, device=dev))
        # the old part starts nearly switched off (sigmoid(-4) = 0.018): a fresh converted layer is the window
        # alone, and stage 1 has to earn every bit of weight the statistics get
        self.gate_b = nn.Parameter(torch.full((n_q_heads,), -4.0, device=dev))
        self.lin_b = nn.Parameter(torch.full((n_q_heads,), -4.0, device=dev))
        self._stream: MixerState | None = None

    # ----------------------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return f"{self.spec.label}, heads {self.n_q}/{self.n_kv}, head_dim {self.head_dim}"

    def state_nbytes(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the decode state once the window is full: the same at 1k and at 16k tokens.

        Window: ``2 (A + W) Hkv D`` (K and V rows) plus ``W Hkv r`` key features waiting to enter the statistics;
        SKA: ``Hkv (2 r^2 + D r + r)``; linear: ``Hkv (r D + r)``."""
        s, H, D, r = self.spec, self.n_kv, self.head_dim, self.spec.rank
        n = 0
        if s.has_window:
            n += 2 * (s.window + s.sinks) * H * D
        if s.has_ska:
            n += H * (2 * r * r + D * r + r)
            if s.has_window:
                n += s.window * H * r
        if s.variant == "window+linear":
            n += H * (r * D + r) + s.window * H * r
        return n * batch * torch.tensor([], dtype=dtype).element_size()

    # ----------------------------------------------------------------------------------------------
    def _features(self, x: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
        """x [B, T, H, D] -> features [B, T, H, r] (unit norm for SKA; Hedgehog for linear)."""
        z = torch.einsum("bthd,hdr->bthr", x, phi)
        if self.spec.variant == "window+linear":
            return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], dim=-1)
        return F.normalize(z, dim=-1)

    def _qkv(self, hidden: torch.Tensor):
        B, T, _ = hidden.shape
        q = self.q_proj(hidden).view(B, T, self.n_q, self.head_dim)
        k = self.k_proj(hidden).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(hidden).view(B, T, self.n_kv, self.head_dim)
        return q, k, v

    def _ska_old(self, qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor, delay: int) -> torch.Tensor:
        """SKA readout for every token t of statistics over tokens s <= t - delay.

        qf [B, T, Hq, r], kf [B, T, Hkv, r], v [B, T, Hkv, D] -> [B, T, Hq, D] (zeros where nothing is old)."""
        B, T, Hq, r = qf.shape
        out = qf.new_zeros(B, T, Hq, self.head_dim)
        n = T - delay  # tokens that read a non-empty history
        if n <= 0:
            return out
        kf, v = kf.float(), v.float()
        A = self.spec.sinks if self.spec.has_window else 0
        if A:  # the sinks stay in the softmax: they never enter the statistics
            keep = (torch.arange(T, device=kf.device) >= A).to(kf.dtype).view(1, T, 1, 1)
            kf, v = kf * keep, v * keep
        k_lag = torch.cat([kf.new_zeros(B, 1, self.n_kv, r), kf[:, :-1]], dim=1)
        eye = self.spec.eps * torch.eye(r, dtype=kf.dtype, device=kf.device)
        G = eye + torch.cumsum(torch.einsum("bthi,bthj->bthij", kf[:, :n], kf[:, :n]), dim=1)  # [B, n, H, r, r]
        M = torch.cumsum(torch.einsum("bthi,bthj->bthij", kf[:, :n], k_lag[:, :n]), dim=1)
        C = torch.cumsum(torch.einsum("bthp,bthj->bthpj", v[:, :n], kf[:, :n]), dim=1)  # [B, n, H, D, r]
        qg = qf[:, delay:].float().reshape(B, n, self.n_kv, self.group, r)  # query heads of one KV head
        K = self.spec.power_steps
        y = ska_readout(G, M, C, qg, power_steps=K, spectral_norm=K > 0)  # [B, n, Hkv, g, D]
        y = y.reshape(B, n, Hq, self.head_dim)
        eta, gamma = self.eta.view(1, 1, Hq, 1), self.gamma.view(1, 1, Hq, 1)
        y = y * eta * (gamma.clamp(0.25, 2.0) ** K if K > 0 else 1.0)
        return torch.cat([out[:, :delay], y.to(out.dtype)], dim=1)

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        """``hidden_states`` [B, T, d] (after the layer's input norm), ``position_embeddings`` (cos, sin)
        [B, T, D] -> (output [B, T, d], None). With an HF ``cache`` the layer keeps its own
        :class:`MixerState` (prefill builds it, one-token calls :meth:`step` through it)."""
        if position_embeddings is None:
            raise BadArgumentError("position_embeddings must be the (cos, sin) pair the decoder layer passes")
        cos, sin = position_embeddings
        if cache is not None:
            if hidden_states.shape[1] == 1 and self._stream is not None:
                y, self._stream = self.step(hidden_states[:, 0], (cos[:, 0], sin[:, 0]), self._stream)
                return y[:, None], None
            y, self._stream = self._forward(hidden_states, cos, sin, want_state=True)
            return y, None
        return self._forward(hidden_states, cos, sin)[0], None

    def _forward(self, hidden: torch.Tensor, cos, sin, want_state: bool = False):
        s = self.spec
        B, T, _ = hidden.shape
        q, k, v = self._qkv(hidden)  # [B, T, H, D], pre-RoPE
        W = s.window if s.has_window else 0
        if s.has_window:
            qr = apply_rope(q.transpose(1, 2), cos, sin)  # [B, Hq, T, D]
            kr = apply_rope(k.transpose(1, 2), cos, sin).repeat_interleave(self.group, 1)
            vv = v.transpose(1, 2).repeat_interleave(self.group, 1)
            scores = (qr @ kr.transpose(-1, -2)) * self.scaling  # [B, Hq, T, T]
            t = torch.arange(T, device=hidden.device)
            lag = t[:, None] - t[None, :]
            visible = (lag >= 0) & ((lag < W) | (t[None, :] < s.sinks))
            scores = scores.masked_fill(~visible, float("-inf"))
            m = scores.amax(-1, keepdim=True)
            e = torch.exp(scores - m)
            num, den = e @ vv, e.sum(-1, keepdim=True)  # [B, Hq, T, D], [B, Hq, T, 1]
        if s.variant == "window":
            y = num / den
        elif s.has_ska:
            qf, kf = self._features(q, self.phi_q), self._features(k, self.phi_k)
            old = self._ska_old(qf, kf, v, W).transpose(1, 2)  # [B, Hq, T, D]
            if s.has_window:
                gate = torch.sigmoid(torch.einsum("btd,hd->bht", hidden, self.gate_w) + self.gate_b[None, :, None])[..., None]
                has_old = (torch.arange(T, device=hidden.device) >= W + s.sinks).view(1, 1, T, 1)
                gate = gate * has_old
                y = (1 - gate) * (num / den) + gate * old
            else:
                y = old
        else:  # window+linear: one normaliser over the window's exp-scores and the old part's phi.phi
            qf, kf = self._features(q, self.phi_q), self._features(k, self.phi_k)
            qf = qf.transpose(1, 2)  # [B, Hq, T, r]
            kf = kf.transpose(1, 2).repeat_interleave(self.group, 1)
            a = qf @ kf.transpose(-1, -2)  # [B, Hq, T, T]
            t = torch.arange(T, device=hidden.device)
            old_mask = ((t[:, None] - t[None, :]) >= W) & (t[None, :] >= s.sinks)
            a = a * old_mask * torch.sigmoid(self.lin_b).view(1, -1, 1, 1)
            y = (num + a @ vv) / (den + a.sum(-1, keepdim=True))
        y = y.transpose(1, 2).reshape(B, T, self.n_q * self.head_dim).to(hidden.dtype)
        out = self.o_proj(y)
        state = self._state_from(q, k, v, cos, sin) if want_state else None
        return out, state

    @torch.no_grad()
    def gate(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The weight ``[B, Hq, T]`` a ``window+ska`` layer gives its statistics' readout (``1 - gate`` goes to
        the softmax) for inputs ``hidden_states`` [B, T, d]; 0 where no token has left the window yet."""
        if not (self.spec.has_window and self.spec.has_ska):
            raise BadArgumentError(f"gate: only a window+ska mixer has a gate, this one is {self.spec.variant!r}")
        T = hidden_states.shape[1]
        g = torch.sigmoid(torch.einsum("btd,hd->bht", hidden_states.float(), self.gate_w) + self.gate_b[None, :, None])
        return g * (torch.arange(T, device=g.device) >= self.spec.window + self.spec.sinks)

    # ----------------------------------------------------------------------------------------------
    def init_state(self, batch: int, device=None) -> MixerState:
        """An empty decode state."""
        dev = device or self.q_proj.weight.device
        s, H, D, r = self.spec, self.n_kv, self.head_dim, self.spec.rank
        st = MixerState()
        if s.has_window:
            st.k_win = torch.zeros(batch, H, 0, D, device=dev)
            st.v_win = torch.zeros(batch, H, 0, D, device=dev)
            if s.variant != "window":
                st.pending_k = torch.zeros(batch, H, 0, r, device=dev)
        if s.has_ska:
            st.G = (s.eps * torch.eye(r, device=dev)).expand(batch, H, r, r).clone()
            st.M = torch.zeros(batch, H, r, r, device=dev)
            st.C = torch.zeros(batch, H, D, r, device=dev)
            st.k_prev = torch.zeros(batch, H, r, device=dev)
        if s.variant == "window+linear":
            st.S = torch.zeros(batch, H, r, D, device=dev)
            st.z = torch.zeros(batch, H, r, device=dev)
        return st

    def _absorb(self, st: MixerState, kf: torch.Tensor, v: torch.Tensor) -> None:
        """Write one token (key features kf [B, H, r], value v [B, H, D]) into the statistics."""
        if self.spec.has_ska:
            st.G = st.G + kf[..., :, None] * kf[..., None, :]
            st.M = st.M + kf[..., :, None] * st.k_prev[..., None, :]
            st.C = st.C + v[..., :, None] * kf[..., None, :]
            st.k_prev = kf
        else:
            st.S = st.S + kf[..., :, None] * v[..., None, :]
            st.z = st.z + kf

    @torch.no_grad()
    def _state_from(self, q, k, v, cos, sin) -> MixerState:
        """The decode state after reading a prefill (replays it token by token into the state)."""
        B, T = k.shape[:2]
        st = self.init_state(B, k.device)
        for t in range(T):
            self._push(st, k[:, t], v[:, t], cos[:, t], sin[:, t])
        return st

    def _push(self, st: MixerState, k_t, v_t, cos_t, sin_t) -> None:
        """Append token t's key/value (pre-RoPE k_t, v_t [B, Hkv, D]) to the state."""
        s = self.spec
        kf = self._features(k_t[:, None], self.phi_k)[:, 0] if s.variant != "window" else None  # [B, H, r]
        if not s.has_window:
            self._absorb(st, kf.float(), v_t.float())
        else:
            kr = apply_rope(k_t[:, :, None], cos_t[:, None], sin_t[:, None])  # [B, H, 1, D]
            st.k_win = torch.cat([st.k_win, kr], dim=2)
            st.v_win = torch.cat([st.v_win, v_t[:, :, None]], dim=2)
            if kf is not None:
                st.pending_k = torch.cat([st.pending_k, kf[:, :, None]], dim=2)
            A = s.sinks
            if st.count < A:  # a sink: kept for good, never written into the statistics
                if kf is not None:
                    st.pending_k = st.pending_k[:, :, :-1]
            elif st.k_win.shape[2] > A + s.window:  # the oldest non-sink token leaves the window
                if kf is not None:
                    self._absorb(st, st.pending_k[:, :, 0].float(), st.v_win[:, :, A].float())
                    st.pending_k = st.pending_k[:, :, 1:]
                keep = [i for i in range(st.k_win.shape[2]) if i != A]
                st.k_win, st.v_win = st.k_win[:, :, keep], st.v_win[:, :, keep]
        st.count += 1

    def step(self, x_t: torch.Tensor, rope_t, state: MixerState):
        """Decode one token: ``x_t`` [B, d], ``rope_t`` = (cos, sin) [B, D] at its position -> (y [B, d], state)."""
        if not isinstance(state, MixerState):
            raise BadArgumentError(f"state must be a MixerState, got {type(state).__name__}")
        s = self.spec
        cos_t, sin_t = rope_t
        q, k, v = self._qkv(x_t[:, None])
        q, k, v = q[:, 0], k[:, 0], v[:, 0]  # [B, H, D]
        self._push(state, k, v, cos_t, sin_t)
        B = x_t.shape[0]
        if s.has_window:
            qr = apply_rope(q[:, :, None], cos_t[:, None], sin_t[:, None])  # [B, Hq, 1, D]
            kr = state.k_win.repeat_interleave(self.group, 1)
            vv = state.v_win.repeat_interleave(self.group, 1)
            sc = (qr @ kr.transpose(-1, -2)) * self.scaling
            m = sc.amax(-1, keepdim=True)
            e = torch.exp(sc - m)
            num, den = e @ vv, e.sum(-1, keepdim=True)  # [B, Hq, 1, D]
        has_old = state.count > ((s.window + s.sinks) if s.has_window else 0)
        if s.variant == "window":
            y = num / den
        elif s.has_ska:
            qf = self._features(q[:, None], self.phi_q)[:, 0].float().view(B, self.n_kv, self.group, s.rank)
            K = s.power_steps
            old = ska_readout(state.G, state.M, state.C, qf, power_steps=K, spectral_norm=K > 0)  # [B, Hkv, g, D]
            old = old.reshape(B, self.n_q, 1, self.head_dim) * self.eta.view(1, -1, 1, 1)
            if K > 0:
                old = old * self.gamma.clamp(0.25, 2.0).view(1, -1, 1, 1) ** K
            if not has_old:
                old = torch.zeros_like(old)
            if s.has_window:
                gate = torch.sigmoid(x_t @ self.gate_w.T + self.gate_b)[:, :, None, None] * float(has_old)
                y = (1 - gate) * (num / den) + gate * old
            else:
                y = old
        else:
            qf = self._features(q[:, None], self.phi_q)[:, 0]  # [B, Hq, r]
            Sx = state.S.repeat_interleave(self.group, 1)  # [B, Hq, r, D]
            zx = state.z.repeat_interleave(self.group, 1)
            lam = torch.sigmoid(self.lin_b).view(1, -1, 1)
            lin_num = lam[..., None] * (qf[:, :, None] @ Sx)  # [B, Hq, 1, D]
            lin_den = lam[..., None] * (qf * zx).sum(-1)[:, :, None, None]
            y = (num + lin_num) / (den + lin_den)
        y = y[:, :, 0].reshape(B, self.n_q * self.head_dim).to(x_t.dtype)
        return self.o_proj(y), state
