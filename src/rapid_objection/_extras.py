"""The optional dependencies (extras): which module each brings, and the error when missing.

``pip install 'rapid-objection[postgres]'`` brings psycopg 3, ``[mysql]`` PyMySQL,
``[metrics]`` the Prometheus client and ``[dashboard]`` Starlette and uvicorn (``[all]``
the four). The code that needs one imports it where it is used, and a missing one becomes
a ``MissingExtra`` naming the extra instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from ._errors import MissingExtra

if TYPE_CHECKING:
    import sqlalchemy as sa

EXTRAS: Final[dict[str, tuple[str, str]]] = {
    "psycopg": ("psycopg", "postgres"),
    "pymysql": ("pymysql", "mysql"),
    "prometheus_client": ("prometheus-client", "metrics"),
    "starlette": ("starlette", "dashboard"),
    "uvicorn": ("uvicorn", "dashboard"),
}
"""Top-level module -> (the package that provides it, the extra that installs it)."""


def missing_extra(error: ImportError, needed_for: str) -> MissingExtra | None:
    """The ``MissingExtra`` an import error means, or None when no extra provides it."""
    known = EXTRAS.get((error.name or "").partition(".")[0])
    return None if known is None else MissingExtra(*known, needed_for=needed_for)


def create_engine(url: str | sa.URL, **arguments: Any) -> sa.Engine:
    """``sqlalchemy.create_engine``, with a missing driver reported as its extra."""
    import sqlalchemy

    try:
        return sqlalchemy.create_engine(url, **arguments)
    except ImportError as exc:
        drivername = sqlalchemy.make_url(url).drivername
        extra = missing_extra(exc, f"a {drivername} database URL")
        if extra is None:
            raise
        raise extra from exc
