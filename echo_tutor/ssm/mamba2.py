"""A Mamba-2 mixer in pure PyTorch (Dao & Gu 2024), readable next to the paper.

Per token, with ``d_inner = expand * d_model`` split into ``H = d_inner / headdim`` heads:

    [z, xBC, dt] = in_proj(u)                       z, x: d_inner; B, C: ngroups*N; dt: H
    xBC = silu(causal depthwise conv_{d_conv}(xBC))  the short convolution (kernel 4)
    dt  = softplus(dt + dt_bias);  A = -exp(A_log)   per head
    y   = SSD(x * dt, A * dt, B, C) + D * x          the selective state-space scan (``ssd.py``)
    out = out_proj(RMSNorm(y * silu(z)))             gated RMSNorm (norm after the gate)

Inference state: the last ``d_conv - 1`` conv inputs and the SSM state ``[B, H, P, N]``: constant in T.
``backend="mamba_ssm"`` (or ``"auto"`` on CUDA) runs mamba-ssm's fused scan when it is installed; it is
never a dependency of this package (it needs a CUDA build of torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_int, check_tensor
from ..backends import backends_of, mamba_ssm_available, resolve_backend
from ..errors import BadArgumentError
from .ssd import ssd_chunked, ssd_recurrent

__all__ = ["Mamba2", "Mamba2State", "mamba_ssm_available"]  # the last from backends


@dataclass
class Mamba2State:
    """Decode state of one Mamba-2 mixer.

    conv: ``[B, conv_dim, d_conv - 1]`` the last conv inputs; ssm: ``[B, H, P, N]``."""

    conv: torch.Tensor
    ssm: torch.Tensor

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.ssm))


class RMSNormGated(nn.Module):
    """``RMSNorm(y * silu(z)) * weight`` (Mamba-2's norm with the gate applied first)."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y * F.silu(z)
        return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba2(nn.Module):
    """Mamba-2 mixer.

    Args:
        d_model: model width.
        d_state: N, the SSM state size per head.
        d_conv: width of the causal depthwise convolution.
        expand: ``d_inner = expand * d_model``.
        headdim: P; ``H = d_inner // headdim`` heads.
        ngroups: B/C groups shared by ``H // ngroups`` heads each.
        chunk_size: the SSD chunk length.
        A_init_range, dt_min, dt_max, dt_init_floor: Mamba-2's initialisation of A and dt.
        backend: ``"auto"`` (mamba-ssm on CUDA when installed, else the reference), ``"reference"``,
            or ``"mamba_ssm"`` (warns once and falls back where it cannot run).

    Shapes: ``forward(u [B, T, d_model], state=None) -> (y [B, T, d_model], Mamba2State)``;
    ``step(u_t [B, d_model], state) -> (y_t [B, d_model], Mamba2State)``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        A_init_range: tuple[float, float] = (1.0, 16.0),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, val in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                          ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):
            check_int(name, val, min_value=1)
        check_choice("backend", backend, backends_of("ssd"))
        d_inner = expand * d_model
        if d_inner % headdim:
            raise BadArgumentError(f"headdim={headdim} must divide d_inner = expand * d_model = {d_inner}")
        n_heads = d_inner // headdim
        if n_heads % ngroups:
            raise BadArgumentError(f"ngroups={ngroups} must divide the number of heads {n_heads}")
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise BadArgumentError(f"A_init_range must be (lo, hi) with 0 < lo <= hi, got {A_init_range}")
        self.d_model, self.d_state, self.d_conv, self.d_inner = d_model, d_state, d_conv, d_inner
        self.headdim, self.n_heads, self.ngroups, self.chunk_size, self.backend = headdim, n_heads, ngroups, chunk_size, backend
        self.conv_dim = d_inner + 2 * ngroups * d_state
        self.last_backend: str | None = None

        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + n_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, bias=True)
        # dt: log-uniform in [dt_min, dt_max], stored through the inverse softplus
        dt = torch.exp(torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = RMSNormGated(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    # ---------------------------------------------------------------------------------------------
    def init_state(self, batch: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Mamba2State:
        device = device if device is not None else self.in_proj.weight.device
        dtype = dtype or self.in_proj.weight.dtype
        return Mamba2State(
            conv=torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.n_heads, self.headdim, self.d_state, device=device, dtype=dtype),
        )

    def state_nbytes(self, batch: int = 1, context: int = 0) -> int:
        """Bytes of the conv and SSM state for ``batch`` sequences, whatever the ``context`` read."""
        return self.init_state(batch, device="meta").nbytes

    def _split(self, zxbcdt: torch.Tensor):
        d_in, gN = self.d_inner, self.ngroups * self.d_state
        return torch.split(zxbcdt, [d_in, d_in + 2 * gN, self.n_heads], dim=-1)  # z, xBC, dt

    def _split_heads(self, xBC: torch.Tensor, dt: torch.Tensor):
        """Split the conv output and expand the B/C groups to heads. xBC [B, T, conv_dim]."""
        Bn, T, _ = xBC.shape
        gN = self.ngroups * self.d_state
        x, Bm, Cm = torch.split(xBC, [self.d_inner, gN, gN], dim=-1)
        x = x.reshape(Bn, T, self.n_heads, self.headdim)
        rep = self.n_heads // self.ngroups
        Bm = Bm.reshape(Bn, T, self.ngroups, self.d_state).repeat_interleave(rep, dim=2)  # [B, T, H, N]
        Cm = Cm.reshape(Bn, T, self.ngroups, self.d_state).repeat_interleave(rep, dim=2)
        dt = F.softplus(dt + self.dt_bias)  # [B, T, H]
        A = -torch.exp(self.A_log.float())  # [H]
        return x, Bm, Cm, dt, A

    def forward(self, u: torch.Tensor, state: Mamba2State | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, Mamba2State]:
        """u ``[B, T, d_model]`` -> y ``[B, T, d_model]`` and the state after the last token. ``mask`` (SKA's
        write weights, part of the mixer interface ``models.mixer.Mixer``) is ignored: Mamba-2 has none."""
        check_tensor("u", u, 3, layout="[B, T, d_model]")
        Bn, T, d = u.shape
        if d != self.d_model:
            raise BadArgumentError(f"u must have last dim d_model={self.d_model}, got shape {tuple(u.shape)}")
        if state is None:
            state = self.init_state(Bn, device=u.device, dtype=u.dtype)
        z, xBC, dt = self._split(self.in_proj(u))
        # (1) causal depthwise conv, continuing from the cached inputs
        xBC_in = torch.cat([state.conv.transpose(1, 2).to(xBC.dtype), xBC], dim=1)  # [B, d_conv-1+T, conv_dim]
        conv = F.conv1d(xBC_in.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)
        new_conv = xBC_in[:, -(self.d_conv - 1):].transpose(1, 2) if self.d_conv > 1 else state.conv
        xBC = F.silu(conv.transpose(1, 2))  # [B, T, conv_dim]
        # (2) the selective scan
        x, Bm, Cm, dt, A = self._split_heads(xBC, dt)
        self.last_backend = resolve_backend(self.backend, "ssd", u.device)
        if self.last_backend == "mamba_ssm":  # pragma: no cover - needs CUDA + mamba-ssm
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            g = self.ngroups
            y, ssm = mamba_chunk_scan_combined(
                x, dt, A, Bm[:, :, :: self.n_heads // g].contiguous(), Cm[:, :, :: self.n_heads // g].contiguous(),
                self.chunk_size, D=None, initial_states=state.ssm.float(), return_final_states=True)
        else:
            y, ssm = ssd_chunked(x * dt[..., None], A * dt, Bm, Cm, self.chunk_size, initial_state=state.ssm.to(x.dtype))
        y = y + self.D[:, None] * x  # skip connection D x
        # (3) gate, norm, project
        y = self.norm(y.reshape(Bn, T, self.d_inner), z)
        return self.out_proj(y), Mamba2State(new_conv, ssm.to(state.ssm.dtype))

    def step(self, u_t: torch.Tensor, state: Mamba2State) -> tuple[torch.Tensor, Mamba2State]:
        """Decode one token from the conv and SSM state: u_t ``[B, d_model]`` -> y_t ``[B, d_model]``."""
        check_tensor("u_t", u_t, 2, layout="[B, d_model]")
        if u_t.shape[-1] != self.d_model:
            raise BadArgumentError(f"u_t must have last dim d_model={self.d_model}, got shape {tuple(u_t.shape)}")
        if not isinstance(state, Mamba2State):
            raise BadArgumentError(f"state must be a Mamba2State (from init_state), got {type(state).__name__}")
        z, xBC, dt = self._split(self.in_proj(u_t))
        window = torch.cat([state.conv, xBC[..., None]], dim=-1)  # [B, conv_dim, d_conv]
        xBC = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        x, Bm, Cm, dt, A = self._split_heads(xBC[:, None], dt[:, None])
        # one step of h_t = exp(A dt) h_{t-1} + (x dt) B^T ; y = h C
        y, ssm = ssd_recurrent(x * dt[..., None], A * dt, Bm, Cm, initial_state=state.ssm)
        y = y + self.D[:, None] * x
        y = self.norm(y.reshape(u_t.shape[0], 1, self.d_inner), z[:, None])[:, 0]
        self.last_backend = "reference"
        return self.out_proj(y), Mamba2State(window[..., 1:], ssm)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, heads={self.n_heads}x{self.headdim}, "
                f"d_state={self.d_state}, d_conv={self.d_conv}, ngroups={self.ngroups}, chunk_size={self.chunk_size}")
