"""The first user."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    connection.execute(sa.text("INSERT INTO users (name, email) VALUES ('admin', 'a@x.org')"))


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM users WHERE name = 'admin'"))
