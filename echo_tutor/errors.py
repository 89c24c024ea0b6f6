"""The one exception the package raises for a caller's bad argument.

Every public function checks what it is given and raises :class:`BadArgumentError` (a ``ValueError``, so
``except ValueError`` still catches it) with a one-line message that names the argument and says what was
expected. The CLI prints that message and exits with status 2; any other exception is a bug of ours and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["BadArgumentError"]


class BadArgumentError(ValueError):
    """A caller passed an argument the function cannot use; the message names it and what was expected."""
