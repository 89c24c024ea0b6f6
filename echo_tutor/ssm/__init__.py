"""Mamba-2 in pure PyTorch: the SSD scan (a token loop and the chunked algorithm) and the mixer."""

from .mamba2 import Mamba2, Mamba2State, mamba_ssm_available
from .ssd import segsum, ssd_chunked, ssd_recurrent

__all__ = ["Mamba2", "Mamba2State", "mamba_ssm_available", "segsum", "ssd_chunked", "ssd_recurrent"]
