"""``rapid-objection dashboard``: a web page of one namespace, live (docs/dashboard.md).

Needs the ``dashboard`` extra (Starlette and uvicorn).
"""

from ._app import Dashboard
from ._serve import serve

__all__ = ["Dashboard", "serve"]
