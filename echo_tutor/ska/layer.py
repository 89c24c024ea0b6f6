"""``SpectralKoopmanAttention``: the SKA mixer as a drop-in ``nn.Module``.

Per head h (paper symbols -> code):

    k_t = W_K x_t   (r)      self.w_k      orthogonal init, no bias
    q_t = W_Q x_t   (r)      self.w_q      orthogonal init, no bias
    v_t = W_V x_t   (P)      self.w_v      Xavier init, no bias
    beta_t = sigmoid(w_beta . x_t + b_beta)   self.gate   zero init -> beta = 0.5
    y_t = eta * s^K * C G^-1 (M G^-1)^K q_t   (see ``reference.py``)
    out_t = W_O [y_t^1 ... y_t^H]             self.w_o      zero init: a fresh layer is a no-op

Key/query normalisation (``key_norm``):
    ``"l2"``: per-token L2 normalisation of keys and queries (the public reference code; causal).
    ``"seqmax"``: keys and queries divided by one scalar per (sequence, head), the largest key norm.
        In ``forward`` that maximum is over the whole sequence, as the paper describes: it looks at the
        future, so it is not causal. ``step`` can only use the running maximum, so ``step`` and
        ``forward`` differ for ``"seqmax"``; the state keeps the running maximum in ``key_scale``.

Training (``mode="chunk"``) and decoding (``step``, always token-causal) read slightly different
operators: in chunk mode a query sees the statistics of earlier chunks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_positive, check_tensor
from ..backends import backends_of, resolve_backend, triton_op
from ..errors import BadArgumentError
from .reference import SKAState, ska_chunked, ska_recurrent

__all__ = ["SpectralKoopmanAttention"]


class SpectralKoopmanAttention(nn.Module):
    """Spectral Koopman Attention: attention without a KV cache, from O(r^2) sufficient statistics.

    Args:
        d_model: model width d.
        n_heads: SKA heads H.
        rank: r, the key/query width per head.
        head_dim: P, the value width per head (default ``d_model // n_heads``).
        power_steps: K, the power-filter order (K = 0: causal ridge regression, the mesa layer).
        eps: ridge strength of ``G = eps*I + ...``.
        key_norm: ``"l2"`` (default) or ``"seqmax"`` (the paper's, non-causal); see the module doc.
        write_gate: learn ``beta_t`` (else every token writes with weight 1).
        spectral_norm: scale the operator by ``gamma / max(1, sigma_max(A_w))`` per head.
        gamma_range, gamma_init: the learned gamma is clamped to this range (reference code: [0.5, 1.5], 0.7).
        eta_init: initial learned output scale eta (per head).
        spectral_iters: power iterations for sigma_max (paper: 6).
        mode: ``"chunk"`` (training form, default) or ``"token"`` for ``forward``; ``step`` is always token-causal.
        chunk_size: S for ``mode="chunk"``.
        backend: ``"auto"``, ``"reference"`` or ``"triton"`` (falls back, warning once, where Triton cannot run).

    Shapes: ``forward(x [B, T, d], state=None, mask=None [B, T]) -> (y [B, T, d], SKAState)``;
    ``step(x_t [B, d], state) -> (y_t [B, d], SKAState)``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        rank: int,
        head_dim: int | None = None,
        power_steps: int = 2,
        eps: float = 1e-3,
        key_norm: str = "l2",
        write_gate: bool = True,
        spectral_norm: bool = True,
        gamma_range: tuple[float, float] = (0.5, 1.5),
        gamma_init: float = 0.7,
        eta_init: float = 1.5,
        spectral_iters: int = 6,
        mode: str = "chunk",
        chunk_size: int = 64,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_int("d_model", d_model, min_value=1)
        check_int("n_heads", n_heads, min_value=1)
        check_int("rank", rank, min_value=1)
        if head_dim is None:
            if d_model % n_heads:
                raise BadArgumentError(f"head_dim: d_model={d_model} is not divisible by n_heads={n_heads}; pass head_dim")
            head_dim = d_model // n_heads
        check_int("head_dim", head_dim, min_value=1)
        check_int("power_steps", power_steps, min_value=0)
        check_positive("eps", eps)
        check_choice("key_norm", key_norm, ("l2", "seqmax"))
        check_choice("mode", mode, ("chunk", "token"))
        check_int("chunk_size", chunk_size, min_value=1)
        check_int("spectral_iters", spectral_iters, min_value=1)
        check_choice("backend", backend, backends_of("ska"))
        lo, hi = gamma_range
        if not (0 < lo <= hi):
            raise BadArgumentError(f"gamma_range must be (lo, hi) with 0 < lo <= hi, got {gamma_range}")
        self.d_model, self.n_heads, self.rank, self.head_dim = d_model, n_heads, rank, head_dim
        self.power_steps, self.eps, self.key_norm = power_steps, eps, key_norm
        self.spectral_norm, self.gamma_range, self.spectral_iters = spectral_norm, (float(lo), float(hi)), spectral_iters
        self.mode, self.chunk_size, self.backend = mode, chunk_size, backend
        self.last_backend: str | None = None

        H, r, P = n_heads, rank, head_dim
        self.w_q = nn.Linear(d_model, H * r, bias=False)
        self.w_k = nn.Linear(d_model, H * r, bias=False)
        self.w_v = nn.Linear(d_model, H * P, bias=False)
        self.w_o = nn.Linear(H * P, d_model, bias=False)
        self.gate = nn.Linear(d_model, H) if write_gate else None
        self.gamma = nn.Parameter(torch.full((H,), float(gamma_init)))
        self.eta = nn.Parameter(torch.full((H,), float(eta_init)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.w_q.weight)
        nn.init.orthogonal_(self.w_k.weight)
        nn.init.xavier_uniform_(self.w_v.weight)
        nn.init.zeros_(self.w_o.weight)  # a fresh SKA layer adds nothing to the residual stream
        if self.gate is not None:
            nn.init.zeros_(self.gate.weight)  # beta starts at sigmoid(0) = 0.5
            nn.init.zeros_(self.gate.bias)

    # ---------------------------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> SKAState:
        """A fresh state for ``batch`` sequences: float32 statistics unless ``dtype`` says otherwise (the
        ridge solve wants float32; a lower precision is the caller's choice)."""
        device = device if device is not None else self.w_k.weight.device
        dtype = dtype or torch.float32
        st = SKAState.zeros(batch, self.n_heads, self.rank, self.head_dim, eps=self.eps, dtype=dtype, device=device)
        if self.key_norm == "seqmax":
            st.key_scale = torch.zeros(batch, self.n_heads, dtype=dtype, device=device)
        return st

    def state_nbytes(self, batch: int = 1, context: int = 0) -> int:
        """Bytes of the inference state for ``batch`` sequences: ``(2r^2 + P r + r) H * 4`` each (+ H*4
        for ``key_norm="seqmax"``), whatever the ``context`` read (the argument is the interface's)."""
        return self.init_state(batch, device="meta").nbytes

    def _gamma(self) -> torch.Tensor:
        return self.gamma.clamp(*self.gamma_range)

    def _project(self, x: torch.Tensor):
        """x [B, T, d] -> q, k [B, T, H, r], v [B, T, H, P], beta [B, T, H] | None.

        Statistics are float32 whatever the input dtype (float64 inputs stay float64, for tests)."""
        B, T, _ = x.shape
        H, r, P = self.n_heads, self.rank, self.head_dim
        sd = torch.float64 if x.dtype == torch.float64 else torch.float32
        q = self.w_q(x).view(B, T, H, r).to(sd)
        k = self.w_k(x).view(B, T, H, r).to(sd)
        v = self.w_v(x).view(B, T, H, P).to(sd)
        beta = torch.sigmoid(self.gate(x).to(sd)) if self.gate is not None else None  # [B, T, H]
        return q, k, v, beta

    def project(self, x: torch.Tensor, state: SKAState | None = None, causal: bool = False):
        """The per-head queries, keys, values and write gate of ``x``, as :meth:`forward` reads them.

        x ``[B, T, d]`` -> q, k ``[B, T, H, r]`` (normalised by ``key_norm``; ``causal`` uses the running
        maximum of ``"seqmax"`` as :meth:`step` does), v ``[B, T, H, P]``, beta ``[B, T, H]`` or None."""
        check_tensor("x", x, 3, layout="[B, T, d_model]")
        if state is None:
            state = self.init_state(x.shape[0], device=x.device)
        q, k, v, beta = self._project(x)
        q, k, _ = self._normalise(q, k, state, causal)
        return q, k, v, beta

    def _normalise(self, q, k, state: SKAState, causal: bool):
        if self.key_norm == "l2":
            return F.normalize(q, dim=-1), F.normalize(k, dim=-1), None
        norms = k.norm(dim=-1)  # [B, T, H]
        if causal:  # running maximum (step)
            scale = torch.maximum(state.key_scale[:, None], norms.cummax(dim=1).values)
        else:  # the paper's: the largest key norm of the whole sequence (looks ahead)
            scale = torch.maximum(state.key_scale, norms.amax(dim=1))[:, None].expand_as(norms)
        scale = scale.clamp_min(1e-6)[..., None].detach()
        return q / scale, k / scale, scale[:, -1, :, 0]

    def _ska_kwargs(self, mode: str) -> dict:
        return dict(power_steps=self.power_steps, eps=self.eps, eta=self.eta, gamma=self._gamma(),
                    spectral_norm=self.spectral_norm, spectral_iters=self.spectral_iters,
                    mode=mode, chunk_size=self.chunk_size)

    def forward(
        self, x: torch.Tensor, state: SKAState | None = None, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, SKAState]:
        """Mix a sequence.

        Args:
            x: ``[B, T, d_model]``.
            state: an ``SKAState`` to continue from (``init_state``), or None.
            mask: ``[B, T]`` prefix/action weights ``w_t`` (1 = write to the statistics, 0 = read only).
        Returns:
            y ``[B, T, d_model]`` in x's dtype, and the state after the last token.
        """
        check_tensor("x", x, 3, layout="[B, T, d_model]")
        B, T, d = x.shape
        if d != self.d_model:
            raise BadArgumentError(f"x must have last dim d_model={self.d_model}, got shape {tuple(x.shape)}")
        weights = None
        if mask is not None:
            check_tensor("mask", mask, 2, layout="[B, T]", floating=False)
            if tuple(mask.shape) != (B, T):
                raise BadArgumentError(f"mask must have shape [B, T] = {(B, T)}, got {tuple(mask.shape)}")
            weights = mask.float()[..., None].expand(B, T, self.n_heads)
        if state is None:
            state = self.init_state(B, device=x.device)
        q, k, v, beta = self._project(x)
        q, k, key_scale = self._normalise(q, k, state, causal=False)
        self.last_backend = resolve_backend(self.backend, "ska", x.device)
        fn = triton_op("ska") if self.last_backend == "triton" else ska_chunked
        y, new_state = fn(q, k, v, beta, weights=weights, state=state, **self._ska_kwargs(self.mode))
        new_state.key_scale = key_scale
        return self.w_o(y.reshape(B, T, -1).to(x.dtype)), new_state

    def step(self, x_t: torch.Tensor, state: SKAState) -> tuple[torch.Tensor, SKAState]:
        """Decode one token (always token-causal): ``x_t [B, d_model] -> y_t [B, d_model]``."""
        check_tensor("x_t", x_t, 2, layout="[B, d_model]")
        if x_t.shape[-1] != self.d_model:
            raise BadArgumentError(f"x_t must have last dim d_model={self.d_model}, got shape {tuple(x_t.shape)}")
        if not isinstance(state, SKAState):
            raise BadArgumentError(f"state must be an SKAState (from init_state), got {type(state).__name__}")
        x = x_t[:, None]
        q, k, v, beta = self._project(x)
        q, k, key_scale = self._normalise(q, k, state, causal=True)
        self.last_backend = resolve_backend(self.backend, "ska", x.device)
        decode = triton_op("ska", "decode") if self.last_backend == "triton" else None
        if decode is not None:  # rank-1 updates + readout in one kernel; G^-1 rides along in the state
            kw = self._ska_kwargs("token")
            y, new_state, g_inv = decode(q, k, v, beta, state, state.G_inv, power_steps=kw["power_steps"],
                                         eta=kw["eta"], gamma=kw["gamma"], spectral_norm=kw["spectral_norm"],
                                         spectral_iters=kw["spectral_iters"])
            new_state.G_inv = g_inv
        else:
            self.last_backend = "reference"
            y, new_state = ska_recurrent(q, k, v, beta, state=state, **self._ska_kwargs("token"))
        new_state.key_scale = key_scale
        return self.w_o(y.reshape(x.shape[0], -1).to(x_t.dtype)), new_state

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, rank={self.rank}, head_dim={self.head_dim}, "
                f"K={self.power_steps}, eps={self.eps}, key_norm={self.key_norm!r}, mode={self.mode!r}, "
                f"chunk_size={self.chunk_size}")
