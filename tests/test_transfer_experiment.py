"""The transfer experiment end to end, on tiny models and a couple of steps (the real runs are the CLI's)."""

import dataclasses
import json

import pytest

from echo_tutor.experiments import transfer, transfer_task
from echo_tutor.grid import RECORDS_FILE, run_grid, spec_hash

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


def _never(cell):
    raise AssertionError(f"a recorded cell ran again: {cell!r}")


def _fake(spec):
    out = {"acc": 0.5, "steps": spec["steps"], "train_seconds": 1.0, "final_loss": 1.0, "params": 10, "device": "cpu"}
    if spec["task"]["name"] == "niah":
        out["niah_length"] = [{"length": L, "acc": 0.25} for L in spec["niah_lengths"]]
    if "eval_every" in spec:
        out["evals"] = [{"step": spec["steps"], "acc": 0.5}]
    return out


@pytest.mark.parametrize("recipe, tasks, extra", [
    ("transfer/lab", ("mqar", "niah"), {}),  # the shipped specs: no eval_every; niah_* for NIAH only
    ("transfer/lab-curves", ("mqar",), {"eval_every": 250}),
])
def test_records_of_the_older_dict_specs_still_count(tmp_path, monkeypatch, recipe, tasks, extra):
    """A records.jsonl written before TransferCell (specs without eval_every when it was None, and without the
    niah_* keys but for NIAH) holds the records of today's cells: a rerun trains nothing and reports them."""
    lab = {"mixer_kwargs": {"ska": {"chunk_size": 16}}}
    specs = [{"experiment": "transfer", "preset": "echo", "scale": "lab", "task": transfer.transfer_task_args(t, 128, "zero"),
              "vocab_size": 128, "model_overrides": lab, "steps": 2, "time_budget_s": None, "batch_size": 16,
              "lr": 0.003, "seed": 0, "eval_examples": 8, **extra,
              **({"niah_lengths": [64], "niah_examples": 128} if t == "niah" else {})} for t in tasks]
    run_grid(specs, _fake, tmp_path, progress=False)
    before = (tmp_path / RECORDS_FILE).read_text()
    kw = dict(presets=["echo"], tasks=list(tasks), steps=2, niah_lengths=[64], eval_examples=8, seeds=(0,))
    cells = transfer.cells(dataclasses.replace(transfer.RECIPES[recipe], **kw))
    assert [transfer.TransferCell.from_spec(s) for s in specs] == cells
    assert all(c.key != spec_hash(s) for c, s in zip(cells, specs))  # today's hashes differ
    monkeypatch.setattr(transfer, "transfer_cell", _never)
    out = transfer.run(recipe, tmp_path, progress=False, **kw)
    assert [(r["task"], r["acc"]) for r in out["table"]] == [(t, 0.5) for t in tasks]
    assert [(r["length"], r["acc"]) for r in out["niah_length"]] == ([(64, 0.25)] if "niah" in tasks else [])
    assert (tmp_path / RECORDS_FILE).read_text() == before  # nothing appended
