"""Two small apps for ``rapid-objection demo``: a shop and a blog, each with migrations,
seeds and models."""

from pathlib import Path

ROOT = Path(__file__).parent
