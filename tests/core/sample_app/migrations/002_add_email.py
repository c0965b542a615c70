"""Add an email column to users."""

from typing import Any

import sqlalchemy as sa


def upgrade(op: Any) -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email", sa.String(200), nullable=True))


def downgrade(op: Any) -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email")
