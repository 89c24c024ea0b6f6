"""Has code under grading tampered with what the checkers rely on?

A checker runs in the same Python process as the learner's code, so a function that, when called, replaces
``torch.allclose`` or a checker, or a notebook cell that does so before grading, could pass anything. Two
checks make that visible instead of silent:

* :func:`snapshot` / :func:`changed`: the identity of every attribute of the namespaces a checker uses
  (``builtins``, ``math``, ``operator``, ``torch`` and its ``linalg`` / ``nn.functional`` / ``special``,
  ``torch.Tensor``, ``numpy`` where loaded, and ``echo_tutor.labs``' modules), compared before and after a
  learner's function runs (:func:`~echo_tutor.labs.checking.call_student` refuses a change);
* :func:`foreign_callables`: functions sitting in those library namespaces whose code is not the library's own
  (what a monkeypatch leaves behind, whenever it was done); the grader refuses to grade such a notebook.

Neither is a sandbox: a determined learner can still defeat a checker running in their process. They make the
easy ways fail loudly, and the grade report flags the rest for the instructor (``echo_tutor.labs.grade``).
"""

from __future__ import annotations

import os
import sys
import sysconfig
import types
from typing import Iterable

__all__ = ["snapshot", "changed", "foreign_callables", "GUARDED"]

GUARDED = ("builtins", "math", "operator", "torch", "torch.linalg", "torch.nn.functional", "torch.special", "numpy",
           "numpy.linalg")


def _namespaces() -> Iterable[tuple[str, dict]]:
    for name in GUARDED:
        mod = sys.modules.get(name)
        if mod is not None:
            yield name, vars(mod)
    torch = sys.modules.get("torch")
    if torch is not None:
        yield "torch.Tensor", dict(vars(torch.Tensor))
    for name, mod in list(sys.modules.items()):
        if mod is not None and name.startswith("echo_tutor.labs"):
            yield name, vars(mod)


def snapshot() -> dict[tuple[str, str], int]:
    """``{(namespace, attribute): id(value)}`` of every guarded namespace, with the ``__code__`` of each Python
    function (replacing a function's code keeps its identity) and ``sys.stdout`` / ``sys.stderr``."""
    snap: dict[tuple[str, str], int] = {}
    for ns, d in _namespaces():
        for k, v in list(d.items()):
            snap[ns, k] = id(v)
            code = getattr(v, "__code__", None) if isinstance(v, types.FunctionType) else None
            if code is not None:
                snap[ns, f"{k}.__code__"] = id(code)
    snap["sys", "stdout"], snap["sys", "stderr"] = id(sys.stdout), id(sys.stderr)
    return snap


def changed(before: dict[tuple[str, str], int]) -> list[str]:
    """Attributes (or functions' code) replaced or deleted since ``before`` (new attributes are allowed: lazy
    imports add some)."""
    now = snapshot()
    return sorted(f"{ns}.{k}" for (ns, k), ident in before.items() if now.get((ns, k)) != ident)


def _roots() -> tuple[str, ...]:
    """Where library code lives: the standard library, the installed packages, echo_tutor."""
    roots = [os.path.dirname(os.__file__)] + [sysconfig.get_paths()[k] for k in ("purelib", "platlib")]
    here = os.path.dirname(os.path.abspath(__file__))
    roots.append(os.path.dirname(here))  # echo_tutor itself
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def foreign_callables() -> list[str]:
    """Functions in the guarded library namespaces whose code lives outside the library that owns them (a
    lambda from a notebook put into ``torch``, say)."""
    roots = _roots()
    out = []
    for ns, d in _namespaces():
        for k, v in list(d.items()):
            fn = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
            if isinstance(fn, types.FunctionType):
                path = os.path.realpath(fn.__code__.co_filename)
                if not path.startswith(roots):
                    out.append(f"{ns}.{k}")
    return sorted(out)
