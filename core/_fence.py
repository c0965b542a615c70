"""The fence in an app's database: the highest ownership token it has seen.

Ownership of an app is a lease on the bus with a token that grows with each new owner
(``bus._owners``). A lease alone cannot stop a registry that was paused past its
lease and wakes up in the middle of an operation: it may act before it learns that it
lost the app. So the database keeps the token of the last owner that touched the app
(table ``ro_owners``: app, token, registry, time), and an owner records its token there
under the app lock (``_app_lock``) before it changes anything: a token lower than the
recorded one is refused, and the new owner's higher token is what refuses the old one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import sqlalchemy as sa

from ._tracking import ensure_table, name_type

TABLE: Final = "ro_owners"

_owners = sa.Table(
    TABLE,
    sa.MetaData(),
    sa.Column("app", name_type(), primary_key=True),
    sa.Column("token", sa.BigInteger, nullable=False),
    sa.Column("registry", name_type(), nullable=False),
    sa.Column("taken_at", sa.DateTime, nullable=False),
)


def record(engine: sa.Engine, app: str, token: int, registry: str) -> int:
    """Record ``token`` as ``app``'s owner's unless a higher one is; returns the token
    recorded before (a higher one means ``token`` is refused and nothing was written).

    Call under the app lock: the read and the write are not one statement."""
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.connect() as connection:
        ensure_table(connection, _owners)
        connection.commit()  # the look for the table began a transaction
        with connection.begin():
            before = connection.execute(
                sa.select(_owners.c.token).where(_owners.c.app == app)
            ).scalar()
            values = {"token": token, "registry": registry, "taken_at": now}
            if before is None:
                connection.execute(sa.insert(_owners).values(app=app, **values))
            elif int(before) < token:
                connection.execute(sa.update(_owners).where(_owners.c.app == app).values(**values))
    return int(before or 0)
