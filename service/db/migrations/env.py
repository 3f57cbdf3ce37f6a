"""Alembic environment for the service's own tables. Run through ``service.db.migrate``."""

from __future__ import annotations

from typing import Any

from alembic import context

from service.db.models import TABLE_PREFIX, Base

VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Only our tables: Optuna's (and anything else in the database) are not ours to migrate."""
    if type_ == "table":
        return bool(name and name.startswith(TABLE_PREFIX))
    return True


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
