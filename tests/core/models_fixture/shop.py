"""An app's models: its own declarative base, a per-app ``User``, a shared ``Country``."""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    country_code: Mapped[str | None] = mapped_column(ForeignKey("countries.code"))


class Country(Base):
    """One class for every app that loads this module."""

    __tablename__ = "countries"
    __shared__ = True

    code: Mapped[str] = mapped_column(String(2), primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Mixin:
    """Not mapped: never one of the app's models."""

    note: str = ""
