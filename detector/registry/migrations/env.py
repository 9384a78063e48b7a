"""Alembic environment of the registry: run by ``linewatch models migrate`` (and by ``alembic`` itself).

``migrate`` hands over its own connection (``config.attributes["connection"]``) so the upgrade runs
inside the lock it holds; without one, the URL comes from ``sqlalchemy.url`` in the Alembic config.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from linewatch.detector.registry.db import Base

config = context.config


def _run(connection: Connection) -> None:
    # Batch mode lets later revisions alter SQLite tables (copy and move), a no-op on PostgreSQL.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_offline() -> None:
    """``alembic upgrade --sql``: the SQL a DBA can review and apply by hand."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=Base.metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def _run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    _run_offline()
else:
    _run_online()
