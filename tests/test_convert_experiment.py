"""The conversion study as an experiment (``echo_tutor.experiments.convert``): a chain of four grids through
``run_grid``, locally and on Ray, that resumes after a kill and records a failed cell; its recipes check their
fields; ``echo-tutor convert`` comes from the registry. On the ``convert/smoke`` recipe (a tiny GQA Llama on
random copy sequences, seconds); the SmolLM2 recipes are the shipped run's (lab 08)."""

import json

import pytest

from conftest import untimed
from echo_tutor.experiments import convert as C
from echo_tutor.experiments import convert_cells
from echo_tutor.grid import GridError, GridOptions

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

    def cost_breaks(spec, **kw):
        calls.append(spec["kind"])
        if spec["kind"] == "cost" and spec["layer"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return convert_cells.convert_cell(spec, **kw)

    monkeypatch.setattr(C, "convert_cell", cost_breaks)
    with pytest.raises(GridError, match="1 of 4 cells failed") as e:
        C.run("convert/smoke", tmp_path, progress=False)
    assert '"layer":2' in str(e.value) and "out of memory" in str(e.value)
    assert "distill" not in calls and not (tmp_path / "convert.json").exists()  # later grids need the costs
    monkeypatch.setattr(C, "convert_cell", convert_cells.convert_cell)
    res = C.run("convert/smoke", tmp_path, progress=False)  # the failed cell and the later grids run
    assert sorted(res["order"]) == [0, 1, 2, 3]
