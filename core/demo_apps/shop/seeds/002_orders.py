"""A first order."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    connection.execute(sa.text("INSERT INTO orders (product_id, quantity) VALUES (1, 2)"))


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM orders"))
