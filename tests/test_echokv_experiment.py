"""The EchoKV-lite study as an experiment (``echo_tutor.experiments.echokv``): its recipes check their fields,
its cells run through ``run_grid`` locally and on Ray, a killed run resumes, a failed cell is recorded and
reported; the CLI's ``echokv`` command comes from the registry. On the ``echokv/smoke`` recipe (a tiny GQA
Llama on random copy sequences, seconds); the SmolLM2 recipes are the shipped run's."""

import json

import pytest

from conftest import untimed
from echo_tutor.experiments import echokv as E
from echo_tutor.grid import GridError, GridOptions, load_records, spec_hash

pytest.importorskip("transformers")


def test_recipes_check_their_fields():
    for bad, match in ((dict(ratios=(0.5, 1.5)), "ratios must be"), (dict(ratios=()), "ratios must be"),
                       (dict(stage2_steps=-1), "stage2_steps"), (dict(model="gpt2"), "model must be one of"),
                       (dict(layer_window=0), "layer_window must be"), (dict(scale="lab"), "scale must be 'smollm2'")):
        with pytest.raises(ValueError, match=match):
            E.EchoKVRecipe("x", "x", **bad)
    assert E.RECIPES["echokv/full"].stage2_ratio == 0.5
    assert E.EchoKVRecipe("x", "x", ratios=[0.25, 0.75]).stage2_ratio == 0.25
    assert E.recipe_for(fast=True).name == "echokv/fast" and E.recipe_for().name == "echokv/full"


def test_the_study_models_are_named_and_a_wrong_name_is_refused():
    from echo_tutor.echokv.model import STUDY_MODELS, study_model

    assert E.MODELS == tuple(STUDY_MODELS)
    with pytest.raises(ValueError, match="name must be one of"):
        study_model("gpt2")
    model, tok, windows = study_model("tiny-gqa")
    assert tok is None and windows("calib", 32, 2).shape == (2, 32)
    assert not (windows("calib", 32, 2) == windows("heldout", 32, 2)).all()  # the splits apart


def test_the_shipped_recipe_has_one_cell_per_ratio_and_one_per_other_kind():
    cells = E.cells(E.RECIPES["echokv/full"])
    assert [(c.kind, c.ratio) for c in cells] == [
        ("ratio", 0.25), ("ratio", 0.5), ("ratio", 0.75), ("kivi", None), ("ablation", 0.5), ("stage2", 0.5)]
    assert len({c.key for c in cells}) == len(cells) and all(isinstance(c, E.EchoKVCell) for c in cells)
    assert cells[3].bits == [2, 4, 8] and (cells[5].steps, cells[5].rank, cells[5].distill_windows) == (100, 16, 32)
    assert {c.model for c in cells} == {"smollm2"} and E.cells(E.RECIPES["echokv/smoke"])[0].model == "tiny-gqa"


# the specs the cells were recorded under before they were typed (None fields left out, a model other than
# SmolLM2 named inside data): the shipped recipe's stage-2 cell and the smoke recipe's kivi cell
DATA = {"calib_windows": 32, "calib_len": 512, "eval_windows": 24, "ctx_len": 512, "eval_len": 128}
UNTYPED_STAGE2 = {"experiment": "echokv", "seed": 0, "layer_window": 2, "data": DATA, "kind": "stage2", "ratio": 0.5,
                  "steps": 100, "rank": 16, "lr": 3e-4, "distill_windows": 32}
UNTYPED_SMOKE_KIVI = {"experiment": "echokv", "seed": 0, "layer_window": 2, "kind": "kivi", "bits": [2, 4, 8],
                      "data": {"calib_windows": 4, "calib_len": 64, "eval_windows": 3, "ctx_len": 48, "eval_len": 16,
                               "model": "tiny-gqa"}}


def test_a_spec_recorded_before_the_cells_were_typed_reads_as_its_cell():
    assert E.EchoKVCell.from_spec(UNTYPED_STAGE2) == E.cells(E.RECIPES["echokv/full"])[5]
    assert E.EchoKVCell.from_spec(UNTYPED_SMOKE_KIVI) == E.cells(E.RECIPES["echokv/smoke"])[1]


def test_the_echokv_command_is_built_from_the_registry(capsys):
    from echo_tutor.cli import main

    with pytest.raises(SystemExit):
        main(["echokv", "--help"])
    out = capsys.readouterr().out
    assert "echokv/full" in out and "echokv/fast" in out and "echokv/smoke" in out and "--stage2-steps" in out
    for argv in (["echokv", "--stage2-steps", "-3"], ["echokv", "--scale", "lab"]):  # its model has one scale
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


@pytest.mark.slow
def test_smoke_runs_resumes_after_a_kill_and_ray_gives_the_same_numbers(tmp_path, ray_local):
    out = E.run("echokv/smoke", tmp_path / "local", progress=False)
    lines = (tmp_path / "local" / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads((tmp_path / "local" / "echokv.json").read_text()) == json.loads(json.dumps(out))
    assert out["model"].startswith("a tiny GQA Llama")
    full = out["perplexity"]["full"]["ppl"]
    s2 = "echokv-lite stage 2, greedy @0.5"
    assert {p["a"] for p in out["paired"]} == {s2} and len(out["stage2_kl"]) == 2
    assert out["perplexity"]["KIVI 8-bit (g=32)"]["ppl"] == pytest.approx(full, rel=0.01)  # 8 bits: near lossless

    # killed while writing its third record: the rerun keeps the first two and runs the other two cells
    (tmp_path / "local" / "records.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])
    again = E.run("echokv/smoke", tmp_path / "local", progress=False)
    assert len((tmp_path / "local" / "records.jsonl").read_text().splitlines()) == 4
    assert untimed(again["perplexity"]) == untimed(out["perplexity"])

    ray = E.run("echokv/smoke", tmp_path / "ray", grid=GridOptions(executor="ray"), progress=False)
    assert set(ray["perplexity"]) == set(out["perplexity"])
    for name, row in out["perplexity"].items():  # other processes, other thread counts: float rounding only
        assert ray["perplexity"][name]["ppl"] == pytest.approx(row["ppl"], rel=1e-3), name


def test_a_failed_cell_is_recorded_and_reported_after_the_others(tmp_path, monkeypatch):
    real = E._methods

    def kivi_breaks(cell, *args):
        if cell.kind == "kivi":
            raise RuntimeError("out of memory (simulated)")
        return real(cell, *args)

    monkeypatch.setattr(E, "_methods", kivi_breaks)
    with pytest.raises(GridError, match="1 of 4 cells failed"):
        E.run("echokv/smoke", tmp_path, progress=False)
    res = json.loads((tmp_path / "echokv.json").read_text())  # written from the three cells that ran
    assert "full" in res["perplexity"] and not any("KIVI" in n for n in res["perplexity"])
    monkeypatch.setattr(E, "_methods", real)
    res = E.run("echokv/smoke", tmp_path, progress=False)  # the rerun runs the failed cell only
    assert any("KIVI" in n for n in res["perplexity"])
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 5


def test_a_record_written_before_the_cells_were_typed_is_not_run_again(tmp_path, monkeypatch):
    """A smoke run whose kivi record has the spec (and hash) the untyped cells were recorded under: a rerun
    maps it to today's cell (``rehash_records``) and runs nothing."""
    out = E.run("echokv/smoke", tmp_path, progress=False)
    path = tmp_path / "records.jsonl"
    recs = load_records(tmp_path)
    assert recs[1]["spec"]["kind"] == "kivi"
    recs[1] = {**recs[1], "spec": UNTYPED_SMOKE_KIVI, "spec_hash": spec_hash(UNTYPED_SMOKE_KIVI)}
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))

    def no_cell(*args):
        raise AssertionError("a recorded cell ran again")

    monkeypatch.setattr(E, "_methods", no_cell)
    again = E.run("echokv/smoke", tmp_path, progress=False)
    assert untimed(again["perplexity"]) == untimed(out["perplexity"]) and len(load_records(tmp_path)) == 4
