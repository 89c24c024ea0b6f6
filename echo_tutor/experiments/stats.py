"""The package's statistics, where the labs and experiments have always imported them from: a re-export of
:mod:`echo_tutor.stats` (which lower layers, such as ``echokv``, import directly)."""

from ..stats import *  # noqa: F401,F403
from ..stats import __all__  # noqa: F401
