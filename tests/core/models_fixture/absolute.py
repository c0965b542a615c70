"""A model on a base imported absolutely, which every app would share: refused."""

from __future__ import annotations

from sqlalchemy.orm import Mapped, mapped_column

from tests.core.models_fixture.base import Base


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
