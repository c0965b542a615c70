"""``python -m rapid_objection.core._cli``: the entry point of the ``rapid-objection`` script."""

import sys

from . import main

sys.exit(main())
