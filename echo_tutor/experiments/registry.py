"""Every named recipe of every experiment, in one table: ``RECIPES["transfer/lab"]``."""

from __future__ import annotations

from typing import Any

from . import ablation, cliff, convert, echokv, passkey, ssm_cliff, transfer

__all__ = ["RECIPES", "EXPERIMENTS"]

EXPERIMENTS = {"cliff": cliff, "transfer": transfer, "ablation": ablation, "echokv": echokv, "convert": convert,
               "ssm_cliff": ssm_cliff, "passkey": passkey}  # name -> module
RECIPES: dict[str, Any] = {name: r for mod in EXPERIMENTS.values() for name, r in mod.RECIPES.items()}
