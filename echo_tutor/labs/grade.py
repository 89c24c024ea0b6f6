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

import ast
import csv
import inspect
import json
import os
import pathlib
import re
import sys
from typing import Iterable

from ..errors import BadArgumentError
from .rubric import OPEN, PARTICIPATION, RUBRIC, WRITTEN, fmt_points, items_of, total_points

__all__ = ["grade", "main", "find_submissions", "grade_submissions", "student_report", "flags", "lab_of"]

# The grading cell, appended to the learner's notebook and run in its kernel after the learner's cells: it drops
# every echo_tutor module the notebook imported (so a checker the notebook replaced is gone) and imports the
# checkers afresh; it refuses to grade if a library function the checkers use was replaced by the notebook
# (integrity.foreign_callables); then it runs each checker on the learner's own function.
_CHECK = '''
import importlib as _il, json as _json, sys as _sys
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
    try:
        getattr(_mod, "check_" + _n)(getattr(_f, "student", _f))  # the learner's own function, raising mode
        _res[_n] = "pass"
    except _EE as _e:
        _res[_n] = "FAIL: " + str(_e)
print("GRADE", _json.dumps(_res))
'''

# Code a learner's notebook has no reason to contain: each is flagged in the report for the instructor to read.
_SUSPICIOUS = {
    r"\bsetattr\s*\(": "setattr(...)", r"\bsys\.modules\b": "sys.modules", r"\bcheck_\w+\s*=": "a checker reassigned",
    r"_solution\b": "a lab's private solution named", r"\bthreading\b|ThreadPoolExecutor|multiprocessing": "threads or processes",
    r"\binspect\.getsource\b": "inspect.getsource", r"\bexec\s*\(|\beval\s*\(": "exec/eval",
    r"\bsetprofile\b|\bsettrace\b": "a profiler or tracer",
}


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


def _normalised(fn_node: ast.FunctionDef) -> list[str]:
    """A function's AST as tokens with its own names (arguments, locals) numbered in order of appearance and its
    docstring dropped: two functions that differ only in naming and comments give the same tokens."""
    body = fn_node.body[1:] if (fn_node.body and isinstance(fn_node.body[0], ast.Expr)
                                and isinstance(getattr(fn_node.body[0], "value", None), ast.Constant)) else fn_node.body
    local = {a.arg for a in fn_node.args.args + fn_node.args.kwonlyargs}
    local |= {n.id for n in ast.walk(fn_node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    names: dict[str, str] = {}

    class _Rename(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            if node.id in local:
                node.id = names.setdefault(node.id, f"v{len(names)}")
            return node

        def visit_arg(self, node: ast.arg) -> ast.AST:
            node.arg = names.setdefault(node.arg, f"v{len(names)}")
            node.annotation = None
            return node

    tree = ast.Module(body=[_Rename().visit(ast.fix_missing_locations(b)) for b in body], type_ignores=[])
    return re.findall(r"\w+|[^\w\s]", ast.dump(tree, annotate_fields=False))


def flags(path: str | os.PathLike, lab: str | None = None) -> dict[str, list[str]]:
    """What the instructor should look at in a submission: ``{exercise or "notebook": [reasons]}``.

    An exercise whose code is the lab's reference solution up to names and comments ("a copy of the reference
    solution"), or close to it; code a notebook has no reason to contain (``setattr``, ``sys.modules``, threads,
    ``exec``, a lab's private solution, ...). A flag is not a verdict: read the code."""
    import difflib
    import importlib

    import jupytext

    cells = [c.source for c in jupytext.read(str(path)).cells if c.cell_type == "code"]
    lab = lab or lab_of(path)
    mod = importlib.import_module(f"echo_tutor.labs.{lab}")
    out: dict[str, list[str]] = {}
    for src in cells:
        for pattern, what in _SUSPICIOUS.items():
            if re.search(pattern, src):
                out.setdefault("notebook", []).append(what)
        try:
            tree = ast.parse(src)
        except SyntaxError:  # a cell with IPython magics
            continue
        for node in tree.body:
            sol = getattr(mod, f"_{getattr(node, 'name', '')}_solution", None)
            if not isinstance(node, ast.FunctionDef) or sol is None:
                continue
            try:
                ref = _normalised(ast.parse(inspect.getsource(sol).strip()).body[0])
            except (OSError, TypeError, SyntaxError, IndexError):
                continue
            mine = _normalised(node)
            ratio = difflib.SequenceMatcher(None, mine, ref, autojunk=False).ratio()
            if mine == ref:
                out.setdefault(node.name, []).append("a copy of the reference solution (names and comments aside)")
            elif ratio >= 0.9:
                out.setdefault(node.name, []).append(f"close to the reference solution ({ratio:.0%} of its tokens)")
    if "notebook" in out:
        out["notebook"] = sorted(set(out["notebook"]))
    return out


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
            lines += [f"**Read this notebook's code**: it contains {', '.join(lab_flags['notebook'])}.", ""]
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
                      timeout: int = 1800) -> dict[str, dict[str, dict[str, str]]]:
    """Grade every student's notebooks; write ``out_dir/<student>.md`` and ``out_dir/grades.csv``."""
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
