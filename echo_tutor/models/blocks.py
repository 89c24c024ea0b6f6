"""The pieces of one block: RMSNorm, the SwiGLU MLP, and ``x += mixer(norm(x)); x += mlp(norm(x))``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["RMSNorm", "SwiGLU", "Block"]


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight



class SwiGLU(nn.Module):
    """``W_down(silu(W_gate x) * W_up x)``."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(g) * u)



class Block(nn.Module):
    def __init__(self, mixer: nn.Module, d_model: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1, self.mixer = RMSNorm(d_model), mixer
        self.norm2, self.mlp = RMSNorm(d_model), SwiGLU(d_model, mlp_hidden)

    def forward(self, x, state=None, mask=None):
        h = self.norm1(x)
        y, state = self.mixer(h, state, mask=mask)  # every mixer takes mask (models.mixer.Mixer)
        x = x + y
        return x + self.mlp(self.norm2(x)), state

    def step(self, x_t, state):
        y, state = self.mixer.step(self.norm1(x_t), state)
        x_t = x_t + y
        return x_t + self.mlp(self.norm2(x_t)), state

