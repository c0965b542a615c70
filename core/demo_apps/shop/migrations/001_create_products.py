"""Products of the shop."""

from typing import Any

import sqlalchemy as sa


def upgrade(op: Any) -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("price_cents", sa.Integer, nullable=False),
    )


def downgrade(op: Any) -> None:
    op.drop_table("products")
