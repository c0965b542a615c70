"""A first order."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    # The kettle by its name, not by id 1: once the products were seeded again, a
    # PostgreSQL or MariaDB sequence has moved on.
    connection.execute(
        sa.text(
            "INSERT INTO orders (product_id, quantity) "
            "SELECT id, 2 FROM products WHERE name = 'kettle'"
        )
    )


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM orders"))
