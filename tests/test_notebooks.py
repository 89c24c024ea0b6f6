"""The labs: each percent-format .py source has an output-free .ipynb twin with the same cells, and
every lab has at least two checked "your turn" exercises."""

import json
import pathlib
import re

import pytest

jupytext = pytest.importorskip("jupytext")

NB = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NB.glob("[0-9][0-9]_*.py"))


def test_there_are_labs():
    assert SOURCES, "no lab sources found in notebooks/"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_ipynb_twin_is_in_sync_and_output_free(src):
    twin = src.with_suffix(".ipynb")
    assert twin.exists(), f"{twin.name} missing: run `make notebooks`"
    raw = json.loads(twin.read_text())
    code = [c for c in raw["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{twin.name} has outputs"
    want = [(c.cell_type, c.source) for c in jupytext.read(src).cells]
    got = [(c.cell_type, c.source) for c in jupytext.read(twin).cells]
    assert got == want, f"{twin.name} is out of date with {src.name}: run `make notebooks`"


@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_lab_has_checked_exercises_and_fast_switch(src):
    text = src.read_text()
    exercises = re.findall(r"labs\.exercise\((\w+),", text)
    assert len(exercises) >= 2, f"{src.name}: at least two 'your turn' exercises"
    for name in exercises:
        assert re.search(rf"check_\w*\({name}\)", text), f"{src.name}: exercise {name} has no checker call"
        assert re.search(rf"def {name}\(.*\n(?:.*\n)*?\s+raise NotImplementedError", text), f"{name}: no student stub"
    assert "labs.FAST" in text, f"{src.name} must read the FAST switch"
    assert re.search(r"^assert ", text, re.M), f"{src.name} must check its own results"
    assert re.search(r"labs\.report\(\"lab\d\d\"\)", text), f"{src.name} must end with labs.report(...)"


def test_make_test_runs_each_lab_once_as_learner_and_instructor():
    """``make test`` runs every lab with ``ECHO_TUTOR_SOLUTIONS=both`` (scripts/test.sh): one execution is the
    learner's no-exercise run (each stub must say "not attempted yet", or the lab fails: tests/test_exercises.py)
    and the instructor's solved run, whether nbval or the browser phase executes it."""
    script = (NB.parent / "scripts" / "test.sh").read_text()
    assert "ECHO_TUTOR_SOLUTIONS=both" in script
    assert "--nbval-lax" in script and "tests/browser" in script
