"""A declarative base in a module of its own, imported by other fixture modules."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass
