"""Checkpoints: ``load`` what ``HybridLM.save`` wrote, ``rebuilt`` (the same weights in a model built with other
mixer settings) and ``grow_ska_rank`` to warm-start a larger r."""

from __future__ import annotations

import pathlib

import torch

from .._checks import check_int
from ..errors import BadArgumentError
from ..ska import SpectralKoopmanAttention
from .config import HybridConfig
from .hybrid import CHECKPOINT_FORMAT, HybridLM

__all__ = ["load", "rebuilt", "grow_ska_rank"]


def load(path: str | pathlib.Path, map_location: str | torch.device = "cpu") -> HybridLM:
    """Load a model saved with ``HybridLM.save``.

    Raises ``ValueError`` (one line, naming ``path``) for a missing file, a file torch cannot read (text,
    a truncated download), a torch file that is not a HybridLM checkpoint, or one whose weights do not
    fit its recorded config."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadArgumentError(f"path: {path} is not a file (expected a HybridLM checkpoint saved by HybridLM.save)")
    try:
        blob = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadArgumentError(f"path: {path} is not a readable torch checkpoint ({type(e).__name__}: {first[:120]})") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise BadArgumentError(f"path: {path} is not an echo_tutor HybridLM checkpoint (no 'format': 'echo_tutor.HybridLM/1')")
    try:
        model = HybridLM(HybridConfig(**blob["config"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    except (KeyError, TypeError, RuntimeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BadArgumentError(f"path: {path} is a damaged HybridLM checkpoint ({type(e).__name__}: {first[:120]})") from None
    return model.eval()



@torch.no_grad()
def rebuilt(model: HybridLM, mixer_kwargs: dict[str, dict]) -> HybridLM:
    """A new ``HybridLM`` built from ``model``'s config with ``mixer_kwargs`` merged per mixer (e.g.
    ``{"ska": {"mode": "token"}}``: SKA read token by token, as ``step`` decodes) and ``model``'s weights, on its
    device, in eval mode. For settings that change how a mixer computes, not its parameters; ``model`` is left
    as it is (rather than setting attributes on its live modules)."""
    if not isinstance(model, HybridLM):
        raise BadArgumentError(f"model must be a HybridLM, got {type(model).__name__}")
    if not isinstance(mixer_kwargs, dict) or not all(isinstance(v, dict) for v in mixer_kwargs.values()):
        raise BadArgumentError(f"mixer_kwargs must map mixer names to dicts of settings, got {mixer_kwargs!r}")
    cfg = model.config.to_dict()
    for name, kw in mixer_kwargs.items():
        cfg["mixer_kwargs"].setdefault(name, {}).update(kw)
    new = HybridLM(HybridConfig(**cfg))
    new.load_state_dict(model.state_dict())
    device = next(model.parameters()).device
    return new.to(device).eval()


def grow_ska_rank(model: HybridLM, rank: int, noise: float = 1e-2, seed: int = 0) -> HybridLM:
    """A copy of ``model`` whose SKA mixers have rank ``rank`` (> their current r), for warm-starting a
    larger-r model from a trained smaller one.

    Each head's query and key projections ``[r, d]`` keep their trained rows and get ``rank - r`` new rows
    drawn from ``N(0, noise^2 / d)``; every other weight is copied. With ``noise=0`` the new key
    coordinates are zero, so ``G``, ``M`` and ``C`` are block-diagonal with the old statistics in one block
    and the grown model computes exactly what ``model`` does (the spectral norm and the power filter see the
    same operator); small noise lets training start using the new directions. The statistics grow from
    ``O(r^2)`` to ``O(rank^2)`` per head.

    Raises ``ValueError`` if ``model`` has no SKA mixer or ``rank`` is not larger than every SKA mixer's."""
    if not isinstance(model, HybridLM):
        raise BadArgumentError(f"model must be a HybridLM, got {type(model).__name__}")
    check_int("rank", rank, min_value=1)
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise BadArgumentError(f"noise must be a number >= 0, got {noise!r}")
    skas = [b.mixer for b in model.blocks if isinstance(b.mixer, SpectralKoopmanAttention)]
    if not skas:
        raise BadArgumentError(f"model has no SKA mixer (layout {model.config.layout!r}); nothing to grow")
    old = {m.rank for m in skas}
    if rank <= max(old):
        raise BadArgumentError(f"rank must be larger than the SKA rank(s) {sorted(old)} of model, got {rank}")
    ska = model.config.mixer_overrides("ska")
    new = HybridLM(model.config.replace(ska_rank=rank, mixer_kwargs={**model.config.to_dict()["mixer_kwargs"], "ska": ska}))
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(seed)
    for name, t in new.state_dict().items():
        src = sd[name]
        if src.shape == t.shape:
            t.copy_(src)
            continue
        # an SKA w_q / w_k: [H * r, d] -> [H * rank, d], per head
        mixer = new.get_submodule(name.rsplit(".", 2)[0])
        H, d = mixer.n_heads, t.shape[1]
        r = src.shape[0] // H
        grown = torch.randn(H, rank, d, generator=gen) * (noise / d ** 0.5)
        grown[:, :r] = src.view(H, r, d)
        t.copy_(grown.view(H * rank, d))
    return new.train(model.training)

