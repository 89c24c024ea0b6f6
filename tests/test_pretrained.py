"""The shipped checkpoints and results files the labs rely on."""

import pytest
import torch

import echo_tutor
from echo_tutor.experiments import CLIFF_PRESETS, cliff
from echo_tutor.models import count_parameters
from echo_tutor.pretrained import HERE, available, info, results


def test_every_cliff_preset_is_shipped_small_and_documented():
    assert set(CLIFF_PRESETS) <= set(available())
    total = sum(p.stat().st_size for p in HERE.glob("*.pt"))
    assert total <= 10 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MiB (limit 10)"
    for name in CLIFF_PRESETS:
        meta = info(name)
        assert meta["preset"] == name and meta["steps"] > 0 and meta["time_s"] <= 15 * 60 + 60
        assert meta["argv"][0] == "train" and "--minutes" in meta["argv"]


def test_pretrained_loads_a_float32_model():
    m = echo_tutor.pretrained("echo")
    assert not m.training and next(m.parameters()).dtype == torch.float32
    assert count_parameters(m) == 981_488
    logits, _ = m(torch.randint(0, 128, (1, 20)))
    assert logits.shape == (1, 20, 128)


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="name must be one of the shipped models"):
        echo_tutor.pretrained("gpt")
    with pytest.raises(ValueError, match="kind: no shipped results_nope.json"):
        results("nope")


@pytest.mark.parametrize("kind", ["cliff", "transfer", "ablation"])
def test_results_files_are_shipped(kind):
    assert results(kind)


def test_cliff_driver_on_one_cell(tmp_path):
    recs = cliff(fast=True, out_dir=tmp_path, examples=4, presets=["echo", "ssm"], pairs=[2], gaps=[8], progress=False)
    assert [(r["preset"], r["pairs"], r["gap"]) for r in recs] == [("echo", 2, 8), ("ssm", 2, 8)]
    assert all(0 <= r["acc"] <= 1 and r["state_bytes"] > 0 for r in recs)
    assert (tmp_path / "cliff.json").exists() and (tmp_path / "cliff.html").exists()
