"""The conversion study as an experiment (``echo_tutor.experiments.convert``): a chain of four grids through
``run_grid``, locally and on Ray, that resumes after a kill and records a failed cell; its recipes check their
fields; ``echo-tutor convert`` comes from the registry. On the ``convert/smoke`` recipe (a tiny GQA Llama on
random copy sequences, seconds); the SmolLM2 recipes are the shipped run's (lab 08)."""

import json

import pytest

from conftest import untimed
from echo_tutor.experiments import convert as C
from echo_tutor.experiments import convert_cells
from echo_tutor.grid import GridError, GridOptions, load_records, rehash_records, spec_hash

pytest.importorskip("transformers")


def test_recipes_check_their_fields():
    for bad, match in ((dict(stage2_variants=["window"]), "stage2_variants"), (dict(counts=[0]), "counts"),
                       (dict(variants=[]), "variants"), (dict(compose_bits=5), "compose_bits"),
                       (dict(model="tiny-gqa"), "needle_distances must be empty"), (dict(layers=0), "layers"),
                       (dict(compose_variants=["window+linear:K0"], variants=["window"], stage2_variants=[]), "compose_variants")):
        with pytest.raises(ValueError, match=match):
            C.ConvertRecipe("x", "x", **bad)
    assert C.recipe_for(fast=True).name == "convert/fast" and C.recipe_for().name == "convert/full"


def test_choosing_variants_keeps_stage2_and_compositions_among_them():
    kept = C._keep_subsets("convert/full", {"variants": ["window", "window+ska:K1"]})
    assert kept["stage2_variants"] == ("window+ska:K1",) and kept["compose_variants"] == ("window+ska:K1",)
    assert C._keep_subsets("convert/full", {"variants": ["window"], "stage2_variants": []})["stage2_variants"] == []


def test_the_convert_command_is_built_from_the_registry(capsys):
    from echo_tutor.cli import main

    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ("convert/full", "convert/fast", "convert/smoke", "--variants", "--stage2-counts"))
    assert main(["convert", "--variants", "window+mamba"]) == 2  # checked before the model loads
    assert "variant must be one of" in capsys.readouterr().err


def _cells_of(recipe: C.ConvertRecipe, n_layers: int) -> list[C.ConvertCell]:
    """Every cell of a recipe's four grids (with made-up results: layer i's cost is i)."""
    got = []

    def go(cells):
        got.extend(cells)
        return [{"window_nll": [float(c.layer or 0)] * 30, "kl_before": 1.0, "kl_after": 0.5} for c in cells]

    C._chain(recipe, n_layers, go)
    return got


# specs of the shipped recipe's cells as they were recorded before the cells were typed: no experiment, and
# the fields at their defaults left out (no stage for stage 1, no sinks for 4, no model for SmolLM2)
FIT = {"window": 64, "rank": 32, "eps": 0.01, "calib_windows": 8, "calib_len": 512, "fit_steps": 40, "fit_batch": 2,
       "fit_lr": 0.01, "seed": 0}
EV = {"eval_windows": 24, "ctx_len": 512, "eval_len": 128}
UNTYPED_FULL = [
    {"kind": "eval", "variant": "full", "layers": [], **EV},
    {"kind": "fit", "variant": "window+ska:K1", "layer": 7, **FIT},
    {"kind": "eval", "variant": "window+linear:K0", "stage": 2, "layers": [0, 1, 2, 3, 4, 5, 6, 7], **EV,
     "stage2_steps": 32, "stage2_lr": 0.001, **FIT},
    {"kind": "needle", "distances": [256, 1024, 2048], "trials": 5, "seed": 0, "variant": "full", "layers": []},
    {"kind": "compose", "what": "echokv+kivi", "ratios": [0.5, 0.75], "bits": 4, "calib_windows": 32,
     "calib_len": 512, **EV},
]


def test_cells_are_typed_and_the_untyped_specs_of_the_shipped_recipe_read_as_them(tmp_path):
    cells = _cells_of(C.RECIPES["convert/full"], 30)
    assert all(isinstance(c, C.ConvertCell) for c in cells) and len({c.key for c in cells}) == len(cells)
    assert {(c.model, c.sinks) for c in cells} == {("smollm2", 4)}
    assert [c.stage for c in cells if c.kind == "eval" and c.stage == 2] == [2] * 4
    keys = {c.key for c in cells}
    for spec in UNTYPED_FULL:
        assert C.ConvertCell.from_spec({"experiment": "convert", **spec}).key in keys, spec
    # the records of those specs count for today's cells: the grid maps them to today's hashes
    lines = [{"spec": s, "spec_hash": spec_hash(s), "result": {"x": i}, "error": None, "traceback": None,
              "seconds": 1.0} for i, s in enumerate(UNTYPED_FULL)]
    mapped = rehash_records(lines, [C.ConvertCell])
    assert set(mapped) <= keys and len(mapped) == len(UNTYPED_FULL)
    assert sorted(r["result"]["x"] for r in mapped.values()) == list(range(len(UNTYPED_FULL)))


def _untyped(spec: dict) -> dict:
    """A spec as the study wrote it before its cells were typed."""
    left_out = {"stage": 1, "sinks": 4, "model": "smollm2"}
    return {k: v for k, v in spec.items() if k != "experiment" and v is not None and (k, v) not in left_out.items()}


@pytest.mark.slow
def test_records_written_before_the_cells_were_typed_are_not_run_again(tmp_path, monkeypatch):
    out = C.run("convert/smoke", tmp_path, progress=False)
    path, recs = tmp_path / "records.jsonl", load_records(tmp_path)
    old = [{**r, "spec": _untyped(r["spec"]), "spec_hash": spec_hash(_untyped(r["spec"]))} for r in recs]
    assert old[0]["spec"] == {"kind": "eval", "variant": "full", "layers": [], "eval_windows": 3, "ctx_len": 48,
                              "eval_len": 16, "model": "tiny-gqa"}  # as the untyped study recorded it
    path.write_text("".join(json.dumps(r) + "\n" for r in old))

    def no_cell(cell, **kw):
        raise AssertionError(f"a recorded cell ran again: {cell}")

    monkeypatch.setattr(C, "convert_cell", no_cell)
    again = C.run("convert/smoke", tmp_path, progress=False)
    assert untimed(again) == untimed(out)
    assert load_records(tmp_path) == old  # mapped as they are read: nothing appended


@pytest.mark.slow
def test_smoke_runs_resumes_after_a_kill_and_ray_gives_the_same_numbers(tmp_path, ray_local):
    out = C.run("convert/smoke", tmp_path / "local", progress=False)
    path = tmp_path / "local" / "records.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 4 + 4 + 2 * 2 + 1 + (1 + 1 + 1)  # full + fits, costs, sweep + distill, the rest
    assert json.loads((tmp_path / "local" / "convert.json").read_text()) == json.loads(json.dumps(out))
    assert sorted(out["order"]) == [0, 1, 2, 3] and set(out["sweep_window_nll"]) == {"window", "window+ska:K1"}
    assert set(out["stage2"]["window+ska:K1"]["2"]) >= {"window_nll", "kl_before", "kl_after"}
    assert "full" in out["compose"]["echokv"] and "| window+ska K1 r8 W8+2 | 2 |" in (tmp_path / "local" / "convert.md").read_text()

    # killed while writing its 16th record: the rerun keeps the first 15 and runs the rest
    path.write_text("\n".join(lines[:15]) + "\n" + lines[15][:30])
    again = C.run("convert/smoke", tmp_path / "local", progress=False)
    assert len(path.read_text().splitlines()) == len(lines)
    assert untimed(again["sweep_window_nll"]) == untimed(out["sweep_window_nll"]) and again["order"] == out["order"]

    ray = C.run("convert/smoke", tmp_path / "ray", grid=GridOptions(executor="ray"), progress=False)
    assert ray["order"] == out["order"]
    for v, by_n in out["sweep_window_nll"].items():  # other processes: float rounding only
        for n, nll in by_n.items():
            assert ray["sweep_window_nll"][v][n] == pytest.approx(nll, rel=1e-4), (v, n)


def test_a_failed_cell_is_recorded_and_reported_and_the_rerun_runs_it(tmp_path, monkeypatch):
    calls = []

    def cost_breaks(cell, **kw):
        calls.append(cell.kind)
        if cell.kind == "cost" and cell.layer == 2:
            raise RuntimeError("out of memory (simulated)")
        return convert_cells.convert_cell(cell, **kw)

    monkeypatch.setattr(C, "convert_cell", cost_breaks)
    with pytest.raises(GridError, match="1 of 4 cells failed") as e:
        C.run("convert/smoke", tmp_path, progress=False)
    assert '"layer":2' in str(e.value) and "out of memory" in str(e.value)
    assert "distill" not in calls and not (tmp_path / "convert.json").exists()  # later grids need the costs
    monkeypatch.setattr(C, "convert_cell", convert_cells.convert_cell)
    res = C.run("convert/smoke", tmp_path, progress=False)  # the failed cell and the later grids run
    assert sorted(res["order"]) == [0, 1, 2, 3]
