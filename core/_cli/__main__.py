"""``python -m core._cli``: the same entry point as the ``rapid-objection`` script."""

import sys

from . import main

sys.exit(main())
