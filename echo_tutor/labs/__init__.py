"""Lab switches and exercise checkers.

Switches (environment variables, read when this module is imported):

* ``ECHO_TUTOR_FAST``: ``1`` for small, minutes-on-a-laptop runs, ``0`` for the full-size experiment.
  Default: on when no CUDA device is present or when ``CI`` is set.
* ``ECHO_TUTOR_SOLUTIONS``: ``1`` (instructor mode) fills every "your turn" exercise with its solution;
  nbval runs the labs this way.

Each lab's exercises live in ``echo_tutor.labs.labNN``: a checker per exercise that calls the
student's function on fresh random inputs and raises :class:`ExerciseError` saying what is wrong
(shape, value, causality), and the solution used in instructor mode.

Modules: ``switches`` (FAST, SOLUTIONS), ``checking`` (what every checker uses), ``labNN`` (one per lab).
"""

from .checking import (
           ExerciseError,
           call_student,
           close,
           exercise,
           expect_tensor,
           fresh_generator,
           passed,
)
from .switches import FAST, SOLUTIONS, is_fast, solutions_enabled

__all__ = ["FAST", "SOLUTIONS", "ExerciseError", "is_fast", "solutions_enabled", "exercise", "fresh_generator", "passed",
           "call_student", "expect_tensor", "close"]
