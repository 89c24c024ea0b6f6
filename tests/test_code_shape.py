"""The shape the code keeps: no module over 400 lines, no function over 80 (Triton kernels aside), every
``__init__.py`` only re-exports, and argument checks raise the project's one exception."""

import ast
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _python_files() -> list[pathlib.Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout")
    return [ROOT / f for f in out if not f.startswith("notebooks/") and (ROOT / f).exists()]


def _is_triton_kernel(node: ast.AST) -> bool:
    return any("jit" in ast.unparse(d) for d in getattr(node, "decorator_list", []))


def test_modules_and_functions_stay_small():
    problems = []
    for path in _python_files():
        src = path.read_text()
        rel = path.relative_to(ROOT)
        if src.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{rel}: {src.count(chr(10))} lines")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_triton_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    problems.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert not problems, "over the size limits:\n" + "\n".join(problems)


def test_init_files_only_reexport():
    problems = []
    for path in _python_files():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (  # the docstring
                isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] in (["__all__"], ["__version__"])) or (
                isinstance(node, ast.Try) and all(isinstance(n, (ast.Import, ast.ImportFrom, ast.Assign))
                                                 for n in node.body))  # an optional import and its flag
            if not ok:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node).splitlines()[0]}")
    assert not problems, "__init__.py files must only re-export:\n" + "\n".join(problems)


def test_argument_checks_raise_the_projects_exception():
    """``raise ValueError(...)`` in the package would be reported by the CLI as a bug (a traceback), not as the
    user's bad argument: the package raises BadArgumentError (a ValueError) instead."""
    problems = []
    for path in _python_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in ("echo_tutor", "kernels"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None and ast.unparse(node.exc).startswith("ValueError("):
                problems.append(f"{rel}:{node.lineno}")
    assert not problems, "raise BadArgumentError, not ValueError:\n" + "\n".join(problems)
