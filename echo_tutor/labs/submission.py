"""Reading a submitted lab: what to grade, and what the instructor should look at.

* :func:`definitions`: the code the grader runs, taken from the notebook's code cells without running any of
  the learner's other statements: imports, function and class definitions (decorators and default values
  limited to ones that run nothing of the learner's), ``name = labs.exercise(name, "labNN")`` lines, and
  assignments of literals, lambdas and module attributes. A cell that replaces a checker, registers an
  IPython hook or patches torch is simply not part of it.
* :func:`flags`: an exercise whose code is the lab's reference solution up to names and comments (the solutions
  ship with the package, for instructor mode), and code a notebook has no reason to contain.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
from typing import Any

__all__ = ["definitions", "flags", "exercise_names", "SUSPICIOUS"]

_EXERCISE = re.compile(r'(\w+) = labs\.exercise\(\1, "(lab\d\d)"\)')
# Decorators that run none of the learner's code when the function is defined.
_DECORATORS = re.compile(r"^(?:(?:triton\.|tl\.)?jit|torch\.no_grad\(\)|torch\.inference_mode\(\)|staticmethod|"
                         r"classmethod|property|(?:dataclasses\.)?dataclass)(?:\((?:frozen=True|)\))?$")

# Code a learner's notebook has no reason to contain: each is flagged for the instructor to read.
SUSPICIOUS = {
    r"\bsetattr\s*\(": "setattr(...)", r"\bsys\.modules\b": "sys.modules", r"\bcheck_\w+\s*=": "a checker reassigned",
    r"_solution\b": "a lab's private solution named", r"\bthreading\b|ThreadPoolExecutor|multiprocessing": "threads or processes",
    r"\binspect\.getsource\b": "inspect.getsource", r"\bexec\s*\(|\beval\s*\(|\bcompile\s*\(": "exec/eval/compile",
    r"\bsetprofile\b|\bsettrace\b": "a profiler or tracer", r"__code__|__globals__|__builtins__": "a function's internals",
    r"__import__|importlib": "a computed import", r"get_ipython|input_transformers|register_cell_magic": "IPython hooks",
    r"\bsys\.stdout\b|\bbuiltins\b": "sys.stdout or builtins",
}


def exercise_names(cells: list[str]) -> tuple[list[str], set[str]]:
    """The exercises a notebook wraps (``name = labs.exercise(name, "labNN")``), in order, and their labs."""
    found = [m for src in cells for m in _EXERCISE.findall(src)]
    return list(dict.fromkeys(n for n, _ in found)), {lab for _, lab in found}


def _parse(src: str) -> ast.Module | None:
    lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _inert_value(node: ast.AST | None) -> bool:
    """A value whose evaluation runs none of the learner's code: a literal, a lambda, ``a.b.c``, a name."""
    if node is None or isinstance(node, (ast.Lambda, ast.Name)):
        return True
    if isinstance(node, ast.Attribute):
        return _inert_value(node.value)
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _plain_target(t: ast.AST) -> bool:
    """A name, or a tuple/list of names: an assignment to an attribute or an item (``torch.allclose = ...``)
    changes something else than the notebook's own names."""
    if isinstance(t, ast.Name):
        return True
    return isinstance(t, (ast.Tuple, ast.List)) and all(_plain_target(e) for e in t.elts)


def _inert_def(node: ast.AST) -> str | None:
    """Why a definition would run code when defined (a decorator, a default value, a class body), or None."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        for d in node.decorator_list:
            if not _DECORATORS.match(ast.unparse(d)):
                return f"its decorator `@{ast.unparse(d)}`"
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        defaults = node.args.defaults + [d for d in node.args.kw_defaults if d is not None]
        bad = next((d for d in defaults if not _inert_value(d)), None)
        return f"its default value `{ast.unparse(bad)}`" if bad is not None else None
    if isinstance(node, ast.ClassDef):
        if node.bases and not all(_inert_value(b) for b in node.bases) or node.keywords:
            return "its base classes"
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                why = _inert_def(item)
                if why:
                    return why
            elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                if not _inert_value(item.value):
                    return f"the class attribute `{ast.unparse(item)}`"
            elif not isinstance(item, (ast.Pass, ast.Expr)) or (
                    isinstance(item, ast.Expr) and not isinstance(item.value, ast.Constant)):
                return f"the statement `{ast.unparse(item).splitlines()[0]}` in its body"
    return None


def definitions(cells: list[str]) -> tuple[list[str], dict[str, str]]:
    """``(statements, dropped)``: the code to grade, statement by statement (see the module doc; the grader runs
    each on its own, so one that fails, an assignment of a name the rest of the notebook computes, say, does
    not stop the others), and, for each definition left out, why."""
    keep: list[str] = []
    dropped: dict[str, str] = {}
    for src in cells:
        tree = _parse(src)
        if tree is None:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                keep.append(ast.unparse(node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                why = _inert_def(node)
                if why:
                    dropped[node.name] = why
                else:
                    keep.append(ast.unparse(node))
            elif isinstance(node, ast.Assign) and _EXERCISE.fullmatch(ast.unparse(node).replace("'", '"')):
                keep.append(ast.unparse(node))
            elif (isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None and _inert_value(node.value)
                  and all(_plain_target(t) for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
                keep.append(ast.unparse(node))
    return keep, dropped


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


# A solution of fewer statements than this (a one-line formula, a short derivation) is what any right answer
# looks like: a match with it is not flagged.
_MIN_STATEMENTS_TO_FLAG = 4


def flags(cells: list[str], lab: str) -> dict[str, list[str]]:
    """What the instructor should look at: ``{exercise or "notebook": [reasons]}``. A flag is not a verdict."""
    mod = importlib.import_module(f"echo_tutor.labs.{lab}")
    out: dict[str, list[str]] = {}
    for src in cells:
        for pattern, what in SUSPICIOUS.items():
            if re.search(pattern, src):
                out.setdefault("notebook", []).append(what)
        tree = _parse(src)
        for node in tree.body if tree is not None else []:
            sol: Any = getattr(mod, f"_{getattr(node, 'name', '')}_solution", None)
            if not isinstance(node, ast.FunctionDef) or sol is None:
                continue
            try:
                ref = _normalised(ast.parse(inspect.getsource(sol).strip()).body[0])
            except (OSError, TypeError, SyntaxError, IndexError):
                continue
            if sum(isinstance(x, ast.stmt) for x in ast.walk(ast.parse(inspect.getsource(sol).strip()))) - 1 \
                    < _MIN_STATEMENTS_TO_FLAG:
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
