"""The memory-cliff experiment end to end on shipped checkpoints, a few examples per cell."""

import dataclasses
import json

import pytest

from echo_tutor.experiments import cliff
from echo_tutor.experiments.common import checkpoint_id, lab_task_args
from echo_tutor.grid import RECORDS_FILE, GridError, GridOptions, run_grid, spec_hash
from echo_tutor.pretrained import available


def test_cliff_on_two_shipped_models(tmp_path):
    recs = cliff.run("cliff/lab", tmp_path, progress=False, eval_examples=4, presets=["echo", "ssm+swa"], pairs=[2],
                     gaps=[8, 300])
    assert [(r["preset"], r["pairs"], r["gap"]) for r in recs] == [("echo", 2, 8), ("echo", 2, 300), ("ssm+swa", 2, 8), ("ssm+swa", 2, 300)]
    assert all(0 <= r["acc"] <= 1 and r["state_bytes"] > 0 for r in recs)
    assert all(r["acc"] + r["bound_wrong"] + r["other_wrong"] == pytest.approx(1) for r in recs)
    # SKA's state is the same after 12 and 308 tokens; the window's cache is capped at 256 tokens
    assert recs[0]["state_bytes"] == recs[1]["state_bytes"] and recs[2]["state_bytes"] < recs[3]["state_bytes"]
    assert (tmp_path / "cliff.json").exists()
    pytest.importorskip("plotly", reason="cliff.html needs plotly (the lab extra)")
    assert (tmp_path / "cliff.html").exists()


def test_decode_recipe_reads_ska_token_by_token_and_fills_the_chunk_blind_spot(tmp_path):
    """In chunk mode the shipped echo is blind when the whole prompt sits in SKA's first chunk; read token by
    token (cliff/lab-decode, as model.step decodes) the same weights recall there. as_decoded swaps only echo."""
    kw = dict(progress=False, eval_examples=8, pairs=[4], gaps=[0])
    chunk = cliff.run("cliff/lab", tmp_path / "chunk", presets=["echo", "ssm"], **kw)
    token = cliff.run("cliff/lab-decode", tmp_path / "token", **kw)
    assert token[0]["ska_mode"] == "token" and "ska_mode" not in chunk[0]
    assert chunk[0]["acc"] < 0.2 and token[0]["acc"] > 0.9
    merged = cliff.as_decoded(chunk, token)
    assert sorted((r["preset"], r.get("ska_mode", "chunk")) for r in merged) == [("echo", "token"), ("ssm", "chunk")]
    with pytest.raises(ValueError, match="ska_mode must be 'chunk' or 'token'"):
        cliff.CliffRecipe("x", "x", "lab", "checkpoint", ska_mode="stream")


def test_a_failing_cell_is_listed_and_the_others_are_written(tmp_path, monkeypatch):
    """One cell per (preset, pairs, gap); a failing cell is listed, the others are written, a rerun finishes."""
    preset = sorted(available())[0]
    real = cliff.recall_breakdown

    def breakdown(model, task, *args, **kwargs):
        if task.kwargs["gap"] == 16:
            raise RuntimeError("gap 16 is cursed")
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(cliff, "recall_breakdown", breakdown)
    kw = dict(eval_examples=4, presets=[preset], pairs=[2], gaps=[8, 16], progress=False)
    with pytest.raises(GridError, match="gap 16 is cursed") as e:
        cliff.run("cliff/lab", tmp_path, **kw)
    assert [r["spec"]["task"]["gap"] for r in e.value.failed] == [16]
    assert e.value.failed[0]["spec"]["checkpoint"]["sha1"]  # the spec pins the checkpoint's contents
    written = json.loads((tmp_path / "cliff.json").read_text())
    assert [(r["preset"], r["pairs"], r["gap"]) for r in written] == [(preset, 2, 8)]
    monkeypatch.undo()
    recs = cliff.run("cliff/lab", tmp_path, **kw)
    assert [(r["gap"], r["state_bytes"] > 0) for r in recs] == [(8, True), (16, True)] and recs[0] == written[0]


def test_bad_grid_options_are_refused_before_any_cell(tmp_path):
    with pytest.raises(ValueError, match="executor must be one of"):
        cliff.run("cliff/lab", tmp_path / "x", grid=GridOptions(executor="slurm"), presets=["echo"], pairs=[2], gaps=[8])
    with pytest.raises(ValueError, match="options must be a GridOptions"):
        cliff.run("cliff/lab", tmp_path / "x", grid={"executor": "ray"}, presets=["echo"], pairs=[2], gaps=[8],
                  progress=False)
    assert not (tmp_path / "x" / "records.jsonl").exists()


FAKE = {"acc": 0.5, "bound_wrong": 0.25, "other_wrong": 0.25, "first_query_acc": 0.5, "state_bytes": 123, "device": "cpu"}


def _never(cell):
    raise AssertionError(f"a recorded cell ran again: {cell!r}")


@pytest.mark.parametrize("recipe, kw, old", [
    # the specs the dict-building cells() wrote: checkpoint mode without the train fields nor ska_mode ...
    ("cliff/lab", dict(presets=["echo"]), lambda: {"mode": "checkpoint", "checkpoint": checkpoint_id("echo")}),
    # ... the decode recipe's with ska_mode ...
    ("cliff/lab-decode", {}, lambda: {"mode": "checkpoint", "checkpoint": checkpoint_id("echo"), "ska_mode": "token"}),
    # ... train mode without checkpoint nor ska_mode
    ("cliff/synth1m", dict(presets=["synth1m-echo"], steps=3),
     lambda: {"mode": "train", "scale": "synth1m", "vocab_size": 128, "steps": 3, "batch_size": 16, "lr": 0.003}),
])
def test_records_of_the_older_dict_specs_still_count(tmp_path, monkeypatch, recipe, kw, old):
    """A records.jsonl written before CliffCell (a spec that left out the fields of the other mode, and
    ska_mode in chunk mode) is the record of today's cell: a rerun runs nothing and reports it."""
    preset = kw.get("presets", ["echo"])[0]
    spec = {"experiment": "cliff", "preset": preset, "task": lab_task_args(2, 8), "examples": 4, "seed": 0, **old()}
    run_grid([spec], lambda s: FAKE, tmp_path, progress=False)
    before = (tmp_path / RECORDS_FILE).read_text()
    kw = dict(kw, pairs=[2], gaps=[8], eval_examples=4)
    (cell,) = cliff.cells(dataclasses.replace(cliff.RECIPES[recipe], **kw))
    assert cell.key != spec_hash(spec) and cliff.CliffCell.from_spec(spec) == cell  # today's hash differs
    monkeypatch.setattr(cliff, "cliff_cell", _never)
    rows = cliff.run(recipe, tmp_path, progress=False, **kw)
    assert [(r["preset"], r["acc"], r["state_bytes"]) for r in rows] == [(preset, 0.5, 123)]
    assert (tmp_path / RECORDS_FILE).read_text() == before  # nothing appended
