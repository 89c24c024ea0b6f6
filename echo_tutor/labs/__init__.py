"""Lab switches and exercise checkers.

Switches (environment variables, read when this module is imported):

* ``ECHO_TUTOR_FAST``: ``1`` for small, minutes-on-a-laptop runs, ``0`` for the full-size experiment.
  Default: on when no CUDA device is present or when ``CI`` is set.
* ``ECHO_TUTOR_SOLUTIONS``: ``1`` (instructor mode) fills every "your turn" exercise with its solution;
  nbval runs the labs this way.

Each lab's exercises live in ``echo_tutor.labs.labNN``: a checker per exercise that calls the
student's function on fresh random inputs and says what is wrong (shape, value, causality, a call to a
function that computes the answer), and the solution used in instructor mode. In a lab the checker prints
instead of raising and later cells fall back to the solution, so an unfinished exercise never stops Run All;
``report`` lists which exercises pass (see ``exercises``).

Modules: ``switches`` (FAST, SOLUTIONS), ``checking`` (what every checker uses), ``exercises`` (the
exercise wrapper, the ``checker`` decorator, shortcut detection, the report), ``predict`` (predict-then-run
widgets), ``labNN`` (one per lab; a long lab's code is split into ``labNN_<topic>`` modules that
``labNN`` re-exports).
"""

from .checking import (LEADING_DIMS, ExerciseError, NotAttempted, batch_dims_hint, call_student, close, expect_tensor,
                       fresh_generator, leading_dims, passed)
from .exercises import REGISTRY, Exercise, checker, exercise, find_shortcut, report
from .predict import Prediction
from .switches import FAST, SOLUTIONS, is_fast, solutions_enabled, solutions_mode

__all__ = ["FAST", "SOLUTIONS", "ExerciseError", "NotAttempted", "is_fast", "solutions_enabled", "solutions_mode", "exercise", "Exercise",
           "checker", "find_shortcut", "report", "REGISTRY", "fresh_generator", "passed", "call_student", "expect_tensor",
           "close", "Prediction", "LEADING_DIMS", "leading_dims", "batch_dims_hint"]
