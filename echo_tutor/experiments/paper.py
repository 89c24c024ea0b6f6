"""The Echo paper's numbers, keyed by the names our presets and tasks use (Sridhar & Johansen 2026, arXiv
2605.06997): what the labs and the experiment summaries print beside our measurements."""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER", "paper_acc"]

_PRESETS = ("ssm", "ssm+attn", "echo")  # the paper's SSM / SSM+Attn / SSM+SKA


def _by_preset(*values: float) -> dict[str, float]:
    return dict(zip(_PRESETS, values))


PAPER: dict[str, Any] = {
    # MQAR at 50M parameters, each (pairs, gap) cell trained separately
    "mqar_50M": {"ssm": "~3% everywhere", "ssm+attn": "100% except the largest gap at 4 pairs",
                 "echo": "100% everywhere"},
    # sub-million models, mean accuracy (%)
    "transfer_mean_acc": {
        "mqar": _by_preset(55.1, 76.0, 82.2), "system_prompt": _by_preset(64.2, 81.3, 85.3),
        "tool_trace": _by_preset(56.5, 76.2, 80.5), "niah": _by_preset(52.0, 81.1, 84.2),
        "multi_hop": _by_preset(39.3, 71.1, 76.7), "common_word": _by_preset(52.9, 68.2, 74.1),
    },
    # NIAH length generalisation (%), one needle, trained at length 64
    "niah_length": {
        64: _by_preset(88.6, 88.5, 94.5), 128: _by_preset(82.1, 97.4, 89.4), 256: _by_preset(75.8, 92.9, 93.3),
        512: _by_preset(66.9, 78.1, 95.6), 1024: _by_preset(37.3, 64.8, 86.4), 2048: _by_preset(2.0, 42.5, 81.2),
        4096: _by_preset(2.0, 5.0, 65.1),
    },
}


def paper_acc(table: str, key: Any, preset: str) -> float | None:
    """The paper's accuracy (%) for ``preset`` (a lab-scale name or its ``paper-`` twin) in
    ``PAPER[table][key]``, or None where the paper has none."""
    return PAPER.get(table, {}).get(key, {}).get(preset.removeprefix("synth1m-"))
