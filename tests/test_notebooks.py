"""The labs: each percent-format .py source has an output-free .ipynb twin with the same cells, and
every lab has at least two checked "your turn" exercises."""

import json
import os
import pathlib
import re

import pytest
from browser_env import browser_can_run  # tests/ is on sys.path (rootdir conftest)

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


@pytest.mark.slow
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.stem)
def test_lab_runs_to_the_end_with_no_exercise_done(src, tmp_path, request):
    """A learner who has not done any exercise yet can Run All to the end: each exercise cell says it is not
    done, later cells use the reference, and the last cell lists the exercises (solutions off, FAST).

    Where the browser phase runs this lab in the same session, it is this run (tests/browser runs the labs with
    no exercise done and checks the same two things), so the lab is not executed a third time here."""
    if browser_can_run() and any(it.name == f"test_lab_in_browser[{src.stem}]" for it in request.session.items):
        pytest.skip("tests/browser runs this lab with no exercise done in this session")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(src.with_suffix(".ipynb"), as_version=4)
    env = dict(os.environ, ECHO_TUTOR_SOLUTIONS="0", ECHO_TUTOR_FAST="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    old = {k: os.environ.get(k) for k in ("ECHO_TUTOR_SOLUTIONS", "ECHO_TUTOR_FAST")}
    os.environ.update({k: env[k] for k in old})
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NB)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    n = len(re.findall(r"labs\.exercise\((\w+),", src.read_text()))
    assert text.count("not attempted yet") == n, f"{src.name}: every exercise says it is not done"
    assert f"0 of {n} passing" in text, f"{src.name}: the last cell lists the exercises"
