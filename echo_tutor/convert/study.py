"""The conversion study's building blocks in one place (``from echo_tutor.convert.study import fit_layer``, as
lab 08 does), and the shipped stage-1 mixers: :func:`pack_mixers` packs a run's mixers into the file shipped with
the package, :func:`shipped_mixers` loads them. The study itself is ``echo_tutor.experiments.convert``
(``echo-tutor convert``).
"""

from __future__ import annotations

import functools
import pathlib

import torch

from ..errors import BadArgumentError
from ..pretrained import results
from ..pretrained.store import HERE
from .layers import (
    capture_inputs,
    causal_mask,
    converted,
    fit_layer,
    kv_bytes,
    layer_inputs,
    load_mixer,
    mixer_bytes,
    mixer_params,
    new_mixer,
    original_attention,
    relative_error,
    state_bytes,
)
from .cache import ConvertedCache
from .mixer import ConvertedAttention
from .probe import greedy, needle_probe, needle_prompt, window_nll
from .spec import base_variant, parse_variant

# the study's building blocks are re-exported here: `from echo_tutor.convert.study import fit_layer` etc.
__all__ = [
    "SHIPPED_MIXERS", "ConvertedCache", "capture_inputs", "causal_mask", "converted", "fit_layer", "greedy", "kv_bytes", "layer_inputs",
    "load_mixer", "mixer_bytes", "mixer_params", "needle_probe", "needle_prompt", "new_mixer", "original_attention",
    "pack_mixers", "parse_variant", "relative_error", "shipped_mixers", "state_bytes", "window_nll",
]


# --------------------------------------------------------------------------------------------------
# The shipped study
# --------------------------------------------------------------------------------------------------
SHIPPED_MIXERS = "convert_mixers.pt"


def pack_mixers(out_dir: str | pathlib.Path, dest: str | pathlib.Path, variants: list[str]) -> int:
    """Pack the stage-1 mixers of ``variants`` from ``<out_dir>/mixers`` into one float16 file ``dest``
    (``{variant: {layer: params}}``); returns its size in bytes."""
    packed: dict[str, dict[int, dict]] = {}
    for v in variants:
        files = sorted(pathlib.Path(out_dir, "mixers").glob(f"{v.replace('+', '_').replace(':', '_')}_L*.pt"))
        if not files:
            raise BadArgumentError(f"variants: no mixers of {v!r} under {out_dir}/mixers")
        packed[v] = {int(f.stem.rsplit("_L", 1)[1]): torch.load(f) for f in files}
    torch.save(packed, dest)
    return pathlib.Path(dest).stat().st_size


def shipped_mixers(model, variant: str, layers: list[int], config: dict | None = None) -> dict[int, ConvertedAttention]:
    """The shipped stage-1 mixers of ``variant`` at ``layers`` (from ``echo_tutor/pretrained``), ready for
    :func:`converted` (``"window"``, ``"window:W80"``: the window alone, which has no parameters). ``config`` is the shipped study's config (default: ``results("convert")["config"]``)."""

    cfg = config or results("convert")["config"]
    packed = {**_packed(), "window": {}}  # the window alone has no parameters
    trained = base_variant(variant)  # a sparse cache (":S16") or another window (":W80") changes no parameter
    if trained not in packed:
        raise BadArgumentError(f"variant: no shipped mixers of {trained!r} (have {sorted(packed)})")
    spec = parse_variant(variant, **{"window": cfg["window"], "sinks": cfg.get("sinks", 4), "rank": cfg["rank"],
                                     "eps": cfg["eps"]})
    return {i: load_mixer(model, i, spec, packed[trained][i] if trained != "window" else {}) for i in layers}


@functools.lru_cache(maxsize=1)
def _packed() -> dict:
    """The shipped mixers' file, read once per process (every pass-key cell loads some)."""
    return torch.load(HERE / SHIPPED_MIXERS)
