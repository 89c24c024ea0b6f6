"""The command line: every experiment command names its recipes; a user's bad argument is a one-line exit 2,
a bug keeps its traceback; a path that does not exist says so."""

import pytest

from echo_tutor.cli import EXIT_BAD_ARGUMENT, main, make_parser
from echo_tutor.errors import BadArgumentError
from echo_tutor.experiments import RECIPES, cliff


@pytest.mark.parametrize("command, experiment", [("cliff", "cliff"), ("transfer", "transfer"), ("ablate", "ablation")])
def test_help_names_every_recipe_and_its_flags(command, experiment, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in (n for n in RECIPES if n.startswith(experiment + "/")):
        assert name in out
    assert "--fast" in out and "(no flags)" in out


def test_recipe_and_fast_cannot_be_combined(tmp_path, capsys):
    assert main(["cliff", "--recipe", "cliff/lab", "--fast", "--out-dir", str(tmp_path)]) == EXIT_BAD_ARGUMENT
    err = capsys.readouterr().err
    assert err.strip() == "echo-tutor cliff: error: --recipe names the recipe itself: drop --fast and --scale"


def test_a_recipe_that_does_not_exist_at_a_scale_is_a_bad_argument(tmp_path, capsys):
    assert main(["cliff", "--scale", "synth1m", "--fast", "--out-dir", str(tmp_path)]) == EXIT_BAD_ARGUMENT
    assert "cliff has no fast recipe at scale='synth1m'" in capsys.readouterr().err


def test_a_users_bad_argument_exits_2_without_a_traceback(tmp_path, capsys):
    assert main(["cliff", "--fast", "--presets", "gpt", "--out-dir", str(tmp_path / "x")]) == EXIT_BAD_ARGUMENT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "presets must be drawn from the shipped checkpoints" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_a_bug_is_not_reported_as_the_users_mistake(tmp_path, monkeypatch):
    """A ValueError that is not a BadArgumentError (a bug of ours) propagates with its traceback."""
    def broken(*args, **kwargs):
        raise ValueError("internal shape mismatch")

    monkeypatch.setattr(cliff, "cells", broken)
    with pytest.raises(ValueError, match="internal shape mismatch") as e:
        main(["cliff", "--fast", "--out-dir", str(tmp_path)])
    assert not isinstance(e.value, BadArgumentError)


def test_eval_of_a_path_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["eval", "--model", "runs/typo.pt"]) == EXIT_BAD_ARGUMENT
    err = capsys.readouterr().err
    assert "model: runs/typo.pt does not exist" in err and "Traceback" not in err
    assert main(["eval", "--model", "gpt"]) == EXIT_BAD_ARGUMENT
    assert "model must be a .pt file that exists or a shipped model" in capsys.readouterr().err


def test_every_command_is_registered():
    sub = next(a for a in make_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "eval", "cliff", "transfer", "ablate", "echokv", "convert", "ssm-cliff", "passkey", "grade",
                                "preview"}


def test_every_pick_names_a_recipe_of_that_scale():
    """--scale means one thing: the recipe that --scale S (with or without --fast) runs is a recipe of scale S."""
    from echo_tutor.experiments import EXPERIMENTS

    for name, mod in EXPERIMENTS.items():
        for (scale, fast), recipe in mod.PICK.items():
            assert mod.RECIPES[recipe].scale == scale, f"{name}: --scale {scale} {'--fast' if fast else ''} runs " \
                                                       f"{recipe}, a recipe of scale {mod.RECIPES[recipe].scale}"


def test_a_new_experiment_in_the_registry_gets_its_command(monkeypatch, tmp_path, capsys):
    """Adding an experiment module to registry.EXPERIMENTS adds its command, its --help and its options;
    nothing in echo_tutor/cli names it."""
    import dataclasses
    import types

    from echo_tutor.experiments import registry
    from echo_tutor.experiments.command import Command, Option

    @dataclasses.dataclass(frozen=True)
    class ToyRecipe:
        name: str
        description: str
        scale: str
        width: int = 3

    calls = []

    def run(recipe, out_dir, *, grid=None, progress=True, shout=False, **overrides):
        calls.append((dataclasses.replace(recipe, **overrides), out_dir, grid.executor, progress, shout))

    toy = types.ModuleType("toy")
    toy.RECIPES = {"toy/lab": ToyRecipe("toy/lab", "a toy grid of widths", "lab"),
                   "toy/big": ToyRecipe("toy/big", "the toy at synth1m", "synth1m", width=9)}
    toy.PICK = {("lab", False): "toy/lab", ("synth1m", False): "toy/big"}
    toy.recipe_for = lambda scale="lab", fast=False: toy.RECIPES[toy.PICK[(scale, fast)]]
    toy.run = run
    toy.COMMAND = Command("toy", "a toy experiment for the registry test", "runs/toy", (
        Option("--width", "the toy's width", "positive_int"),
        Option("--shout", "say it louder", to="run", flag_only=True),
    ))
    monkeypatch.setitem(registry.EXPERIMENTS, "toy", toy)

    with pytest.raises(SystemExit) as e:
        main(["toy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "a toy experiment for the registry test" in out and "toy/lab" in out and "toy/big" in out
    assert "--width WIDTH" in out and "the toy's width" in out and "--shout" in out and "--executor" in out

    assert main(["toy", "--width", "5", "--shout", "--out-dir", str(tmp_path), "--quiet"]) == 0
    assert calls[-1] == (ToyRecipe("toy/lab", "a toy grid of widths", "lab", width=5), tmp_path, "local", False, True)
    assert main(["toy", "--scale", "synth1m", "--out-dir", str(tmp_path)]) == 0
    assert calls[-1][0].width == 9 and calls[-1][4] is False
    with pytest.raises(SystemExit) as e:
        main(["toy", "--width", "0"])
    assert e.value.code == 2 and "expected a positive integer" in capsys.readouterr().err


def test_a_bad_option_declaration_is_refused():
    from echo_tutor.experiments.command import Option

    with pytest.raises(BadArgumentError, match="flag must start with '--'"):
        Option("presets", "the presets")
    with pytest.raises(BadArgumentError, match="type must be one of"):
        Option("--presets", "the presets", type="list")
    with pytest.raises(BadArgumentError, match="to must be 'recipe', 'only' or 'run'"):
        Option("--presets", "the presets", to="cli")


def test_every_command_the_readme_shows_parses():
    """Each ``echo-tutor ...`` line of the README's command block names a command and flags the CLI has (parsed,
    not run: argparse exits 2 on an unknown flag or value)."""
    import pathlib
    import shlex

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [ln.split("#")[0].strip() for ln in text.splitlines() if ln.startswith("echo-tutor ")]
    assert len(lines) >= 8
    parser = make_parser()
    for line in lines:
        args = parser.parse_args(shlex.split(line)[1:])
        assert args.command, line
