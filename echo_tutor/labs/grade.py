"""Grade submitted labs: ``python -m echo_tutor.labs.grade student_lab03.ipynb [more.ipynb ...]``.

Runs each notebook top to bottom in a fresh kernel with the learner's code (``ECHO_TUTOR_SOLUTIONS`` off,
FAST on), then re-runs every exercise's checker on the learner's own function in that kernel (so editing a
check call away changes nothing) and prints one line per exercise and a total. The checkers refuse a call to
a function that computes the answer, as they do in the labs. Works on ``.ipynb`` and on jupytext ``.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys

__all__ = ["grade", "main"]

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

    from ..errors import BadArgumentError

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


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    for path in paths:
        res = grade(path)
        for n, verdict in res.items():
            print(f"{path}  {n:<24} {verdict[:200]}")
        print(f"{path}: {sum(v == 'pass' for v in res.values())} of {len(res)} exercises pass")
    return 0


if __name__ == "__main__":
    sys.exit(main())
