"""Fault scenarios: delivery guarantees while workers die, Redis goes away and poison
arrives.

The process lane runs real worker processes against a ``redis-server`` that each test
starts on its own loopback port (with an AOF in the test's directory, so that it can be
stopped and started again); the embedded lane runs the scenarios that make sense
in-process on ``memory://``. The plugins count what they handle on the server side, and
every scenario reports one line ``events=N delivered=N duplicates=N dead_lettered=N
lost=N``, repeated in the terminal summary so that it shows with or without ``-s``.
"""

from __future__ import annotations

import sys

PYTHON = sys.executable
