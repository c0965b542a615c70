"""A models module whose import fails."""

from __future__ import annotations

raise RuntimeError("models module broken on purpose")
