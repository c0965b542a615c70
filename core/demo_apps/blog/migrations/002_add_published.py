"""A published flag on posts."""

from typing import Any

import sqlalchemy as sa


def upgrade(op: Any) -> None:
    with op.batch_alter_table("posts") as batch:
        batch.add_column(sa.Column("published", sa.Boolean, nullable=False, server_default="0"))


def downgrade(op: Any) -> None:
    with op.batch_alter_table("posts") as batch:
        batch.drop_column("published")
