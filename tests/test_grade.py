"""The grading script re-runs the checkers on the learner's own functions: editing a check call away, or
calling the library, does not pass."""

import pathlib
import re

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


@pytest.mark.slow
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

HOOKED = NOTEBOOK + '''
# %%
def _rewrite(lines):
    return ["print('GRADE {}')\\n"]


get_ipython().input_transformers_post.append(_rewrite)
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


@pytest.mark.slow
def test_a_notebook_cannot_replace_the_checkers_or_the_libraries_they_use(tmp_path):
    """The review's attack: a last cell replacing the checkers graded 'three of three pass'."""
    path = tmp_path / "00_tour.py"
    path.write_text(TAMPERED)
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"] == "pass" and res["ska_state_floats"].startswith("FAIL: ska_state_floats")
    path.write_text(PATCHED_TORCH)  # the patch is not a definition: the grading kernel never runs it
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"] == "pass"
    path.write_text(HOOKED)  # the second review's attack: an IPython hook rewriting the grading cell
    res = grade(str(path), timeout=300)
    assert res["kv_cache_bytes"].startswith("FAIL: kv_cache_bytes") and res["ska_state_floats"].startswith("FAIL")


def test_flags_point_the_instructor_at_copies_and_odd_code(tmp_path):
    import inspect
    import textwrap

    from echo_tutor.labs import lab02
    from echo_tutor.labs.grade import flags

    pasted = inspect.getsource(lab02._power_filter_solution).replace("_power_filter_solution", "power_filter")
    path = tmp_path / "02_ska.py"
    path.write_text(COPIED.split("# %%\ndef ridge_readout")[0] + "# %%\n" + textwrap.dedent(pasted) +
                    '\n\npower_filter = labs.exercise(power_filter, "lab02")\n')
    got = flags(path)
    assert got["power_filter"] == ["a copy of the reference solution (names and comments aside)"]
    path.write_text(COPIED)  # a one-line formula: any right answer looks like the solution, so no flag
    assert "ridge_readout" not in flags(path)
    path = tmp_path / "00_tour.py"
    path.write_text(TAMPERED)
    assert "setattr(...)" in flags(path)["notebook"]


def _solved(src_text: str, lab: str):
    """The lab's own source with each stub replaced by its solution's code, renamed, where that code stands alone
    (uses no other private name of the lab): what a learner who got them right hands in."""
    import ast
    import importlib
    import inspect
    import textwrap
    import types

    mod = importlib.import_module(f"echo_tutor.labs.{lab}")
    names = re.findall(r'(\w+) = labs\.exercise\(\1, "lab\d\d"\)', src_text)
    lines = src_text.splitlines()
    stubs = {n.name: n for n in ast.parse(src_text).body if isinstance(n, ast.FunctionDef) and n.name in names}
    solved = []
    for name in sorted(stubs, key=lambda k: -stubs[k].lineno):  # bottom-up, so earlier line numbers hold
        sol = getattr(mod, f"_{name}_solution")
        code = textwrap.dedent(inspect.getsource(sol)).replace(f"_{name}_solution", name)
        tree = ast.parse(code)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        relative = any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
        insides = {u for u in used if u in sol.__globals__ and not isinstance(sol.__globals__[u], types.ModuleType)}
        if relative or insides:  # leans on the lab module's own names, which a notebook does not have
            continue
        node = stubs[name]
        start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
        mods = sorted(f"import {sol.__globals__[u].__name__} as {u}" for u in used
                      if isinstance(sol.__globals__.get(u), types.ModuleType))  # what the learner imports
        lines[start:node.end_lineno] = mods + code.rstrip("\n").splitlines()
        solved.append(name)
    return "\n".join(lines) + "\n", solved


@pytest.mark.slow
@pytest.mark.parametrize("lab_src", sorted(pathlib.Path(__file__).resolve().parents[1].glob("notebooks/0*.py")),
                         ids=lambda p: p.stem)
def test_every_lab_grades_its_solved_exercises_in_the_definitions_only_kernel(lab_src, tmp_path):
    """Run only the notebook's definitions, then the checkers: a right answer passes in every lab (the grading
    kernel has what the learner's functions need), an untouched stub is 'not attempted'."""
    lab = "lab" + lab_src.name[:2]
    text, solved = _solved(lab_src.read_text(), lab)
    path = tmp_path / lab_src.name
    path.write_text(text)
    res = grade(str(path), timeout=600)
    for name, verdict in res.items():
        if name in solved:
            assert verdict == "pass", (name, verdict)
        else:
            assert "not attempted" in verdict, (name, verdict)
    assert solved, "at least one exercise of each lab is checked with a right answer"
