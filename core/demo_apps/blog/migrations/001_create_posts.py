"""Posts of the blog."""

from typing import Any

import sqlalchemy as sa


def upgrade(op: Any) -> None:
    op.create_table(
        "posts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
    )


def downgrade(op: Any) -> None:
    op.drop_table("posts")
