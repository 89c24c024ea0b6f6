"""The experiment drivers end to end, on tiny models and a couple of steps (the real runs are the CLI's)."""

import json

import pytest

from echo_tutor.experiments import ablation, transfer, transfer_task

TINY = dict(d_model=32, n_heads=4, d_state=8, ska_rank=6)


def test_transfer_writes_both_tables(tmp_path):
    out = transfer(fast=True, out_dir=tmp_path, presets=["ssm", "echo"], tasks=["niah", "tool_trace"], seconds=None,
                   steps=2, niah_lengths=[64, 128], progress=False, model_overrides=TINY,
                   eval_examples=16)
    assert {(r["task"], r["preset"]) for r in out["table"]} == {(t, p) for t in ("niah", "tool_trace") for p in ("ssm", "echo")}
    assert all(r["paper_acc"] is not None and 0 <= r["acc"] <= 1 for r in out["table"])
    assert [(r["preset"], r["length"]) for r in out["niah_length"]] == [("ssm", 64), ("ssm", 128), ("echo", 64), ("echo", 128)]
    assert {r["preset"] for r in out["tool_trace_overwrites"]} == {"ssm", "echo"}
    assert json.loads((tmp_path / "transfer.json").read_text())["table"] == out["table"]


def test_ablation_table(tmp_path):
    cfgs = [("K=0", 0, True, False), ("K=2, prefix mask", 2, True, True)]
    recs = ablation(fast=True, out_dir=tmp_path, seeds=2, steps=2, configs=cfgs, tasks=["mqar_gap"], progress=False,
                    model_overrides=TINY)
    assert len(recs) == 4 and {r["config"] for r in recs} == {"K=0", "K=2, prefix mask"}
    table = (tmp_path / "ablation.md").read_text()
    assert "| K=0 |" in table and "±" in table


def test_transfer_task_names():
    for name in ("mqar", "system_prompt", "tool_trace", "niah", "multi_hop", "common_word"):
        x, y = transfer_task(name).sample(2, 0)
        assert x.shape == y.shape
    with pytest.raises(ValueError, match="transfer tasks"):
        transfer_task("sorting")
