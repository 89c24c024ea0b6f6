"""The transfer experiment end to end, on tiny models and a couple of steps (the real runs are the CLI's)."""

import json

import pytest

from echo_tutor.experiments import transfer, transfer_task

TINY = dict(d_model=32, n_heads=4, d_state=8, ska_rank=6)


def test_transfer_writes_both_tables(tmp_path):
    out = transfer.run("transfer/synth1m-fast", tmp_path, progress=False, presets=["synth1m-ssm", "synth1m-echo"],
                       tasks=["niah", "tool_trace"], time_budget_s=None, steps=2, niah_lengths=[64, 128],
                       model_overrides=TINY, eval_examples=16)
    assert {(r["task"], r["preset"]) for r in out["table"]} == {(t, p) for t in ("niah", "tool_trace") for p in ("synth1m-ssm", "synth1m-echo")}
    assert all(r["paper_acc"] is not None and 0 <= r["acc"] <= 1 for r in out["table"])
    assert [(r["preset"], r["length"]) for r in out["niah_length"]] == [("synth1m-ssm", 64), ("synth1m-ssm", 128), ("synth1m-echo", 64), ("synth1m-echo", 128)]
    assert {r["preset"] for r in out["tool_trace_overwrites"]} == {"synth1m-ssm", "synth1m-echo"}
    assert out["recipe"] == "transfer/synth1m-fast" and out["max_steps"] == 2
    assert json.loads((tmp_path / "transfer.json").read_text())["table"] == out["table"]


def test_transfer_task_names():
    for name in ("mqar", "system_prompt", "tool_trace", "niah", "multi_hop", "common_word"):
        x, y = transfer_task(name).sample(2, 0)
        assert x.shape == y.shape
    with pytest.raises(ValueError, match="transfer tasks"):
        transfer_task("sorting")
    with pytest.raises(ValueError, match="recipe must be one of"):
        transfer_task("niah", recipe="transfer/tiny")


def test_lab_recipe_uses_lab_presets_chunks_and_zero_filler(tmp_path, monkeypatch):
    built = []
    real_build = transfer.build

    def spy(preset, **kw):
        m = real_build(preset, **kw)
        built.append((preset, kw.get("scale"), m))
        return m

    monkeypatch.setattr(transfer, "build", spy)
    out = transfer.run("transfer/lab", tmp_path, progress=False, presets=["ssm", "echo"], tasks=["mqar", "niah"],
                       steps=2, niah_lengths=[64], eval_examples=8)
    assert out["scale"] == "lab" and out["seconds_per_model"] is None and out["max_steps"] == 2
    assert {(p, s) for p, s, _ in built} == {("ssm", "lab"), ("echo", "lab")}
    echo = next(m for p, _, m in built if p == "echo")
    assert echo.blocks[1].mixer.chunk_size == transfer.RECIPES["transfer/lab"].model_overrides["mixer_kwargs"]["ska"]["chunk_size"] == 16
    assert echo.config.d_model == 64
    spec = json.loads((tmp_path / "records.jsonl").read_text().splitlines()[0])["spec"]
    assert spec["task"]["random_non_queries"] is False and spec["scale"] == "lab"
    x, _ = transfer_task("mqar").sample(4, 0)
    assert (x[:, 16:] == 0).float().mean() > 0.7  # filler 0 (queries and their values are the rest)
    x, _ = transfer_task("mqar", recipe="transfer/synth1m").sample(4, 0)
    assert (x[:, 16:] == 0).float().mean() < 0.3  # Zoology's random filler
