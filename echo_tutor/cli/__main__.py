"""``python -m echo_tutor.cli``."""

import sys

from .app import main

sys.exit(main())
