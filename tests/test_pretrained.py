"""The shipped checkpoints and results files the labs rely on."""

import pytest
import torch

import echo_tutor
from echo_tutor.experiments import CLIFF_PRESETS, cliff
from echo_tutor.models import build, count_parameters
from echo_tutor.pretrained import HERE, available, info, results


def test_every_cliff_preset_is_shipped_small_and_documented():
    assert set(CLIFF_PRESETS) <= set(available())
    total = sum(p.stat().st_size for p in HERE.glob("*.pt"))
    assert total <= 10 * 2**20, f"shipped checkpoints take {total / 2**20:.1f} MiB (limit 10)"
    for name in CLIFF_PRESETS + ["ssm+ridge", "echo-k2"]:
        meta = info(name)
        # 15 minutes of an idle core; runs that shared the 2 cores with others took longer (docs/results.md)
        assert meta["preset"] == name and meta["steps"] > 0 and meta["time_s"] <= 30 * 60
        assert meta["argv"][0] in ("train", "ablate") and "--scale" in meta["argv"]
    for name in ("echo-r64", "echo-ft"):  # grown / fine-tuned from echo by scripts/train_grown.py
        meta = info(name)
        assert meta["preset"] == name and meta["steps"] > 0 and meta["argv"][0] == "scripts/train_grown.py"


@pytest.mark.parametrize("name", CLIFF_PRESETS + ["ssm+ridge", "echo-k2", "echo-r64", "echo-ft"])
def test_shipped_lab_models_are_the_lab_presets(name):
    m = echo_tutor.pretrained(name)
    assert not m.training and next(m.parameters()).dtype == torch.float32
    want = build("echo" if name == "echo-ft" else name, scale="lab")
    same = ("vocab_size", "d_model", "layout", "n_heads", "d_state", "ska_rank", "mlp_hidden", "tie_embeddings")
    assert {k: m.config[k] for k in same} == {k: want.config[k] for k in same}
    assert count_parameters(m) == count_parameters(want)
    got_mixer, want_mixer = m.blocks[1].mixer, want.blocks[1].mixer
    for attr in ("power_steps", "rank", "eps", "window", "rope"):
        assert getattr(got_mixer, attr, None) == getattr(want_mixer, attr, None), (name, attr)
    logits, _ = m(torch.randint(0, 128, (1, 20)))
    assert logits.shape == (1, 20, 128)


def test_paper_size_echo_for_lab_04():
    m = echo_tutor.pretrained("echo-d128")
    assert count_parameters(m) == 981_488 and m.layout == ["mamba2", "mamba2", "ska", "ska"]


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="name must be one of the shipped models"):
        echo_tutor.pretrained("gpt")
    with pytest.raises(ValueError, match="kind: no shipped results_nope.json"):
        results("nope")


@pytest.mark.parametrize("kind", ["cliff", "transfer", "ablation", "kpower"])
def test_results_files_are_shipped(kind):
    assert results(kind)


def test_cliff_driver_on_one_cell(tmp_path):
    recs = cliff(fast=True, out_dir=tmp_path, examples=4, presets=["echo", "ssm+swa"], pairs=[2], gaps=[8, 300], progress=False)
    assert [(r["preset"], r["pairs"], r["gap"]) for r in recs] == [("echo", 2, 8), ("echo", 2, 300), ("ssm+swa", 2, 8), ("ssm+swa", 2, 300)]
    assert all(0 <= r["acc"] <= 1 and r["state_bytes"] > 0 for r in recs)
    assert all(r["acc"] + r["bound_wrong"] + r["other_wrong"] == pytest.approx(1) for r in recs)
    # SKA's state is the same after 12 and 308 tokens; the window's cache is capped at 256 tokens
    assert recs[0]["state_bytes"] == recs[1]["state_bytes"] and recs[2]["state_bytes"] < recs[3]["state_bytes"]
    assert (tmp_path / "cliff.json").exists() and (tmp_path / "cliff.html").exists()
