"""How the EchoKV-lite study's methods are shown: one legend name and colour per family of methods
(``METHOD_FAMILIES``, lab 06 and the README figure) and the perplexity table at one ratio. The study itself is
``echo_tutor.experiments.echokv`` (``echo-tutor echokv``).
"""

from __future__ import annotations

from ..errors import BadArgumentError

__all__ = ["METHOD_FAMILIES", "method_family", "format_table"]

# The families of methods in a study's results, for plotting: (substring of the method names, legend name,
# colour); the first match wins. One colour per family in lab 06 and the README figure.
METHOD_FAMILIES: list[tuple[str, str, str]] = [
    ("stage 2", "EchoKV-lite stage 2 (greedy)", "#d62728"),
    ("window 1, equal K/V", "EchoKV-lite ridge, layer window 1, equal K/V", "#c49c94"),
    ("window 2, equal K/V", "EchoKV-lite ridge, layer window 2, equal K/V", "#e377c2"),
    ("ridge, greedy @", "EchoKV-lite ridge, greedy slots", "#1f77b4"),
    ("ridge, fixed @", "EchoKV-lite ridge, fixed slot pattern", "#17becf"),
    ("ridge, random @", "EchoKV-lite ridge, random slots", "#9467bd"),
    ("random-drop", "random slot dropping (mean fill)", "#7f7f7f"),
    ("per-head SVD", "per-head SVD (Palu-like)", "#bcbd22"),
    ("cross-layer SVD", "cross-layer SVD (xKV-like)", "#8c564b"),
    ("KIVI", "KIVI quantisation (2 / 4 / 8 bits)", "#ff7f0e"),
    ("StreamingLLM", "StreamingLLM (4 sinks + recent)", "#2ca02c"),
    ("full", "full cache", "#000000"),
]


def method_family(name: str) -> tuple[str, str, str]:
    """The ``METHOD_FAMILIES`` entry ``(substring, legend name, colour)`` of the method ``name``.

    Raises ``ValueError`` for a method no family matches (add it to ``METHOD_FAMILIES``)."""
    fam = next((f for f in METHOD_FAMILIES if f[0] in name), None)
    if fam is None:
        raise BadArgumentError(f"name: no family (legend name, colour) for method {name!r}; add it to METHOD_FAMILIES")
    return fam


def format_table(result: dict, ratio: float = 0.5) -> str:
    """Markdown table of perplexity at ``ratio`` (methods tagged @ratio, plus untagged ones)."""
    rows = []
    for name, r in result["perplexity"].items():
        tag = name.rsplit("@", 1)
        if len(tag) == 2 and abs(float(tag[1]) - ratio) > 1e-9:
            continue
        rows.append((name, r))
    lines = ["| method | bytes kept | perplexity | change |", "|---|---|---|---|"]
    for name, r in sorted(rows, key=lambda x: x[1]["ppl"]):
        lines.append(f"| {name} | {r['fraction']:.3f} | {r['ppl']:.3f} | {r['delta_ppl']:+.3f} |")
    return "\n".join(lines)
