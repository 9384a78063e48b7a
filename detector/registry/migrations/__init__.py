"""Schema revisions of the registry database and the check every service makes when it opens it.

The Alembic scripts live in this package (``env.py``, ``versions/``) so an installed wheel carries
them; ``linewatch models migrate`` (:mod:`.upgrade`) applies them. Opening the registry never
migrates: a database at another revision is refused with one line naming both revisions and the
command to run. The one exception is a database with none of the registry's tables (a new plant, a
test, ``make demo``): it holds nothing that could be lost, so it is created at the head revision
directly, which is the schema ``migrate`` would build (a test keeps the two identical).

This module needs only SQLAlchemy (not Alembic), so a service can check the revision even where
only the migrating job has Alembic installed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Column, Connection, Engine, MetaData, PrimaryKeyConstraint, String, Table, inspect, select, text

from linewatch.detector.registry.errors import RegistryError
from linewatch.errors import ConfigurationError

log = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).resolve().parent
# Every revision under versions/, oldest first; a test checks these against the scripts. Add a
# revision here when you add its script: services compare the database with HEAD_REVISION.
KNOWN_REVISIONS = ("0001",)
BASELINE_REVISION = KNOWN_REVISIONS[0]  # the schema of databases made before migrations existed
HEAD_REVISION = KNOWN_REVISIONS[-1]
REGISTRY_TABLES = frozenset({"model_versions", "promotions", "audit", "alert_spans", "feedback"})
VERSION_TABLE = "alembic_version"
MIGRATE_COMMAND = "linewatch models migrate"
_LOCK_KEY = 0x6C77_7265_6769  # "lwregi": serialises schema changes of concurrent starters on PostgreSQL


class SchemaRevisionError(ConfigurationError, RegistryError):
    """The registry database is not at the revision this linewatch needs; the message says what to do.

    A ConfigurationError: the deployment is out of step (a migration step missing), so every command and
    service stops with the one line, exit status 2, instead of a traceback.
    """


def version_table() -> Table:
    """Alembic's bookkeeping table, declared as Alembic declares it, so either side can write it."""
    return Table(VERSION_TABLE, MetaData(), Column("version_num", String(32), nullable=False),
                 PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"))


def stored_revision(connection: Connection) -> str | None:
    """The revision recorded in the database; None where nothing is recorded (new, or made before migrations)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return None
    revisions = sorted(connection.execute(select(version_table().c.version_num)).scalars())
    return ",".join(revisions) or None


def registry_tables(connection: Connection) -> set[str]:
    """Which of the registry's tables the database has."""
    return set(inspect(connection).get_table_names()) & REGISTRY_TABLES


def lock_schema(connection: Connection) -> None:
    """Hold the registry's schema lock until the transaction ends; call it first in the transaction.

    PostgreSQL: an advisory lock. SQLite: the database's write lock, taken up front (``BEGIN
    IMMEDIATE``) so the tables are created or migrated in one transaction other starters wait for.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def check_revision(engine: Engine, metadata: MetaData, *, head: str = HEAD_REVISION,
                   known: tuple[str, ...] = KNOWN_REVISIONS) -> None:
    """Return when the database is at ``head`` (creating an empty one there); else raise SchemaRevisionError."""
    with engine.connect() as connection:
        empty = not registry_tables(connection)
        revision = stored_revision(connection)
    if empty:
        _create_at_head(engine, metadata, head)
    elif revision != head:
        raise SchemaRevisionError(refusal(engine, revision, head, known))


def refusal(engine: Engine, revision: str | None, head: str, known: tuple[str, ...]) -> str:
    """The one line a service stops with when the database is at another revision."""
    where = f"registry database {engine.url.render_as_string(hide_password=True)}"
    if revision is not None and revision not in known:
        return (f"{where} at revision {revision}, which this linewatch does not know (it needs {head}): "
                "the database was migrated by a newer linewatch; run that version")
    return (f"{where} at revision {revision or 'none (made before migrations)'}, this linewatch needs {head}: "
            f"run `{MIGRATE_COMMAND}`")


def _create_at_head(engine: Engine, metadata: MetaData, head: str) -> None:
    """Create the tables of a database that has none and record ``head`` (once, whoever starts first)."""
    with engine.begin() as connection:
        lock_schema(connection)
        if registry_tables(connection):  # another service created them while this one waited
            return
        metadata.create_all(connection)
        write_revision(connection, head)
    log.info("registry database was empty: created its tables at revision %s", head)


def write_revision(connection: Connection, revision: str) -> None:
    """Record ``revision`` as the database's only revision."""
    table = version_table()
    table.create(connection, checkfirst=True)
    connection.execute(table.delete())
    connection.execute(table.insert().values(version_num=revision))
