"""Exercises that never stop Run All and cannot be shortcut.

An exercise cell defines the student's function, wraps it with :func:`exercise` and runs its checker::

    def ssm_scan(x, a, b, c):
        raise NotImplementedError          # the student's code goes here
    ssm_scan = labs.exercise(ssm_scan, "lab01")
    lab01.check_ssm_scan(ssm_scan)

The wrapper (:class:`Exercise`) is what later cells call: the student's function once its checker passed,
the reference solution while it has not (not attempted yet, or wrong), so an unfinished exercise never stops
the lab; the checker prints what is wrong instead of raising. In instructor mode (``ECHO_TUTOR_SOLUTIONS=1``)
it is the solution, and the checker runs on the solution. :func:`report` (the last cell of every lab) lists
which exercises pass.

A checker (a ``check_*`` function decorated with :func:`checker`) refuses a call to code that computes the
answer, twice over:

* before running it, it reads the student's code (and the student's own helpers, two levels deep) for a name
  of the package's routines: the set is *computed* (:func:`package_routines`: every function and class that
  ``echo_tutor``'s method packages and ``echo_kernels`` define), plus the names the exercise forbids (such as
  ``inv`` where the exercise is Sherman-Morrison), a lab's private ``_*_solution``, and aliases of either;
* while running it, a profiler watches every Python call: entering any function defined in ``echo_tutor``
  (outside ``echo_tutor.labs``) or ``echo_kernels``, or a lab's solution, is refused, however it was reached
  (an alias, ``getattr``, a reshape around a fused twin, a method of an object the student built); starting a
  thread or a process (code the profiler would not see) and replacing anything a checker relies on
  (:mod:`echo_tutor.labs.integrity`) are refused too. An exercise that needs some of the package says so with
  ``allow=``.

Called with a plain function (the tests, ``echo_tutor.labs.grade``), a checker raises
:class:`~echo_tutor.labs.checking.ExerciseError` as before.
"""

from __future__ import annotations

import functools
import importlib
import re
import types
from typing import Any, Callable, Iterable

from ..errors import BadArgumentError
from .checking import ExerciseError, NotAttempted
from .guard import ALLOW, FORBID, answer_module, forbidden_objects, package_routines, watch_calls
from .switches import solutions_mode

__all__ = ["Exercise", "exercise", "checker", "find_shortcut", "report", "REGISTRY", "package_routines",
           "watch_calls"]

REGISTRY: dict[str, "Exercise"] = {}  # "lab01.ssm_scan" -> the latest Exercise of this Python session

class Exercise:
    """An exercise of a lab: the student's function, the solution, and what the checker said.

    Calling it calls the student's function once the checker has passed it (or before any check), else the
    solution; in instructor mode always the solution. ``status``: "unchecked", "passed", "not attempted",
    "failed" or "solution" (instructor mode).

    In the ``both`` mode (``ECHO_TUTOR_SOLUTIONS=both``, :func:`~echo_tutor.labs.switches.solutions_mode`) the
    exercise first behaves as a learner's who has not started (a call before its check runs the stub, as it
    would for the learner), its check runs on the stub as the learner's would and must end "not attempted"
    (``learner_status``), and then the solution is checked and used, as in instructor mode."""

    def __init__(self, student: Callable, solution: Callable, lab: str, name: str) -> None:
        self.student, self.solution, self.lab, self.name = student, solution, lab, name
        self.mode = solutions_mode()
        self.status = "solution" if self.mode == "instructor" else "unchecked"
        self.message, self.learner_status = "", ""
        self.__name__ = name
        self.__doc__ = getattr(student, "__doc__", None)

    @property
    def instructor(self) -> bool:
        return self.status == "solution"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        use = self.student if self.status in ("passed", "unchecked") else self.solution
        return use(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<exercise {self.lab}.{self.name}: {self.status}>"

    def run_check(self, check: Callable, forbid: Iterable[str], allow: Iterable[str] = ()) -> Any:
        """Run ``check`` on the student's function (the solution in instructor mode); record and print the
        outcome instead of raising. In the ``both`` mode: on the student's function as a learner's run would,
        then on the solution (raises :class:`ExerciseError` if the unfinished stub was not "not attempted")."""
        if self.instructor:
            return check(self.solution)
        out = self._check_student(check, forbid, allow)
        if self.mode != "both":
            return out
        self.learner_status = self.status
        if self.learner_status != "not attempted":
            raise ExerciseError(f"{self.name}: a learner who has not started would see {self.learner_status!r} "
                                f"({self.message or 'the stub passed'}), not 'not attempted yet': the stub in the "
                                "exercise cell must only raise NotImplementedError")
        self.status, self.message = "solution", ""
        print(f"   (instructor, in the same run: the solution of {self.name} is checked and used below)")
        return check(self.solution)

    def _check_student(self, check: Callable, forbid: Iterable[str], allow: Iterable[str]) -> Any:
        try:
            shortcut = find_shortcut(self.student, forbid, allow=allow)
            if shortcut:
                raise ExerciseError(f"{self.name}: {shortcut}")
            token, token_f = ALLOW.set(frozenset(allow)), FORBID.set(frozenset(forbid))
            try:
                out = check(self.student)
            finally:
                ALLOW.reset(token)
                FORBID.reset(token_f)
        except ExerciseError as e:
            self.status = "not attempted" if isinstance(e, NotAttempted) else "failed"
            self.message = str(e)
            mark = "\N{WHITE LARGE SQUARE}" if isinstance(e, NotAttempted) else "\N{CROSS MARK}"
            print(f"{mark} {e}\n   Until it passes, the cells below use the reference solution; fix your function "
                  "and run this cell again.")
            return None
        self.status, self.message = "passed", ""
        return out


def exercise(student: Callable, lab: str | Callable) -> Exercise:
    """The exercise object a lab's later cells call (see the module doc).

    ``lab`` names the lab module whose private ``_<name>_solution`` is the solution of the exercise
    ``student.__name__`` (e.g. ``exercise(ssm_scan, "lab01")``), so that the exercise cell does not hand the
    solution to the student; a callable is used as the solution itself (lab name "custom")."""
    name = getattr(student, "__name__", None)
    if not callable(student) or name is None:
        raise BadArgumentError(f"student must be the exercise's function (def ...), got {student!r}")
    if isinstance(student, Exercise):  # the cell was run twice: wrap the student's function again
        student = student.student
    if callable(lab):
        solution, lab_name = lab, "custom"
    else:
        if not isinstance(lab, str) or not re.fullmatch(r"lab\d\d", lab):
            raise BadArgumentError(f"lab must be a lab module name such as 'lab01', got {lab!r}")
        solution = getattr(importlib.import_module(f"echo_tutor.labs.{lab}"), f"_{name}_solution", None)
        if solution is None:
            raise BadArgumentError(f"student must be the exercise's function (def {name}) of {lab}; "
                                   f"{lab} has no exercise {name!r}")
        lab_name = lab
    ex = Exercise(student, solution, lab_name, name)
    REGISTRY[f"{lab_name}.{name}"] = ex
    return ex


def checker(*, forbid: Iterable[str] = (), allow: Iterable[str] = ()) -> Callable[[Callable], Callable]:
    """Decorate a lab's ``check_<name>(fn)``: with an :class:`Exercise` it checks without stopping the lab
    (see :meth:`Exercise.run_check`); with a plain function it raises ``ExerciseError``. Either way it refuses
    code that computes the answer: by name before the call (:func:`package_routines`, any lab's
    ``_*_solution``, and ``forbid``), and by watching the calls made during it (:class:`watch_calls`).
    ``allow``: the package routines (names, qualified names or module prefixes ending in ".") this exercise
    may use."""
    banned, allowed = frozenset(forbid), frozenset(allow)

    def decorate(check: Callable) -> Callable:
        name = check.__name__.removeprefix("check_")

        @functools.wraps(check)
        def run(fn: Any) -> Any:
            if isinstance(fn, Exercise):
                return fn.run_check(check, banned, allowed)
            shortcut = find_shortcut(fn, banned, allow=allowed)
            if shortcut:
                raise ExerciseError(f"{name}: {shortcut}")
            token, token_f = ALLOW.set(allowed), FORBID.set(banned)
            try:
                return check(fn)
            finally:
                ALLOW.reset(token)
                FORBID.reset(token_f)

        run.forbid, run.allow = banned, allowed  # type: ignore[attr-defined]
        return run

    return decorate


# ------------------------------------------------------------------------------------------- shortcuts
def _code_objects(code: types.CodeType) -> Iterable[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _names_used(fn: Callable) -> set[str]:
    """Every global, attribute and method name the function's code (nested functions included) refers to."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    return {name for c in _code_objects(code) for name in c.co_names}


def _is_solution(obj: Any) -> bool:
    return (callable(obj) and (getattr(obj, "__module__", None) or "").startswith("echo_tutor.labs.")
            and getattr(obj, "__name__", "").endswith("_solution"))


def find_shortcut(fn: Callable, forbid: Iterable[str] = (), _depth: int = 0, allow: Iterable[str] = ()) -> str | None:
    """Why ``fn`` is a shortcut (a call to a function that computes the answer), or None.

    Looks at the names the function's code uses (:func:`package_routines` and ``forbid``, less ``allow``), and
    at what its global names stand for (an alias of such a function, a routine or module of the package, a
    lab's private solution, another exercise's solution); follows the student's own helper functions (defined
    outside the package) two levels deep."""
    allowed = set(allow)
    banned = (package_routines() | set(forbid)) - allowed
    fn = getattr(fn, "student", fn)
    if _is_solution(fn):
        return (f"that is the lab's own solution (`{fn.__name__}`), which computes the answer for you. Write "
                "your own function: building it is the point of the exercise.")
    names = _names_used(fn)
    hit = sorted(n for n in names if n in banned or n.endswith("_solution"))
    if hit:
        return (f"your function calls `{hit[0]}`, which computes (part of) the answer for you. Write it yourself "
                "with tensor operations: building it is the point of the exercise.")
    glb = getattr(fn, "__globals__", {})
    torch_aliases = forbidden_objects(set(forbid) - allowed)
    for n in names:
        obj = glb.get(n)
        if obj is not None and id(obj) in torch_aliases and n not in banned:
            return (f"your function calls `{n}` (that is `{torch_aliases[id(obj)]}`), which this exercise asks you "
                    "not to use. Write it yourself: building it is the point of the exercise.")
        target = getattr(obj, "__name__", None)
        module = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None) or ""
        from_package = answer_module(module) and target not in allowed and not any(
            a.endswith(".") and module.startswith(a.rstrip(".")) for a in allowed)
        if _is_solution(obj) or (target in banned and n not in banned) or (
                from_package and not isinstance(obj, types.ModuleType) and callable(obj)):
            return (f"your function calls `{n}` (that is `{module}.{target}`), which computes the answer for you. "
                    "Write it yourself: building it is the point of the exercise.")
        own = isinstance(obj, types.FunctionType) and not (obj.__module__ or "").startswith("echo_tutor")
        if own and obj is not fn and _depth < 2:
            inner = find_shortcut(obj, forbid, _depth + 1, allow=allow)
            if inner:
                return f"your helper `{n}`: {inner}"
    return None


# ---------------------------------------------------------------------------------------------- report
def report(lab: str | None = None) -> dict[str, str]:
    """Print and return the status of every exercise of ``lab`` (all labs when None) run in this session.

    In the ``both`` mode it first lists what a learner with no exercise done saw ("0 of N passing"), and raises
    :class:`ExerciseError` if the checker of an exercise never ran on its stub."""
    rows = {k: ex for k, ex in REGISTRY.items() if lab is None or ex.lab == lab}
    if not rows:
        print("No exercise of this lab has been run yet.")
        return {}
    marks = {"passed": "\N{WHITE HEAVY CHECK MARK}", "solution": "\N{WHITE HEAVY CHECK MARK}",
             "not attempted": "\N{WHITE LARGE SQUARE}", "failed": "\N{CROSS MARK}", "unchecked": "?"}
    words = {"passed": "passed", "solution": "solution filled in (instructor mode)",
             "not attempted": "not done yet: the lab used the reference solution",
             "failed": "not passing yet: the lab used the reference solution", "unchecked": "not checked"}
    learner = [ex for ex in rows.values() if ex.learner_status]
    unchecked = [ex.name for ex in rows.values() if ex.mode == "both" and not ex.learner_status]
    if unchecked:  # a learner would see "not checked" (the checker never ran on the stub)
        raise ExerciseError(f"exercises {unchecked}: their checker never ran on the learner's stub in this run")
    if learner:  # the `both` mode: what a learner with no exercise done sees, then the instructor's run
        done = sum(ex.learner_status == "passed" for ex in learner)
        print(f"As a learner with no exercise done: {done} of {len(learner)} passing")
        for ex in learner:
            print(f"  {marks[ex.learner_status]} {ex.name:<28} {words[ex.learner_status]}")
    done = sum(ex.status in ("passed", "solution") for ex in rows.values())
    print(f"Exercises{' of ' + lab if lab else ''}: {done} of {len(rows)} passing")
    for key, ex in rows.items():
        print(f"  {marks[ex.status]} {ex.name:<28} {words[ex.status]}")
    return {ex.name: ex.status for ex in rows.values()}
