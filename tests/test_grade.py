"""The grading script re-runs the checkers on the learner's own functions: editing a check call away, or
calling the library, does not pass."""

import pytest

pytest.importorskip("nbclient")
jupytext = pytest.importorskip("jupytext")

from echo_tutor.labs.grade import grade  # noqa: E402

NOTEBOOK = '''# %%
from echo_tutor import labs
from echo_tutor.labs import lab00

# %%
def kv_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes):
    return n_layers * n_kv_heads * head_dim * tokens * dtype_bytes   # forgets the factor 2 (keys and values)


kv_cache_bytes = labs.exercise(kv_cache_bytes, "lab00")
# the learner deleted the check call

# %%
def ska_state_floats(n_heads, r, head_dim):
    from echo_tutor.ska import SpectralKoopmanAttention
    return SpectralKoopmanAttention(n_heads * head_dim, n_heads, r).state_nbytes() // 4   # asks the library


ska_state_floats = labs.exercise(ska_state_floats, "lab00")
lab00.check_ska_state_floats(ska_state_floats)
'''


def test_grade_rechecks_and_refuses_shortcuts(tmp_path):
    path = tmp_path / "student_00.py"
    path.write_text(NOTEBOOK)
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"].startswith("FAIL: kv_cache_bytes: expected")
    assert res["ska_state_floats"].startswith("FAIL: ska_state_floats") and "the answer for you" in res["ska_state_floats"]


RIGHT = '''# %%
from echo_tutor import labs
from echo_tutor.labs import lab00

# %%
def kv_cache_bytes(n_layers, n_kv_heads, head_dim, tokens, dtype_bytes):
    return 2 * n_layers * n_kv_heads * head_dim * tokens * dtype_bytes


kv_cache_bytes = labs.exercise(kv_cache_bytes, "lab00")
lab00.check_kv_cache_bytes(kv_cache_bytes)
'''


def test_a_class_is_graded_into_one_report_per_student_and_a_csv(tmp_path):
    import csv

    from echo_tutor.cli import main
    from echo_tutor.labs.rubric import fmt_points, items_of

    subs = tmp_path / "subs"
    (subs / "alice").mkdir(parents=True)
    (subs / "bob").mkdir()
    (subs / "alice" / "00_tour.py").write_text(NOTEBOOK)
    (subs / "bob" / "00_tour.py").write_text(RIGHT)
    assert main(["grade", str(subs), "--out", str(tmp_path / "grades"), "--timeout", "300"]) == 0
    alice = (tmp_path / "grades" / "alice.md").read_text()
    bob = (tmp_path / "grades" / "bob.md").read_text()
    share = next(it.checked for it in items_of("lab00") if it.key == "lab00.kv_cache_bytes")
    assert "| `kv_cache_bytes` | FAIL: kv_cache_bytes: expected" in alice and f"| `kv_cache_bytes` | pass | {fmt_points(share)} |" in bob
    assert "the answer for you" in alice and "not in the notebook" in bob  # bob did not hand in ska_state_floats
    assert "## To mark by hand" in bob and "Written analysis" in bob and "Labs not submitted: lab01" in bob
    rows = list(csv.DictReader(open(tmp_path / "grades" / "grades.csv")))
    got = {(r["student"], r["item"]): r for r in rows}
    assert float(got[("bob", "kv_cache_bytes")]["points"]) == round(share, 3) and float(got[("alice", "kv_cache_bytes")]["points"]) == 0
    assert got[("bob", "written")]["marked_by"] == "instructor"


def test_grade_refuses_what_is_not_a_submission(tmp_path, capsys):
    from echo_tutor.cli import main

    assert main(["grade", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["grade", str(tmp_path / "empty")]) == 2
    assert "no .ipynb or .py notebook found" in capsys.readouterr().err


TAMPERED = RIGHT + '''
# %%
def ska_state_floats(n_heads, r, head_dim):
    return 0


ska_state_floats = labs.exercise(ska_state_floats, "lab00")

# %%
import echo_tutor.labs.lab00 as _m
for _n in ("kv_cache_bytes", "ska_state_floats", "crossover_tokens"):
    setattr(_m, "check_" + _n, lambda f: None)
'''

PATCHED_TORCH = RIGHT + '''
# %%
import torch
torch.allclose = lambda *a, **k: True
'''

COPIED = '''# %%
from echo_tutor import labs
from echo_tutor.labs import lab02
import torch

# %%
def ridge_readout(G, C, q):
    """my own"""
    # the learner pasted the package's solution, renaming its variables
    return (C @ torch.linalg.solve(G, q.mT)).mT


ridge_readout = labs.exercise(ridge_readout, "lab02")
lab02.check_ridge_readout(ridge_readout)
'''


def test_a_notebook_cannot_replace_the_checkers_or_the_libraries_they_use(tmp_path):
    """The review's attack: a last cell replacing the checkers graded 'three of three pass'."""
    path = tmp_path / "00_tour.py"
    path.write_text(TAMPERED)
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"] == "pass" and res["ska_state_floats"].startswith("FAIL: ska_state_floats")
    path.write_text(PATCHED_TORCH)
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"] == "FAIL: not graded: the notebook replaced library functions the checkers use (torch.allclose)"


def test_flags_point_the_instructor_at_copies_and_odd_code(tmp_path):
    import inspect
    import textwrap

    from echo_tutor.labs import lab02
    from echo_tutor.labs.grade import flags

    pasted = inspect.getsource(lab02._ridge_readout_solution).replace("_ridge_readout_solution", "ridge_readout")
    path = tmp_path / "02_ska.py"
    path.write_text(COPIED.split("# %%\ndef ridge_readout")[0] + "# %%\n" + textwrap.dedent(pasted) +
                    '\n\nridge_readout = labs.exercise(ridge_readout, "lab02")\n')
    got = flags(path)
    assert got["ridge_readout"] == ["a copy of the reference solution (names and comments aside)"]
    path = tmp_path / "00_tour.py"
    path.write_text(TAMPERED)
    assert "setattr(...)" in flags(path)["notebook"]
