"""``echo-tutor``, the command line: ``app`` (the parser and ``main``), ``models`` (train, eval, echokv),
``experiments`` (cliff, transfer, ablate), ``flags`` (shared argument types and the grid flags)."""

from .app import EXIT_BAD_ARGUMENT, EXIT_CELLS_FAILED, main, make_parser
from .models import task_from_args

__all__ = ["main", "make_parser", "task_from_args", "EXIT_CELLS_FAILED", "EXIT_BAD_ARGUMENT"]
