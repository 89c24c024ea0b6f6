"""What an experiment shows on the command line: its command's name, help and options, declared beside its
recipes so that ``echo-tutor`` is built from ``registry.EXPERIMENTS`` (adding an experiment module there adds
its command, its ``--help`` and its options; nothing in ``echo_tutor/cli`` names an experiment).

Every experiment command also takes ``--recipe NAME`` / ``--scale`` / ``--fast`` (which recipe runs: the
module's ``RECIPES`` and ``PICK``), ``--out-dir``, ``--quiet``, ``--threads`` and the grid flags; an
:class:`Option` adds one more flag and says where its value goes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import BadArgumentError

__all__ = ["Command", "Option", "TYPES"]

TYPES = ("str", "positive_int", "nonneg_int", "positive_float")  # an option's value: text, int >= 1, >= 0, float > 0


@dataclass(frozen=True)
class Option:
    """One flag of an experiment command.

    ``flag``: as typed (``"--presets"``); ``field``: the name its value is passed under (default: the flag
    without dashes, ``-`` as ``_``); ``to``: where the value goes when given: ``"recipe"`` (a field of the
    recipe replaced, through ``run(..., **overrides)``), ``"only"`` (``recipe.only(field=value)``: a subset of
    the recipe) or ``"run"`` (a keyword of ``run`` that is not a recipe field, e.g. ``save_models``).
    ``type``: what the value must be, one of ``TYPES`` (the CLI checks it and says what was expected);
    ``nargs``/``flag_only``: as argparse's ``nargs`` and ``action="store_true"``."""

    flag: str
    help: str
    type: str = "str"
    nargs: str | None = None
    to: Literal["recipe", "only", "run"] = "recipe"
    field: str = ""
    flag_only: bool = False

    def __post_init__(self) -> None:
        if not self.flag.startswith("--"):
            raise BadArgumentError(f"flag must start with '--', got {self.flag!r}")
        if self.type not in TYPES:
            raise BadArgumentError(f"type must be one of {TYPES}, got {self.type!r}")
        if self.to not in ("recipe", "only", "run"):
            raise BadArgumentError(f"to must be 'recipe', 'only' or 'run', got {self.to!r}")
        if not self.field:
            object.__setattr__(self, "field", self.flag[2:].replace("-", "_"))

    @property
    def dest(self) -> str:
        """The attribute of the parsed arguments that holds the value."""
        return "opt_" + self.field


@dataclass(frozen=True)
class Command:
    """An experiment's command: ``name`` (``echo-tutor <name>``), a one-line ``help``, the default
    ``out_dir``, its extra ``options``, what the command prints as it finishes (``finished``: the first
    word of "<finished> finished in N s"), and the values of its ``--scale`` (``scales``; the first is the
    default; empty: the preset scales, ``echo_tutor.models.SCALES``, default ``lab``)."""

    name: str
    help: str
    out_dir: str
    options: tuple[Option, ...] = ()
    finished: str = ""
    scales: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(self.options))
        object.__setattr__(self, "scales", tuple(self.scales))
        if not self.finished:
            object.__setattr__(self, "finished", self.name)
