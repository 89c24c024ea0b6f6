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
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import re
import sys
from typing import Iterable

from ..errors import BadArgumentError
from .rubric import OPEN, PARTICIPATION, RUBRIC, WRITTEN, fmt_points, items_of, total_points

__all__ = ["grade", "main", "find_submissions", "grade_submissions", "student_report"]

_CHECK = '''
import importlib, json
from echo_tutor import labs as _labs
from echo_tutor.labs import ExerciseError as _EE
assert not _labs.SOLUTIONS, "ECHO_TUTOR_SOLUTIONS is on: this would grade the solutions"
_mod, _res = importlib.import_module("echo_tutor.labs.{lab}"), {{}}
for _n in {names!r}:
    _f = globals().get(_n)
    try:
        getattr(_mod, "check_" + _n)(getattr(_f, "student", _f))  # the learner's own function, raising mode
        _res[_n] = "pass"
    except _EE as _e:
        _res[_n] = "FAIL: " + str(_e)
print("GRADE", json.dumps(_res))
'''


def grade(path: str, timeout: int = 1800) -> dict[str, str]:
    """Run the notebook at ``path`` and re-check its exercises: ``{exercise: "pass" | "FAIL: ..." | ...}``."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    if not os.path.isfile(path):
        raise BadArgumentError(f"path: {path} is not a file (a submitted .ipynb or jupytext .py)")
    nb = jupytext.read(path)
    found = [m for c in nb.cells if c.cell_type == "code"
             for m in re.findall(r'(\w+) = labs\.exercise\(\1, "(lab\d\d)"\)', c.source)]
    names, labs_ = list(dict.fromkeys(n for n, _ in found)), {lab for _, lab in found}
    if len(labs_) != 1:
        raise BadArgumentError(f"path: {path}: expected the exercises of one lab, found {sorted(labs_)}")
    lab = labs_.pop()
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK.format(lab=lab, names=names)))
    saved = {k: os.environ.get(k) for k in ("ECHO_TUTOR_SOLUTIONS", "ECHO_TUTOR_FAST")}
    os.environ.pop("ECHO_TUTOR_SOLUTIONS", None)  # the learner's code, not the solutions
    os.environ.setdefault("ECHO_TUTOR_FAST", "1")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}}).execute()
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    res = json.loads(out.split("GRADE", 1)[1]) if "GRADE" in out else {}
    return {n: res.get(n, "not graded (the notebook did not get this far)") for n in names}


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


def student_report(student: str, verdicts: dict[str, dict[str, str]]) -> tuple[str, list[dict[str, object]]]:
    """The Markdown report of one student and its CSV rows, from ``{lab: {exercise: verdict}}``."""
    rows: list[dict[str, object]] = []
    lines = [f"# {student}: grade report", ""]
    checked = checked_max = 0.0
    for lab in sorted(verdicts):
        lines += [f"## {lab}", "", "| exercise | verdict | points | of |", "|---|---|---:|---:|"]
        for it in items_of(lab):
            name = it.key.split(".", 1)[1]
            verdict = verdicts[lab].get(name, "not in the notebook")
            got = it.checked if verdict == "pass" else 0.0
            checked, checked_max = checked + got, checked_max + it.checked
            short = verdict if len(verdict) <= 160 else verdict[:157] + "..."
            lines.append(f"| `{name}` | {short.replace('|', '/')} | {fmt_points(got)} | {fmt_points(it.checked)} |")
            rows.append(dict(student=student, lab=lab, item=name, verdict=verdict, points=round(got, 3), of=round(it.checked, 3),
                             marked_by="checker"))
        lines.append("")
    manual = [it for it in OPEN.values() if it.lab in verdicts] + [WRITTEN, PARTICIPATION]
    lines += [f"**Checked by the checkers: {fmt_points(checked)} of {fmt_points(checked_max)} points** (of the labs "
              f"submitted; {fmt_points(total_points())} in the whole module).", "", "## To mark by hand", "",
              "| part | points | of | criteria |", "|---|---:|---:|---|"]
    for it in manual:
        lines.append(f"| {it.title} | | {fmt_points(it.manual)} | {it.criteria} |")
        rows.append(dict(student=student, lab=it.lab, item=it.key, verdict="", points="", of=it.manual,
                         marked_by="instructor"))
    missing = sorted({it.lab for it in RUBRIC if it.lab} - set(verdicts))
    if missing:
        lines += ["", f"Labs not submitted: {', '.join(missing)}."]
    return "\n".join(lines) + "\n", rows


def grade_submissions(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike = "grades",
                      timeout: int = 1800) -> dict[str, dict[str, dict[str, str]]]:
    """Grade every student's notebooks; write ``out_dir/<student>.md`` and ``out_dir/grades.csv``."""
    subs = find_submissions(paths)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict[str, str]]] = {}
    all_rows: list[dict[str, object]] = []
    for student, notebooks in subs.items():
        verdicts: dict[str, dict[str, str]] = {}
        for nb in notebooks:
            print(f"[grade] {student}: {nb.name} ...", flush=True)
            verdicts[lab_of(nb)] = grade(str(nb), timeout=timeout)
        text, rows = student_report(student, verdicts)
        (out / f"{student}.md").write_text(text)
        all_rows += rows
        results[student] = verdicts
        got = sum(r["points"] for r in rows if r["marked_by"] == "checker")
        print(f"[grade] {student}: {fmt_points(got)} checked points; report {out / (student + '.md')}", flush=True)
    with open(out / "grades.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "lab", "item", "verdict", "points", "of", "marked_by"])
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
