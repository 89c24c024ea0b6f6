"""The grid commands from the command line: resumable out-dirs, the Ray executor, failed cells, bad flags."""

import os
import pathlib
import subprocess
import sys

import pytest
from conftest import RAY_REASON, worker_pythonpath

from echo_tutor.cli import EXIT_CELLS_FAILED, main
from echo_tutor.experiments import ablation
from echo_tutor.grid import RECORDS_FILE, GridOptions
# The lab-scale K ablation (K = 0, 1, 2: three cells), two training steps each.
ABLATE = ["ablate", "--scale", "lab", "--steps", "2", "--seeds", "0"]



def cli(args: list[str], tmp_path: pathlib.Path, name: str) -> tuple[int, str, str]:
    """Run ``python -m echo_tutor.cli *args`` in a fresh process (one thread, this checkout on PYTHONPATH,
    also for Ray workers); return (exit status, stdout, stderr). Output goes to files, not pipes, so that
    Ray's chatter never blocks the process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=worker_pythonpath())
    env.pop("RAY_ADDRESS", None)
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("wb") as o, err.open("wb") as e:
        rc = subprocess.run([sys.executable, "-m", "echo_tutor.cli", *args], env=env, cwd=tmp_path, stdout=o,
                            stderr=e, timeout=300).returncode
    return rc, out.read_text(), err.read_text()


def _table(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("|")]


@pytest.mark.slow
def test_cli_ablate_resumes(tmp_path):
    """The command in a fresh process: it writes its records and summary, and the same command into the same
    out-dir trains nothing. (Ray gives the same records as the local run: tests/test_ablation_experiment.py,
    in this process; the flags reaching the grid: the test below.)"""
    local = tmp_path / "local"
    rc, out, err = cli([*ABLATE, "--executor", "local", "--out-dir", str(local), "--quiet"], tmp_path, "first")
    assert rc == 0, err[-3000:]
    assert "| K=2 (paper) |" in out
    first = {name: (local / name).read_text() for name in (RECORDS_FILE, "ablation.json", "ablation.md")}
    assert len(first[RECORDS_FILE].splitlines()) == 3

    # the same command into the same out-dir trains nothing: records.jsonl untouched, the summary rebuilt alike
    rc, again, err = cli([*ABLATE, "--executor", "local", "--out-dir", str(local)], tmp_path, "again")
    assert rc == 0, err[-3000:]
    assert {name: (local / name).read_text() for name in first} == first
    assert "3/3" in err + again  # the progress starts (and ends) at 3 of 3 cells done (stdout without tqdm)
    assert _table(again) == _table(out) and len(_table(out)) == 5


def test_cli_grid_flags_reach_the_experiment(tmp_path, monkeypatch):
    pytest.importorskip("ray", reason=RAY_REASON)  # --executor ray is refused, with the install hint, without it
    seen = {}
    monkeypatch.setattr(ablation, "run", lambda recipe, out_dir, **kw: seen.update(kw, out_dir=out_dir))
    assert main([*ABLATE, "--executor", "ray", "--address", "auto", "--cpus-per-cell", "2", "--max-retries", "0",
                 "--out-dir", str(tmp_path)]) == 0
    assert seen["grid"] == GridOptions(executor="ray", address="auto", cpus_per_cell=2.0, max_retries=0)
    assert seen["out_dir"] == tmp_path and seen["steps"] == 2


def test_cli_failed_cells_exit_1_and_are_listed(tmp_path, monkeypatch, capsys):
    real = ablation.train

    def train(model, task, *args, **kwargs):
        if (args[0] if args else kwargs["config"]).seed == 1:
            raise RuntimeError("seed 1 fell over")
        return real(model, task, *args, **kwargs)

    monkeypatch.setattr(ablation, "train", train)
    argv = ["ablate", "--recipe", "ablation/small", "--tasks", "mqar_gap", "--powers", "4", "--steps", "2", "--seeds", "0", "1",
            "--out-dir", str(tmp_path), "--quiet"]
    assert main(argv) == EXIT_CELLS_FAILED != 2
    out, err = capsys.readouterr()
    assert "| K=4 |" in out and "(1/2 seeds)" in out  # what the other cell gave is printed and written
    lines = err.splitlines()
    assert lines[0] == f"echo-tutor ablate: 1 of 2 cells failed (records in {tmp_path / RECORDS_FILE}; rerun the " \
                       "same command to retry them):"
    assert len(lines) == 2 and '"config":"K=4"' in lines[1] and '"seed":1' in lines[1]
    assert lines[1].endswith(": RuntimeError: seed 1 fell over")
    assert (tmp_path / "ablation.json").exists()


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["ablate", "--executor", "slurm"], "invalid choice"),
        (["ablate", "--cpus-per-cell", "0"], "expected a positive number"),
        (["cliff", "--gpus-per-cell", "-1"], "expected a number >= 0"),
        (["transfer", "--gpus-per-cell", "nan"], "expected a number >= 0"),
        (["transfer", "--max-retries", "-1"], "expected an integer >= 0"),
        (["ablate", "--max-retries", "two"], "expected an integer >= 0"),
        (["cliff", "--address", "auto"], "--address needs --executor ray"),
    ],
)
def test_cli_bad_grid_flags_exit_2(argv, msg, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--out-dir", str(tmp_path / "never")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not (tmp_path / "never").exists()


def test_cli_ray_without_ray_says_how_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        main(["ablate", "--executor", "ray", "--out-dir", str(tmp_path / "never")])
    assert e.value.code == 2
    assert "pip install 'echo_tutor[cluster]'" in capsys.readouterr().err
