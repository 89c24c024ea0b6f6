"""EchoKV-lite stage 1, part 3: fitting a reconstructor and scoring it.

* :func:`fit_reconstructor` -- select the slots (:mod:`echo_tutor.echokv.slots`) and fit every
  discarded slot's ridge map in closed form (:class:`~echo_tutor.echokv.reconstructor.Reconstructor`).
* :func:`train_mlp` -- stage 1b: the optional low-rank MLP branches, by MSE on captured slots.
* :func:`slot_errors` -- per-slot reconstruction error and cosine on a capture.

Stage 2 (distillation against the full cache) is :func:`echo_tutor.echokv.evaluate.distill`.
"""

from __future__ import annotations

import torch

from ..errors import BadArgumentError
from .capture import KVCapture
from .reconstructor import Reconstructor, ReconstructorSpec
from .slots import KINDS, SlotMoments, select_slots


def fit_reconstructor(
    capture: KVCapture,
    ratio: float = 0.5,
    *,
    method: str = "greedy",
    key_ratio: float | None = None,
    layer_window: int = 2,
    rank: int = 0,
    lam: float = 1e-3,
    seed: int = 0,
    kept: dict[str, list[int]] | None = None,
    moments: dict[str, SlotMoments] | None = None,
) -> Reconstructor:
    """Select slots (unless ``kept`` is given) and fit ridge reconstructors in closed form.

    ``layer_window``: a discarded slot is rebuilt from the kept slots of its kind within this many
    layers on each side (in layers, not tokens). ``rank > 0`` adds the low-rank MLP branch (starting at zero;
    train it with :func:`train_mlp` or stage 2, :func:`echo_tutor.echokv.distill`)."""
    L, H, W, T, D = capture.keys.shape
    if isinstance(layer_window, bool) or not isinstance(layer_window, int) or layer_window < 0:
        raise BadArgumentError(f"layer_window must be an int >= 0 (layers on each side), got {layer_window!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise BadArgumentError(f"rank must be an int >= 0, got {rank!r}")
    moments = moments or {k: SlotMoments(capture, k, lam=lam) for k in KINDS}
    if kept is None:
        kept = select_slots(capture, ratio, method=method, key_ratio=key_ratio, layer_window=layer_window, seed=seed,
                            moments=moments)
    spec = ReconstructorSpec(L, H, D, {k: sorted(v) for k, v in kept.items()}, layer_window, rank)
    return Reconstructor(spec).init_ridge(moments)


def train_mlp(rec: Reconstructor, capture: KVCapture, *, steps: int = 200, lr: float = 3e-3, batch: int = 1024, seed: int = 0) -> list[float]:
    """Stage 1b: fit the MLP branches by MSE on captured slots (pre-RoPE). Returns the loss curve."""
    params = [p for n, p in rec.named_parameters() if ".down." in n or ".up." in n]
    if not params:
        raise BadArgumentError("the reconstructor has no MLP branch: build it with rank > 0")
    X = {k: capture.slots(k) for k in KINDS}     # [S, N, D]
    N = X["K"].shape[1]
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, N, (min(batch, N),), generator=g)
        loss = 0.0
        for kind in KINDS:
            retained = {r: X[kind][r, idx] for r in rec.kept[kind]}
            for s in rec.spec.inputs[kind]:
                y = X[kind][s, idx]
                loss = loss + ((rec.rebuild(kind, s, retained) - y) ** 2).mean() / y.var().clamp_min(1e-8)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def slot_errors(rec: Reconstructor, capture: KVCapture) -> dict[str, dict[str, torch.Tensor]]:
    """Per-slot reconstruction quality on ``capture`` (pre-RoPE): for each kind, ``rel_err``
    (||y_hat - y|| / ||y|| over all tokens) and ``cosine`` (mean per-token), both [L, H];
    retained slots score 0 and 1."""
    L, H = rec.spec.n_layers, rec.spec.n_kv_heads
    out: dict[str, dict[str, torch.Tensor]] = {}
    for kind in KINDS:
        X = capture.slots(kind)
        rel = torch.zeros(L * H)
        cos = torch.ones(L * H)
        retained = {r: X[r] for r in rec.kept[kind]}
        for s in rec.spec.inputs[kind]:
            y = X[s]
            y_hat = rec.rebuild(kind, s, retained).expand_as(y)
            rel[s] = (y_hat - y).norm() / y.norm().clamp_min(1e-12)
            cos[s] = torch.nn.functional.cosine_similarity(y_hat, y, dim=-1).mean()
        out[kind] = {"rel_err": rel.view(L, H), "cosine": cos.view(L, H)}
    return out
