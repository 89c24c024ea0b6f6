"""The experiment recipes: named, frozen, checked when built, picked by (scale, fast), and the cell specs
they make (which identify the records of a run: a spec that changes makes a new cell)."""

import dataclasses
import json

import pytest

from echo_tutor.errors import BadArgumentError
from echo_tutor.experiments import EXPERIMENTS, RECIPES, ablation, cliff, transfer
from echo_tutor.grid import spec_hash
from echo_tutor.models import SCALES


def test_every_recipe_is_named_for_its_experiment_and_frozen():
    assert set(EXPERIMENTS) == {"cliff", "transfer", "ablation", "echokv", "convert", "ssm_cliff", "passkey"}
    for name, recipe in RECIPES.items():
        mod = EXPERIMENTS[name.split("/")[0]]
        assert name == recipe.name and recipe.scale in (mod.COMMAND.scales or SCALES)
        assert recipe.description
        with pytest.raises(dataclasses.FrozenInstanceError):
            recipe.name = "x"


@pytest.mark.parametrize("mod", list(EXPERIMENTS.values()), ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_pick_tables_name_existing_recipes_and_the_rest_is_refused(mod):
    for (scale, fast), name in mod.PICK.items():
        assert mod.recipe_for(scale, fast) is mod.RECIPES[name]
    assert set(mod.PICK.values()) <= set(mod.RECIPES)  # the flags pick named recipes (others: --recipe only)
    with pytest.raises(BadArgumentError, match="scale must be one of"):
        mod.recipe_for("huge", True)


def test_the_fast_flag_picks_the_shipped_recipes():
    assert cliff.recipe_for("lab", True).name == "cliff/lab"
    assert transfer.recipe_for("lab", True).name == "transfer/lab"
    assert ablation.recipe_for("synth1m", True).name == "ablation/small"   # the synth1m layout at d=64
    assert ablation.recipe_for("lab", False).name == "ablation/lab"
    with pytest.raises(BadArgumentError, match="ablation has no fast recipe at scale='lab'"):
        ablation.recipe_for("lab", True)
    with pytest.raises(BadArgumentError, match="no fast recipe at scale='synth1m'"):
        cliff.recipe_for("synth1m", True)


def test_recipes_check_their_fields():
    with pytest.raises(ValueError, match="presets must be drawn from the shipped checkpoints"):
        dataclasses.replace(RECIPES["cliff/lab"], presets=("no-such-model",))
    with pytest.raises(ValueError, match="gaps must hold ints >= 0"):
        dataclasses.replace(RECIPES["cliff/lab"], gaps=(-1,))
    with pytest.raises(ValueError, match="presets must be drawn from the lab-scale presets"):
        dataclasses.replace(RECIPES["transfer/lab"], presets=("attn",))
    with pytest.raises(ValueError, match="tasks must be drawn from the transfer tasks"):
        dataclasses.replace(RECIPES["transfer/lab"], tasks=("sorting",))
    with pytest.raises(ValueError, match="mqar_filler"):
        dataclasses.replace(RECIPES["transfer/lab"], mqar_filler="noise")
    with pytest.raises(ValueError, match="configs must hold"):
        dataclasses.replace(RECIPES["ablation/lab"], configs=(("K=1", -1, True, False),))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dataclasses.replace(RECIPES["ablation/lab"], steps=0)
    with pytest.raises(ValueError, match="overrides: \\['stepz'\\] are not fields of AblationRecipe"):
        ablation.run("ablation/lab", stepz=3)
    with pytest.raises(ValueError, match="recipe must be one of"):
        cliff.run("cliff/huge")


def test_recipe_fields_are_read_only_copies():
    kw = {"mixer_kwargs": {"ska": {"chunk_size": 16}}}
    r = dataclasses.replace(RECIPES["transfer/lab"], model_overrides=kw)
    kw["mixer_kwargs"]["ska"]["chunk_size"] = 64  # the caller's dict changes; the recipe does not
    assert r.model_overrides["mixer_kwargs"]["ska"]["chunk_size"] == 16
    with pytest.raises(TypeError):
        r.model_overrides["mixer_kwargs"]["ska"]["chunk_size"] = 64


def test_cells_are_distinct_typed_cells_of_the_recipe_with_json_specs():
    for mod, cls, name, n in [(cliff, cliff.CliffCell, "cliff/lab", 4 * 4 * 10),
                              (transfer, transfer.TransferCell, "transfer/lab", 6 * 3),
                              (ablation, ablation.AblationCell, "ablation/small", 2 * 7 * 3),
                              (ablation, ablation.AblationCell, "ablation/lab", 3 * 3)]:
        cells = mod.cells(mod.RECIPES[name])
        assert all(type(c) is cls for c in cells)
        assert len(cells) == n and len({c.key for c in cells}) == n
        assert all(json.loads(json.dumps(c.spec())) == c.spec() and spec_hash(c.spec()) == c.key for c in cells)
        assert all(cls.from_spec(c.spec()) == c for c in cells)
    lab = transfer.cells(RECIPES["transfer/lab"])
    assert {c.scale for c in lab} == {"lab"} and {c.steps for c in lab} == {1500}
    assert lab[0].model_overrides == {"mixer_kwargs": {"ska": {"chunk_size": 16}}}
    assert next(c for c in lab if c.task["name"] == "mqar").task["random_non_queries"] is False
    assert {(c.task["name"] == "niah", c.niah_lengths is None) for c in lab} == {(True, False), (False, True)}
    assert all(c.checkpoint["sha1"] and c.steps is None and c.ska_mode == "chunk"
               for c in cliff.cells(RECIPES["cliff/lab"]))
    assert {c.ska_mode for c in cliff.cells(RECIPES["cliff/lab-decode"])} == {"token"}
    assert all(c.checkpoint is None and c.steps == 2000 for c in cliff.cells(RECIPES["cliff/synth1m"]))
    assert {c.probes for c in ablation.cells(RECIPES["ablation/lab"])} == {True}


def test_cells_refuse_fields_that_contradict_each_other():
    ck = cliff.cells(dataclasses.replace(RECIPES["cliff/lab"], presets=("echo",), pairs=(2,), gaps=(0,)))[0]
    with pytest.raises(BadArgumentError, match="mode='checkpoint' cell sets checkpoint and none of"):
        dataclasses.replace(ck, steps=10)
    with pytest.raises(BadArgumentError, match="mode='train' cell sets scale"):
        dataclasses.replace(ck, mode="train")
    with pytest.raises(BadArgumentError, match="ska_mode must be"):
        dataclasses.replace(ck, ska_mode="stream")
    tr = transfer.cells(dataclasses.replace(RECIPES["transfer/lab"], tasks=("mqar",), presets=("echo",)))[0]
    with pytest.raises(BadArgumentError, match="niah_lengths and niah_examples are set for task 'niah'"):
        dataclasses.replace(tr, niah_lengths=[64])
    ab = ablation.cells(RECIPES["ablation/lab"])[0]
    with pytest.raises(BadArgumentError, match="model must have the keys"):
        dataclasses.replace(ab, model={"preset": "echo"})


def test_ablation_subsets_by_task_and_power():
    r = RECIPES["ablation/small"].only(tasks=["tool_trace"], powers=[0, 2])
    assert list(r.tasks) == ["tool_trace"] and {c.power_steps for c in r.configs} == {0, 2} and len(r.configs) == 5
    with pytest.raises(ValueError, match="powers: no config of ablation/lab has K in \\[4\\]"):
        RECIPES["ablation/lab"].only(powers=[4])
    with pytest.raises(ValueError, match="tasks must be drawn from the tasks of ablation/lab"):
        RECIPES["ablation/lab"].only(tasks=["tool_trace"])


def test_the_curves_recipe_repeats_seeds_and_records_the_history(tmp_path):
    cells = transfer.cells(RECIPES["transfer/lab-curves"])
    assert [(c.preset, c.seed) for c in cells] == [(p, s) for p in ("ssm+attn", "echo") for s in range(5)]
    assert {c.eval_every for c in cells} == {250} and {c.steps for c in cells} == {4000}
    assert all(c.eval_every is None for c in transfer.cells(RECIPES["transfer/lab"]))  # the shipped specs lacked it
    out = transfer.run("transfer/lab-curves", tmp_path, progress=False, steps=4, eval_every=2, seeds=(0, 1),
                       presets=("echo",), eval_examples=8)
    assert [(r["seed"], [e["step"] for e in r["evals"]]) for r in out["table"]] == [(0, [2, 4]), (1, [2, 4])]
