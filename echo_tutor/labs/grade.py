"""Grade submitted labs: ``echo-tutor grade SUBMISSIONS... [--out reports]``.

Runs each notebook top to bottom in a fresh kernel with the learner's code (``ECHO_TUTOR_SOLUTIONS`` off,
FAST on), then re-runs every exercise's checker on the learner's own function in that kernel (so editing a
check call away changes nothing). The checkers refuse a call to a function that computes the answer, as they
do in the labs. Works on ``.ipynb`` and on jupytext ``.py``.

``SUBMISSIONS`` are notebooks or folders: a folder holding one sub-folder per student (``subs/alice/03_*.ipynb``)
grades every student; a folder of notebooks is one student (the folder's name). Per student, ``--out`` gets
``<student>.md``: each lab's exercises with the checker's verdict and the points the rubric
(:mod:`echo_tutor.labs.rubric`) gives, then the parts to mark by hand (the open-ended exercises' written
criteria, the written analysis, participation) with their points left blank; and ``grades.csv`` has one row
per student, lab and item. ``python -m echo_tutor.labs.grade FILE...`` prints the verdicts only.

What stops a notebook from grading itself: the checks run after every ``echo_tutor`` module the notebook loaded
is dropped and imported afresh (a checker the notebook replaced is gone); a notebook that replaced library
functions the checkers use (``torch.allclose``, ...) is not graded automatically; inside a checker, the
learner's function may not start a thread or process, call the package's own routine for the answer, or
replace anything a checker uses (``echo_tutor.labs.guard``, ``integrity``). The checkers run in the learner's
kernel, so this raises the bar; it is not a sandbox. The report therefore also flags, for the instructor to
read, an exercise whose code is the reference solution up to names and comments (the solutions ship with the
package, for instructor mode) and code a notebook has no reason to contain (:func:`flags`).
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import pathlib
import re
import sys
from typing import Iterable

from ..errors import BadArgumentError
from .rubric import OPEN, PARTICIPATION, RUBRIC, WRITTEN, fmt_points, items_of, total_points
from .submission import definitions, exercise_names
from .submission import flags as _flags

__all__ = ["grade", "main", "find_submissions", "grade_submissions", "student_report", "flags", "lab_of"]

# The grading cell, run in a fresh kernel after only the definitions of the learner's notebook
# (submission.definitions): it drops every echo_tutor module, imports the checkers afresh, refuses to grade if a
# library function the checkers use is not the library's own (integrity.foreign_callables), runs each checker on
# the learner's own function, and prints the verdicts under a key the learner's code does not know.
_CHECK = '''
import importlib as _il, json as _json, sys as _sys
_out = _sys.stdout  # the cell's output, taken before any learner's function runs
for _m in [m for m in list(_sys.modules) if m.split(".")[0] in ("echo_tutor", "echo_kernels")]:
    del _sys.modules[_m]
_labs = _il.import_module("echo_tutor.labs")
_EE = _labs.ExerciseError
assert not _labs.SOLUTIONS, "ECHO_TUTOR_SOLUTIONS is on: this would grade the solutions"
_foreign = _il.import_module("echo_tutor.labs.integrity").foreign_callables()
_mod, _res = _il.import_module("echo_tutor.labs.{lab}"), {{}}
for _n in {names!r}:
    _f = globals().get(_n)
    if _foreign:
        _res[_n] = "FAIL: not graded: the notebook replaced library functions the checkers use (" + ", ".join(_foreign[:4]) + ")"
        continue
    if _f is None:
        _res[_n] = "FAIL: not graded: no definition of it runs without the rest of the notebook"
        continue
    try:
        getattr(_mod, "check_" + _n)(getattr(_f, "student", _f))  # the learner's own function, raising mode
        _res[_n] = "pass"
    except _EE as _e:
        _res[_n] = "FAIL: " + str(_e)
    except BaseException as _e:  # a learner's function that escapes the checker's own handling
        _res[_n] = "FAIL: the check stopped: " + type(_e).__name__
_out.write("{key} " + _json.dumps(_res) + "\\n")
_out.flush()
'''


def _cells(path: str | os.PathLike) -> list[str]:
    import jupytext

    return [c.source for c in jupytext.read(str(path)).cells if c.cell_type == "code"]


def _run(nb, path: str | os.PathLike, timeout: int) -> None:
    """Execute ``nb`` in a fresh kernel with the learner's settings (solutions off, FAST on), errors allowed."""
    from nbclient import NotebookClient

    import torch

    saved = {k: os.environ.get(k) for k in ("ECHO_TUTOR_SOLUTIONS", "ECHO_TUTOR_FAST", "TRITON_INTERPRET")}
    os.environ.pop("ECHO_TUTOR_SOLUTIONS", None)  # the learner's code, not the solutions
    os.environ.setdefault("ECHO_TUTOR_FAST", "1")
    if not torch.cuda.is_available():  # Triton kernels (lab 07) run in its interpreter, set before any import
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def run_notebook(path: str | os.PathLike, out: str | os.PathLike, timeout: int = 1800) -> int:
    """Run the learner's whole notebook (solutions off, FAST) and save it executed at ``out``, for the instructor
    to read the outputs the hand-marked criteria need; returns the number of cells that raised. The verdicts do
    not come from this run (:func:`grade`)."""
    import jupytext
    import nbformat

    nb = jupytext.read(str(path))
    _run(nb, path, timeout)
    nbformat.write(nb, str(out))
    return sum(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def grade(path: str, timeout: int = 1800) -> dict[str, str]:
    """Re-check a submitted notebook's exercises: ``{exercise: "pass" | "FAIL: ..." | ...}``.

    A fresh kernel runs only the notebook's definitions (:func:`~echo_tutor.labs.submission.definitions`:
    imports, functions, the exercise lines, inert assignments), never its other statements, then the grading
    cell: each checker, imported afresh, on the learner's own function."""
    import nbformat

    if not os.path.isfile(path):
        raise BadArgumentError(f"path: {path} is not a file (a submitted .ipynb or jupytext .py)")
    cells = _cells(path)
    names, labs_ = exercise_names(cells)
    if len(labs_) != 1:
        raise BadArgumentError(f"path: {path}: expected the exercises of one lab, found {sorted(labs_)}")
    lab = labs_.pop()
    statements, dropped = definitions(cells)
    source = ("for _src in " + repr(statements) + ":\n    try:\n        exec(_src, globals())\n"
              "    except Exception:  # a name only the rest of the notebook computes: that statement is skipped\n"
              "        pass\n")
    key = "GRADE-" + secrets.token_hex(8)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source),
                                         nbformat.v4.new_code_cell(_CHECK.format(lab=lab, names=names, key=key))])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    _run(nb, path, timeout)
    out = "".join(o.get("text", "") for o in nb.cells[-1].get("outputs", []) if o.get("output_type") == "stream")
    lines = [ln for ln in out.splitlines() if ln.startswith(key + " ")]
    res = json.loads(lines[-1][len(key) + 1:]) if lines else {}
    errors = [o for o in nb.cells[0].get("outputs", []) if o.get("output_type") == "error"]
    missing = ("not graded: the notebook's definitions raised " + f"{errors[0].get('ename')}: {errors[0].get('evalue')}"
               if errors else "not graded (the grading did not finish)")
    verdicts = {}
    for n in names:
        if n in dropped:
            verdicts[n] = (f"FAIL: not graded automatically: {dropped[n]} would run code when the function is defined; "
                           "read it by hand")
        else:
            verdicts[n] = res.get(n, missing)
    return verdicts


def flags(path: str | os.PathLike, lab: str | None = None) -> dict[str, list[str]]:
    """What the instructor should read in a submission (:func:`echo_tutor.labs.submission.flags`)."""
    return _flags(_cells(path), lab or lab_of(path))


def lab_of(path: str | os.PathLike) -> str:
    """The lab a submitted notebook is, from its exercise cells (``"lab03"``)."""
    import jupytext

    found = {lab for c in jupytext.read(str(path)).cells if c.cell_type == "code"
             for lab in re.findall(r'labs\.exercise\(\w+, "(lab\d\d)"\)', c.source)}
    if len(found) != 1:
        raise BadArgumentError(f"path: {path}: expected the exercises of one lab, found {sorted(found)}")
    return found.pop()


def _notebooks(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".ipynb", ".py") and p.is_file()
                  and not p.name.startswith("."))


def find_submissions(paths: Iterable[str | os.PathLike]) -> dict[str, list[pathlib.Path]]:
    """``{student: [notebook, ...]}`` from files and folders (see the module doc)."""
    out: dict[str, list[pathlib.Path]] = {}
    for raw in paths:
        p = pathlib.Path(raw)
        if p.is_file():
            out.setdefault(p.parent.name or "student", []).append(p)
        elif p.is_dir():
            subs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
            if subs and not _notebooks(p):
                for d in subs:
                    out.setdefault(d.name, []).extend(_notebooks(d))
            else:
                out.setdefault(p.name, []).extend(_notebooks(p))
        else:
            raise BadArgumentError(f"submissions: {raw} does not exist (a notebook, or a folder of them)")
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise BadArgumentError("submissions: no .ipynb or .py notebook found")
    return out


def student_report(student: str, verdicts: dict[str, dict[str, str]],
                   flagged: dict[str, dict[str, list[str]]] | None = None) -> tuple[str, list[dict[str, object]]]:
    """The Markdown report of one student and its CSV rows, from ``{lab: {exercise: verdict}}`` and the
    :func:`flags` of each lab's notebook (``{lab: {exercise or "notebook": [reasons]}}``)."""
    flagged = flagged or {}
    rows: list[dict[str, object]] = []
    lines = [f"# {student}: grade report", ""]
    checked = checked_max = 0.0
    for lab in sorted(verdicts):
        lab_flags = flagged.get(lab, {})
        lines += [f"## {lab}", ""]
        if lab_flags.get("notebook"):
            notes = lab_flags["notebook"]
            ran = [x for x in notes if x.startswith("its run with outputs")]
            odd = [x for x in notes if not x.startswith("its run with outputs")]
            lines += [f"The notebook, {ran[0]}.", ""] if ran else []
            lines += [f"**Read this notebook's code**: it contains {', '.join(odd)}.", ""] if odd else []
        lines += ["| exercise | verdict | points | of | flags |", "|---|---|---:|---:|---|"]
        for it in items_of(lab):
            name = it.key.split(".", 1)[1]
            verdict = verdicts[lab].get(name, "not in the notebook")
            got = it.checked if verdict == "pass" else 0.0
            checked, checked_max = checked + got, checked_max + it.checked
            short = verdict if len(verdict) <= 160 else verdict[:157] + "..."
            flag = "; ".join(lab_flags.get(name, []))
            lines.append(f"| `{name}` | {short.replace('|', '/')} | {fmt_points(got)} | {fmt_points(it.checked)} | {flag} |")
            rows.append(dict(student=student, lab=lab, item=name, verdict=verdict, points=round(got, 3), of=round(it.checked, 3),
                             marked_by="checker", flags=flag))
        lines.append("")
    manual = [it for it in OPEN.values() if it.lab in verdicts] + [WRITTEN, PARTICIPATION]
    lines += [f"**Checked by the checkers: {fmt_points(checked)} of {fmt_points(checked_max)} points** (of the labs "
              f"submitted; {fmt_points(total_points())} in the whole module).", "", "## To mark by hand", "",
              "| part | points | of | criteria |", "|---|---:|---:|---|"]
    for it in manual:
        lines.append(f"| {it.title} | | {fmt_points(it.manual)} | {it.criteria} |")
        rows.append(dict(student=student, lab=it.lab, item=it.key, verdict="", points="", of=it.manual,
                         marked_by="instructor", flags=""))
    missing = sorted({it.lab for it in RUBRIC if it.lab} - set(verdicts))
    if missing:
        lines += ["", f"Labs not submitted: {', '.join(missing)}."]
    return "\n".join(lines) + "\n", rows


def grade_submissions(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike = "grades",
                      timeout: int = 1800, execute: bool = True) -> dict[str, dict[str, dict[str, str]]]:
    """Grade every student's notebooks; write ``out_dir/<student>.md``, ``out_dir/grades.csv`` and (``execute``)
    each notebook run whole with its outputs, ``out_dir/<student>/<notebook>.ipynb``, for the hand-marked parts."""
    subs = find_submissions(paths)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, str]]] = {}
    all_rows: list[dict[str, object]] = []
    for student, notebooks in subs.items():
        verdicts: dict[str, dict[str, str]] = {}
        flagged: dict[str, dict[str, list[str]]] = {}
        for nb in notebooks:
            print(f"[grade] {student}: {nb.name} ...", flush=True)
            lab = lab_of(nb)
            verdicts[lab] = grade(str(nb), timeout=timeout)
            flagged[lab] = flags(nb, lab)
            if execute:
                (out / student).mkdir(exist_ok=True)
                ran = out / student / f"{nb.stem}.ipynb"
                raised = run_notebook(nb, ran, timeout)
                flagged[lab].setdefault("notebook", []).insert(
                    0, f"its run with outputs: {student}/{ran.name} ({'every cell ran' if not raised else f'{raised} cell(s) raised'})")
        text, rows = student_report(student, verdicts, flagged)
        (out / f"{student}.md").write_text(text)
        all_rows += rows
        results[student] = verdicts
        got = sum(r["points"] for r in rows if r["marked_by"] == "checker")
        print(f"[grade] {student}: {fmt_points(got)} checked points; report {out / (student + '.md')}", flush=True)
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "lab", "item", "verdict", "points", "of", "marked_by", "flags"])
        w.writeheader()
        w.writerows(all_rows)
    return results


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    try:
        for path in paths:
            res = grade(path)
            for n, verdict in res.items():
                print(f"{path}  {n:<24} {verdict[:200]}")
            print(f"{path}: {sum(v == 'pass' for v in res.values())} of {len(res)} exercises pass")
    except BadArgumentError as e:
        print(f"grade: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
