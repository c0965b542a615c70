"""Three products."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    connection.execute(
        sa.text("INSERT INTO products (name, price_cents) VALUES (:name, :price)"),
        [
            {"name": "kettle", "price": 3900},
            {"name": "teapot", "price": 2500},
            {"name": "mug", "price": 900},
        ],
    )


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM products"))
