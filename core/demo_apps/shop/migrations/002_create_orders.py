"""Orders of the shop."""

from typing import Any

import sqlalchemy as sa


def upgrade(op: Any) -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("product_id", sa.Integer, sa.ForeignKey("products.id"), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
    )


def downgrade(op: Any) -> None:
    op.drop_table("orders")
