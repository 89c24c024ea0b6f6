"""Fixed-state mixers that replace one attention layer of a pretrained Llama-style model.

A converted layer keeps the layer's own ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (frozen, shared
KV heads as the model shares them) and changes only *what a query reads*. One class per variant:

    class (variant)                      a query at position t reads                           inference state
    -----------------------------------  ----------------------------------------------------  ------------------
    WindowAttention ("window")           softmax over the first A tokens ("sinks") and the      (A + W) rows of K, V
                                         last W tokens (s < A or s in (t-W, t]), RoPE as before
    SKAAttention ("ska")                 SKA's ridge / Koopman readout of statistics, s <= t     O(r^2) per KV head
    WindowSKAAttention ("window+ska")    the window, plus SKA statistics of everything else     (A + W) rows + O(r^2)
                                         (A <= s <= t-W), mixed by a learned gate g_t:
                                         (1 - g_t) window + g_t ska
    WindowLinearAttention                the window, plus linear attention over A <= s <= t-W,  (A + W) rows + O(r^2)
    ("window+linear")                    one shared normaliser (LoLCATs' form; Hedgehog
                                         feature map of size r)

With ``spec.sparse = S > 0`` a ``window+ska`` or ``window+linear`` layer also keeps a **sparse cache**: S exact
key/value pairs per KV head, of the tokens that left the window those its statistics recall worst (the ridge's
leave-one-out residual for SKA, the recall error for linear attention; LoLA's idea, arXiv 2505.23666), read by
the window's softmax like window rows. Every token is still written into the statistics. S pairs cost what S
more window tokens cost (``state_nbytes_for``).

``ConvertedAttention(attn, spec, ...)`` builds the class of ``spec.variant`` (as ``pathlib.Path`` builds a
``PosixPath``); every variant is a ``ConvertedAttention``. This module holds the base class (projections,
window, decode state, cache) and the window alone; :mod:`echo_tutor.convert.fixed_state` the variants with
statistics, whose SKA statistics and readout are :mod:`echo_tutor.ska`'s (``token_statistics``,
``write_token``, ``ska_readout``), not a copy.

Symbols (per KV head; a query head reads its group's KV head):

    q_t, k_t  [D]        the layer's own query / key, *before* RoPE, for the SKA and linear parts
    phi_k     [D, r]     learned key feature map (orthonormal init, shared by the query map)
    kf_t = normalize(phi_k^T k_t),  qf_t = normalize(phi_q^T q_t)                     [r]
    G = eps I + sum kf kf^T   M = sum kf_s kf_{s-1}^T   C = sum v kf^T                the SKA state
    ska_t = eta * s^K * C G^-1 (M G^-1)^K qf_t,  s = clamp(gamma, GAMMA_RANGE)       [D]

The sinks are StreamingLLM's (arXiv 2309.17453): SmolLM2's heads park much of their attention on the
first tokens, and a window without them changes a layer's output more than dropping the layer would
(measured: relative error 1.21 at layer 5 with W = 64 and no sinks, see ``docs/results.md``).

With ``window >= T`` every variant with a window *is* the original attention: nothing is older than the
window, the old part is empty and the gate is not applied (tested). Shapes: ``forward(hidden [B, T, d],
position_embeddings=(cos, sin) [B, T, D]) -> (out [B, T, d], None)``; ``step`` decodes one token from a
:class:`MixerState` whose size does not depend on how many tokens it has read. With a
:class:`~echo_tutor.convert.cache.ConvertedCache`, ``model(ids, cache=cache)`` keeps that state in the cache.
"""

from __future__ import annotations

import torch
from torch import nn

from ..echokv.capture import apply_rope
from ..errors import BadArgumentError
from .spec import VARIANTS, MixerSpec, MixerState

__all__ = ["CLASSES", "GAMMA_RANGE", "GATE_INIT", "VARIANTS", "ConvertedAttention", "MixerSpec", "MixerState",
           "WindowAttention"]

GAMMA_RANGE = (0.25, 2.0)  # SKA's spectral gain is clamped to this range: stage 1 cannot blow up the K-th power
GATE_INIT = -4.0  # the statistics' weight starts at sigmoid(-4) = 0.018: a fresh layer is the window alone
CLASSES: dict[str, type["ConvertedAttention"]] = {}  # variant -> class (each subclass adds itself)


class ConvertedAttention(nn.Module):
    """One attention layer of a Llama-style model, converted to a fixed-state mixer (see module doc).

    Args:
        attn: the layer's ``self_attn`` (its projections are shared, frozen).
        spec: a :class:`MixerSpec`; ``ConvertedAttention(attn, spec, ...)`` returns the class of its variant.
        n_q_heads, n_kv_heads, head_dim: the model's attention shape.

    A variant implements ``_mix`` (the whole sequence) and ``_mix_step`` (one token) from the window's
    softmax parts; this base class holds the projections, the window, the decode state and the cache.
    """

    variant = ""
    readout_on = True  # False: the statistics read out nothing (a control, convert.passkey.readout_shut)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if cls.variant:
            CLASSES[cls.variant] = cls

    def __new__(cls, *args, **kwargs):
        if cls is ConvertedAttention:  # build the variant's class
            spec = kwargs.get("spec", args[1] if len(args) > 1 else None)
            if not isinstance(spec, MixerSpec):
                raise BadArgumentError(f"spec must be a MixerSpec, got {type(spec).__name__}")
            cls = CLASSES[spec.variant]
        return super().__new__(cls)

    def __init__(self, attn: nn.Module, spec: MixerSpec, *, n_q_heads: int, n_kv_heads: int, head_dim: int) -> None:
        super().__init__()
        if not isinstance(spec, MixerSpec) or spec.variant != self.variant:
            raise BadArgumentError(f"spec must be a MixerSpec with variant {self.variant!r}, got {spec!r}")
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

    def extra_repr(self) -> str:
        return f"{self.spec.label}, heads {self.n_q}/{self.n_kv}, head_dim {self.head_dim}"

    # -- bytes ----------------------------------------------------------------------------------------
    @staticmethod
    def state_nbytes_for(spec: MixerSpec, n_kv_heads: int, head_dim: int, batch: int = 1,
                         dtype: torch.dtype = torch.float32) -> int:
        """Bytes of a ``spec`` layer's decode state once its window is full: the same at 1k and at 16k tokens.

        Window: ``2 (A + W) Hkv D`` (K and V rows) plus ``W Hkv r`` key features waiting to enter the statistics;
        SKA: ``Hkv (2 r^2 + D r + r)``; linear: ``Hkv (r D + r)``; a sparse cache of S pairs: ``S Hkv (2 D + r)``
        (keys, values, key features), the bytes of S more window tokens."""
        s, H, D, r = spec, n_kv_heads, head_dim, spec.rank
        n = 2 * (s.window + s.sinks) * H * D if s.has_window else 0
        if s.variant != "window" and s.has_window:
            n += s.window * H * r
        if s.has_ska:
            n += H * (2 * r * r + D * r + r)
        if s.variant == "window+linear":
            n += H * (r * D + r)
        n += s.sparse * H * (2 * D + r)
        return n * batch * torch.tensor([], dtype=dtype).element_size()

    def state_nbytes(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of this layer's decode state once the window is full (:meth:`state_nbytes_for`)."""
        return self.state_nbytes_for(self.spec, self.n_kv, self.head_dim, batch, dtype)

    # -- the whole sequence ---------------------------------------------------------------------------
    def _qkv(self, hidden: torch.Tensor):
        B, T, _ = hidden.shape
        q = self.q_proj(hidden).view(B, T, self.n_q, self.head_dim)
        k = self.k_proj(hidden).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(hidden).view(B, T, self.n_kv, self.head_dim)
        return q, k, v

    def _window(self, q, k, v, cos, sin, extra: torch.Tensor | None = None):
        """The window's softmax parts for every token: numerator ``[B, Hq, T, D]`` and normaliser ``[B, Hq, T, 1]``
        (exp-scores relative to the row's maximum), from pre-RoPE q ``[B, T, Hq, D]``, k, v ``[B, T, Hkv, D]``.
        ``extra`` ``[B, Hkv, T, T]`` (bool): older keys each query also sees exactly (a sparse cache)."""
        s, T = self.spec, q.shape[1]
        qr = apply_rope(q.transpose(1, 2), cos, sin)  # [B, Hq, T, D]
        kr = apply_rope(k.transpose(1, 2), cos, sin).repeat_interleave(self.group, 1)
        vv = v.transpose(1, 2).repeat_interleave(self.group, 1)
        scores = (qr @ kr.transpose(-1, -2)) * self.scaling  # [B, Hq, T, T]
        t = torch.arange(T, device=q.device)
        lag = t[:, None] - t[None, :]
        visible = (lag >= 0) & ((lag < s.window) | (t[None, :] < s.sinks))
        if extra is not None:
            visible = visible | extra.repeat_interleave(self.group, 1)
        scores = scores.masked_fill(~visible, float("-inf"))
        e = torch.exp(scores - scores.amax(-1, keepdim=True))
        return e @ vv, e.sum(-1, keepdim=True)

    def _mix(self, hidden, q, k, v, cos, sin) -> torch.Tensor:
        """What each query reads, ``[B, Hq, T, D]`` (before ``o_proj``)."""
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        """``hidden_states`` [B, T, d] (after the layer's input norm), ``position_embeddings`` (cos, sin)
        [B, T, D] -> (output [B, T, d], None). With a :class:`~echo_tutor.convert.cache.ConvertedCache` the
        layer's :class:`MixerState` lives in the cache: a prefill builds it, a one-token call :meth:`step`\\ s."""
        if position_embeddings is None:
            raise BadArgumentError("position_embeddings must be the (cos, sin) pair the decoder layer passes")
        cos, sin = position_embeddings
        slot = cache.mixer_slot(self.layer_idx) if hasattr(cache, "mixer_slot") else None
        if slot is None and cache is not None and _continues(kwargs.get("position_ids")):
            # another cache (transformers makes a DynamicCache whenever use_cache is on) holds no state of this
            # layer: a call that continues a sequence would read no history, so it is refused, not answered wrong
            raise BadArgumentError("cache: a converted layer keeps its decode state in a ConvertedCache "
                                   f"(echo_tutor.convert.ConvertedCache(model)), got {type(cache).__name__}")
        if slot is not None and hidden_states.shape[1] == 1 and slot.state is not None:
            y, slot.state = self.step(hidden_states[:, 0], (cos[:, 0], sin[:, 0]), slot.state)
            return y[:, None], None
        q, k, v = self._qkv(hidden_states)  # [B, T, H, D], pre-RoPE
        y = self._mix(hidden_states, q, k, v, cos, sin)
        y = y.transpose(1, 2).reshape(*hidden_states.shape[:2], self.n_q * self.head_dim).to(hidden_states.dtype)
        if slot is not None:
            slot.state = self._state_from(k, v, cos, sin)
        return self.o_proj(y), None

    # -- decoding -------------------------------------------------------------------------------------
    def init_state(self, batch: int, device=None) -> MixerState:
        """An empty decode state: the window's K/V rows (and, beside a fixed state, the features waiting)."""
        dev = device or self.q_proj.weight.device
        H, D = self.n_kv, self.head_dim
        return MixerState(k_win=torch.zeros(batch, H, 0, D, device=dev), v_win=torch.zeros(batch, H, 0, D, device=dev))

    def _features_t(self, k_t: torch.Tensor) -> torch.Tensor | None:
        """A token's key features ``[B, Hkv, r]`` from its pre-RoPE key ``[B, Hkv, D]`` (None: no statistics)."""
        return None

    def _write(self, st: MixerState, kf: torch.Tensor, v: torch.Tensor) -> None:
        """Write one token that left the window (features ``kf [B, H, r]``, value ``v [B, H, D]``) into the statistics."""

    def _admit_step(self, st: MixerState, kf: torch.Tensor, k_rope: torch.Tensor, v: torch.Tensor) -> None:
        """Offer a token that left the window to the sparse cache (variants with ``spec.sparse``)."""
        raise NotImplementedError

    @torch.no_grad()
    def _state_from(self, k, v, cos, sin) -> MixerState:
        """The decode state after reading a prefill (replays it token by token into the state)."""
        st = self.init_state(k.shape[0], k.device)
        for t in range(k.shape[1]):
            self._push(st, k[:, t], v[:, t], cos[:, t], sin[:, t])
        return st

    def _push(self, st: MixerState, k_t, v_t, cos_t, sin_t) -> None:
        """Append token t's key/value (pre-RoPE k_t, v_t [B, Hkv, D]) to the state."""
        s, A = self.spec, self.spec.sinks
        kf = self._features_t(k_t)
        st.k_win = torch.cat([st.k_win, apply_rope(k_t[:, :, None], cos_t[:, None], sin_t[:, None])], dim=2)
        st.v_win = torch.cat([st.v_win, v_t[:, :, None]], dim=2)
        if kf is not None and st.count >= A:  # a sink is kept for good, never written into the statistics
            st.pending_k = torch.cat([st.pending_k, kf[:, :, None]], dim=2)
        if st.count >= A and st.k_win.shape[2] > A + s.window:  # the oldest non-sink token leaves the window
            if kf is not None:
                self._write(st, st.pending_k[:, :, 0].float(), st.v_win[:, :, A].float())
                if s.sparse:
                    self._admit_step(st, st.pending_k[:, :, 0].float(), st.k_win[:, :, A], st.v_win[:, :, A])
                st.pending_k = st.pending_k[:, :, 1:]
            keep = [i for i in range(st.k_win.shape[2]) if i != A]
            st.k_win, st.v_win = st.k_win[:, :, keep], st.v_win[:, :, keep]
        st.count += 1

    def _window_step(self, q, st: MixerState, cos_t, sin_t):
        """The window's softmax parts for one query ``q [B, Hq, D]`` (pre-RoPE): ``[B, Hq, 1, D]``, ``[B, Hq, 1, 1]``."""
        qr = apply_rope(q[:, :, None], cos_t[:, None], sin_t[:, None])  # [B, Hq, 1, D]
        kw, vw = st.k_win, st.v_win
        if st.sp_n:  # the sparse cache's filled slots are read like window rows
            kw, vw = torch.cat([kw, st.k_sp[:, :, :st.sp_n]], 2), torch.cat([vw, st.v_sp[:, :, :st.sp_n]], 2)
        sc = (qr @ kw.repeat_interleave(self.group, 1).transpose(-1, -2)) * self.scaling
        e = torch.exp(sc - sc.amax(-1, keepdim=True))
        return e @ vw.repeat_interleave(self.group, 1), e.sum(-1, keepdim=True)

    def _mix_step(self, x_t, q, st: MixerState, cos_t, sin_t) -> torch.Tensor:
        """What one query reads, ``[B, Hq, 1, D]``, after its token was pushed into ``st``."""
        raise NotImplementedError

    def step(self, x_t: torch.Tensor, rope_t, state: MixerState):
        """Decode one token: ``x_t`` [B, d], ``rope_t`` = (cos, sin) [B, D] at its position -> (y [B, d], state)."""
        if not isinstance(state, MixerState):
            raise BadArgumentError(f"state must be a MixerState, got {type(state).__name__}")
        cos_t, sin_t = rope_t
        q, k, v = (z[:, 0] for z in self._qkv(x_t[:, None]))  # [B, H, D]
        self._push(state, k, v, cos_t, sin_t)
        y = self._mix_step(x_t, q, state, cos_t, sin_t)
        return self.o_proj(y[:, :, 0].reshape(x_t.shape[0], self.n_q * self.head_dim).to(x_t.dtype)), state


def _continues(position_ids) -> bool:
    """Whether a call's first position is past 0 (it continues a sequence read before)."""
    return isinstance(position_ids, torch.Tensor) and position_ids.numel() > 0 and bool(position_ids.min() > 0)


class WindowAttention(ConvertedAttention):
    """``"window"``: softmax over the sinks and the last W tokens; no trainable parameters."""

    variant = "window"

    def _mix(self, hidden, q, k, v, cos, sin):
        num, den = self._window(q, k, v, cos, sin)
        return num / den

    def _mix_step(self, x_t, q, st, cos_t, sin_t):
        num, den = self._window_step(q, st, cos_t, sin_t)
        return num / den
