"""The SSM-cliff study as an experiment: the smoke recipe end to end (two seeds, the summary across seeds, the
saved models, a checkpoint measured instead of trained), a rerun trains nothing, the recipes check their
fields, the lab recipe is the shipped ssm-recall's run, and the CLI command exists."""

import dataclasses
import json

import pytest

from echo_tutor.cli import main
from echo_tutor.errors import BadArgumentError
from echo_tutor.experiments import EXPERIMENTS, RECIPES, ssm_cliff
from echo_tutor.grid import load_records, spec_hash
from echo_tutor.pretrained import info

SMOKE = "ssm_cliff/smoke"


def _no_training(*args, **kwargs):
    raise AssertionError("a recorded cell was trained again")


def test_smoke_recipe_writes_the_summary_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    summary = ssm_cliff.run(SMOKE, tmp_path, progress=False, save_models=True)
    assert [s["seed"] for s in summary["seeds"]] == [0, 1]
    assert json.loads((tmp_path / "ssm_cliff.json").read_text()) == json.loads(json.dumps(summary))
    assert sorted(p.name for p in (tmp_path / "models").glob("*.pt")) == ["seed0.pt", "seed1.pt"]
    s = summary["seeds"][0]
    assert s["gaps"] == [0, 4, 8, 16] and len(s["acc"]) == 4 and s["args"]["tol_gap"] == 4 and s["args"]["seed"] == 0
    assert s["stages"][0]["steps"] == 3 and len(s["retention"]["16"]) == 2  # two Mamba-2 blocks
    assert len(s["frozen_decay_check"]) == 2 * 2 + 1  # each of the 4 heads, then all, at gap 16
    across = summary["across_seeds"]
    assert set(across) == {"cliff_measured", *ssm_cliff.RULES}
    assert len(across["cliff_pred_rule3"]["values"]) == 2 and across["cliff_pred_rule3"]["n"] == 2
    assert across["cliff_pred_rule3"]["lo"] <= across["cliff_pred_rule3"]["mean"] <= across["cliff_pred_rule3"]["hi"]

    files = {name: (tmp_path / name).read_text() for name in ("records.jsonl", "ssm_cliff.json")}
    monkeypatch.setattr(ssm_cliff, "train", _no_training)
    assert ssm_cliff.run(SMOKE, tmp_path, progress=False, save_models=True) == summary
    assert {name: (tmp_path / name).read_text() for name in files} == files


def test_load_measures_a_saved_checkpoint_in_one_cell(tmp_path, monkeypatch):
    ssm_cliff.run(SMOKE, tmp_path / "trained", progress=False, save_models=True, seeds=(3,))
    monkeypatch.setattr(ssm_cliff, "train", _no_training)
    model = tmp_path / "trained" / "models" / "seed3.pt"
    summary = ssm_cliff.run(SMOKE, tmp_path / "loaded", progress=False, load=str(model))
    (s,) = summary["seeds"]
    assert s["stages"] == [{"loaded": str(model.resolve())}] and s["load"]["sha1"] and s["seed"] == 0
    assert len(load_records(tmp_path / "loaded")) == 1
    with pytest.raises(BadArgumentError, match="load: .* is not a file"):
        ssm_cliff.run(SMOKE, tmp_path / "x", progress=False, load=str(tmp_path / "typo.pt"))


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps must be >= 1"),
    ("seeds", (0, 0), "seeds must be distinct"),
    ("seeds", (), "seeds must be a non-empty list"),
    ("eval_gaps", (0, 16, 4), "eval_gaps must be increasing"),
    ("ref_gap", 5, "ref_gap must be one of eval_gaps"),
    ("tol_gap", 16, "tol_gap .* must be one of eval_gaps .* and not the last"),
    ("time_budget_s", 0, "time_budget_s must be a finite number > 0"),
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("show_values", 1, "show_values must be True or False"),
    ("scale", "synth1m", "scale must be 'lab'"),
])
def test_a_bad_recipe_field_is_named(field, value, match):
    with pytest.raises(BadArgumentError, match=match):
        dataclasses.replace(RECIPES[SMOKE], **{field: value})


def test_recipes_are_registered_and_one_cell_per_seed():
    assert EXPERIMENTS["ssm_cliff"] is ssm_cliff
    assert {n for n in RECIPES if n.startswith("ssm_cliff/")} == {"ssm_cliff/lab", "ssm_cliff/fast", SMOKE}
    assert ssm_cliff.recipe_for("lab", False).name == "ssm_cliff/lab"
    assert ssm_cliff.recipe_for("lab", True).name == "ssm_cliff/fast"
    cells = ssm_cliff.cells(RECIPES["ssm_cliff/lab"])
    assert [c.seed for c in cells] == [0, 1, 2] and len({c.key for c in cells}) == 3
    assert all(isinstance(c, ssm_cliff.SSMCliffCell) and json.loads(json.dumps(c.spec())) == c.spec() for c in cells)
    # the spec the cells were recorded under before they were typed, which had every field: the same hash
    args = RECIPES["ssm_cliff/lab"].resolved()
    assert [c.key for c in cells] == [spec_hash({"experiment": "ssm_cliff", "seed": s, "args": args, "load": None,
                                                 "save_as": None}) for s in (0, 1, 2)]


def test_the_lab_recipe_is_the_shipped_ssm_recall_run():
    """Every argument of the run that made ssm-recall (its record's "args"), as the lab recipe's cell runs it."""
    shipped = info("ssm-recall")["args"]
    args = RECIPES["ssm_cliff/lab"].resolved()
    assert args["time_budget_s"] == 60 * shipped["minutes"]
    measurement_only = ("minutes", "seed", "load", "threads", "out")
    assert {k: args[k] for k in shipped if k not in measurement_only} == \
        {k: v for k, v in shipped.items() if k not in measurement_only}
    assert RECIPES["ssm_cliff/lab"].seeds == tuple(s["seed"] for s in info("ssm-recall")["seeds"])


def test_the_cli_command_names_its_recipes_and_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ssm-cliff", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("ssm_cliff/lab", "ssm_cliff/fast", SMOKE, "--load", "--save-models", "--seeds", "--eval-gaps"):
        assert text in out


def test_the_cli_runs_the_smoke_recipe(tmp_path, capsys):
    assert main(["ssm-cliff", "--recipe", SMOKE, "--seeds", "2", "--quiet", "--out-dir", str(tmp_path)]) == 0
    assert [s["seed"] for s in json.loads((tmp_path / "ssm_cliff.json").read_text())["seeds"]] == [2]
    assert "ssm-cliff finished in" in capsys.readouterr().out
