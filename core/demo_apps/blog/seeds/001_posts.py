"""Two posts."""

from typing import Any

import sqlalchemy as sa


def seed(connection: Any) -> None:
    connection.execute(
        sa.text("INSERT INTO posts (title, published) VALUES (:title, :published)"),
        [{"title": "Hello", "published": True}, {"title": "Draft", "published": False}],
    )


def unseed(connection: Any) -> None:
    connection.execute(sa.text("DELETE FROM posts"))
