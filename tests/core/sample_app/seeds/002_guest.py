"""A second user."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    connection.execute(sa.text("INSERT INTO users (name) VALUES ('guest')"))


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM users WHERE name = 'guest'"))
