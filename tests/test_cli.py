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
    assert set(sub.choices) == {"train", "eval", "cliff", "transfer", "ablate", "echokv", "convert", "grade", "preview"}
