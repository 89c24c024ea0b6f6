"""What an exercise's student code may not call: the package's answer-computing routines, found two ways.

* :func:`package_routines`: the names of every function and class the package's method modules define
  (computed from the modules loaded when the check runs), for a check of the student's code before it runs;
* :class:`watch_calls`: a profiler that sees every Python call made while the student's function runs and
  records the first one into those modules (or into a lab's ``_*_solution``), however it was reached in this
  thread; starting a thread or a process (code it would not see) is refused.

The checkers (:mod:`echo_tutor.labs.exercises`) set :data:`ALLOW` while they check a student's function;
:func:`~echo_tutor.labs.checking.call_student` then calls it under :class:`watch_calls`.
"""

from __future__ import annotations

import builtins
import contextvars
import functools
import importlib.util
import inspect
import math
import pathlib
import sys
import types
from typing import Any, Iterable

import torch

__all__ = ["package_routines", "watch_calls", "answer_module", "ALLOW", "FORBID", "short_path", "forbidden_objects"]

# The packages whose routines compute exercises' answers (the references, their twins and kernels, the
# method packages, the task generators and models): every function and class they define is refused unless
# an exercise allows it. ``echo_tutor.labs`` is not among them (the checkers' own helpers live there; its
# solutions are refused by name).
_PACKAGE_ROOTS = ("echo_tutor", "echo_kernels")
_NOT_ANSWERS = ("echo_tutor.labs", "echo_tutor.cli", "echo_tutor.errors", "echo_tutor._checks", "echo_tutor.timing",
                "echo_tutor.grid", "echo_tutor.pretrained", "echo_tutor.backends")


def answer_module(name: str) -> bool:
    return name.split(".")[0] in _PACKAGE_ROOTS and not any(
        name == m or name.startswith(m + ".") for m in _NOT_ANSWERS)


def package_routines() -> frozenset[str]:
    """The names of every function and class defined in the package's method modules that this Python session
    has imported (a student's code can only call a module that is loaded by the time it is checked), less
    names that torch, ``math`` or the builtins also use (``solve``, ``step``, ``sum``, ...), which a student
    may call from there."""
    loaded = frozenset(n for n, m in list(sys.modules.items()) if m is not None and answer_module(n))
    return _routines_of(loaded)


@functools.lru_cache(maxsize=8)
def _routines_of(modules: frozenset[str]) -> frozenset[str]:
    names: set[str] = set()
    for mod_name in modules:
        for attr, obj in list(vars(sys.modules[mod_name]).items()):
            if callable(obj) and not attr.startswith("_") and answer_module(getattr(obj, "__module__", "") or ""):
                names.add(attr)
    return frozenset(names - _common_names())


@functools.lru_cache(maxsize=1)
def _common_names() -> frozenset[str]:
    common = set(dir(builtins)) | set(dir(math)) | set(dir(torch)) | set(dir(torch.linalg)) | set(dir(torch.Tensor))
    return frozenset(common | set(dir(torch.nn.functional)) | set(dir(torch.nn)))


# The profiler's view of the package: files under its folder, the labs' folder apart.
_PKG_DIRS = (str(pathlib.Path(__file__).parent.parent) + "/",)
_LABS_DIR = str(pathlib.Path(__file__).parent) + "/"
ALLOW: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("exercise_allow", default=None)
# The names an exercise forbids beyond the package (e.g. ``inv``, ``solve`` in Sherman-Morrison): also refused
# when a built-in (torch's C functions and tensor methods) of that name is called, however it was reached.
FORBID: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("exercise_forbid", default=frozenset())
# Starting a thread or a process would run code the profiler does not see: refused inside a checker.
_CONCURRENCY = frozenset({"start_new_thread", "start_joinable_thread", "_start_new_thread", "fork", "forkpty",
                          "fork_exec", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "spawnv"})
_TORCH_NAMESPACES = ("torch", "torch.linalg", "torch.nn.functional", "torch.special", "torch.fft")


def _builtin_name(fn: Any) -> str:
    """A built-in's name as an exercise forbids it: ``linalg_inv`` -> ``inv``."""
    name = getattr(fn, "__name__", "") or ""
    for prefix in ("_linalg_", "linalg_", "special_", "fft_"):
        name = name.removeprefix(prefix)
    return name


def forbidden_objects(names: Iterable[str]) -> dict[int, str]:
    """``id(object) -> name`` of the torch functions the names stand for (``inv`` -> ``torch.linalg.inv``,
    ``torch.inverse``), so that an alias (``from torch.linalg import inv as invert``) is recognised."""
    out: dict[int, str] = {}
    for ns_name in _TORCH_NAMESPACES:
        ns = sys.modules.get(ns_name)
        if ns is None:
            continue
        for n in names:
            obj = getattr(ns, n, None)
            if obj is not None and callable(obj):
                out[id(obj)] = f"{ns_name}.{n}"
    return out


def _kernel_dirs() -> tuple[str, ...]:
    spec = importlib.util.find_spec("echo_kernels")
    return tuple(str(pathlib.Path(p)) + "/" for p in (spec.submodule_search_locations or [])) if spec else ()


class watch_calls:
    """Context manager: record the first call, made inside it, into the package's answer-computing code.

    ``allow``: qualified names (``"echo_tutor.ska.layer.SpectralKoopmanAttention"``), plain function names or
    module prefixes (``"echo_tutor.convert."``) the exercise may call. ``forbid``: names of built-ins (torch's C
    functions and tensor methods, e.g. ``inv``, ``solve``) the exercise refuses. After the block,
    ``violation`` is None or ``(qualified name, where)`` of the first refused call."""

    def __init__(self, allow: Iterable[str] = (), forbid: Iterable[str] = ()) -> None:
        self.allow = frozenset(allow)
        self.forbid = frozenset(forbid)
        self.violation: tuple[str, str] | None = None
        self._dirs = _PKG_DIRS + _kernel_dirs()
        self._previous: Any = None
        self._start: types.FrameType | None = None

    def _allowed(self, qual: str, func: str) -> bool:
        return func in self.allow or qual in self.allow or any(
            a.endswith(".") and qual.startswith(a) for a in self.allow)

    def _profile(self, frame: types.FrameType, event: str, arg: Any) -> None:
        if self.violation is not None:
            return
        if event == "c_call":
            if getattr(arg, "__name__", "") in _CONCURRENCY:
                self.violation = (f"`{arg.__name__}` (a new thread or process)", "code a checker cannot watch")
            elif self.forbid and _builtin_name(arg) in self.forbid and not self._importing(frame):
                self.violation = (f"`{_builtin_name(arg)}` (torch's `{getattr(arg, '__name__', '?')}`)",
                                  "a built-in this exercise forbids")
            return
        if event != "call":
            return
        path = frame.f_code.co_filename
        func = frame.f_code.co_name
        if path.startswith(_LABS_DIR):
            if func.endswith("_solution"):
                self.violation = (f"{frame.f_globals.get('__name__', '?')}.{func}", path)
            return
        if not path.startswith(self._dirs):
            return
        module = frame.f_globals.get("__name__", "")
        if not answer_module(module):
            return
        qual = f"{module}.{getattr(frame.f_code, 'co_qualname', func)}"
        if func.startswith("<") or self._allowed(qual, func) or self._importing(frame):
            return
        self.violation = (qual, path)

    def _importing(self, frame: types.FrameType) -> bool:
        """Whether ``frame`` runs as part of an import (a module or class body between it and the watched call):
        importing a module runs its code, which is not a call of the student's."""
        f: types.FrameType | None = frame
        for _ in range(200):
            if f is None or f is self._start:
                return False
            if f.f_code.co_name == "<module>" or not f.f_code.co_flags & inspect.CO_NEWLOCALS:
                return True
            f = f.f_back
        return False

    def __enter__(self) -> "watch_calls":
        self._start = sys._getframe(1)
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        if sys.getprofile() != self._profile and self.violation is None:  # the learner's code switched it off
            self.violation = ("`sys.setprofile` (the watcher was switched off)", "code a checker cannot watch")
        sys.setprofile(self._previous)


def short_path(path: str) -> str:
    parts = pathlib.Path(path).parts
    for root in _PACKAGE_ROOTS:
        if root in parts:
            return "/".join(parts[parts.index(root):])
    return path
