"""``linewatch models migrate``: bring a registry database to the head revision with Alembic.

Three kinds of database are handled, all inside one transaction that holds the schema lock:

- empty: the revisions run from the start;
- made before migrations (tables, no ``alembic_version``): its tables are compared with the baseline
  revision's; when they match it is stamped at the baseline, so its rows stay where they are, and the
  later revisions run; when they do not, nothing is changed and the differences are reported;
- at an older revision: the later revisions run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, inspect

from linewatch.detector.registry.db import make_engine
from linewatch.detector.registry.migrations import (
    BASELINE_REVISION,
    REGISTRY_TABLES,
    SCRIPT_LOCATION,
    VERSION_TABLE,
    SchemaRevisionError,
    lock_schema,
    registry_tables,
    stored_revision,
)

Shape = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Migration:
    """What ``migrate`` did: the revision before and after, and whether a pre-migration schema was adopted."""

    before: str | None
    after: str | None
    adopted_previous_schema: bool


def alembic_config(connection: Connection, script_location: Path = SCRIPT_LOCATION) -> Config:
    """An Alembic config that runs the scripts at ``script_location`` on ``connection`` (no alembic.ini)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["connection"] = connection
    return config


def migrate(url: str, *, script_location: Path = SCRIPT_LOCATION) -> Migration:
    """Upgrade the registry database at ``url`` to the head of ``script_location``."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            lock_schema(connection)
            return _migrate(connection, script_location)
    finally:
        engine.dispose()


def _migrate(connection: Connection, script_location: Path) -> Migration:
    before = stored_revision(connection)
    config = alembic_config(connection, script_location)
    adopted = before is None and bool(registry_tables(connection))
    if adopted:
        _require_baseline_shape(connection, script_location)
        command.stamp(config, BASELINE_REVISION)
    try:
        command.upgrade(config, "head")
    except CommandError as exc:  # a revision this linewatch has no script for
        raise SchemaRevisionError(f"registry database at revision {before}, which this linewatch cannot "
                                  f"migrate ({exc}); it was migrated by a newer linewatch") from None
    return Migration(before, stored_revision(connection), adopted)


def _require_baseline_shape(connection: Connection, script_location: Path) -> None:
    """Refuse to adopt tables that are not exactly the baseline's: stamping them would hide a mismatch."""
    expected = baseline_shape(script_location)
    found = schema_shape(connection, set(expected))
    differences = [f"{table}: {what}" for table in sorted(expected)
                   for what in _differences(expected[table], found.get(table))]
    if differences:
        raise SchemaRevisionError("registry database has tables but no revision, and they are not the schema "
                                  f"of revision {BASELINE_REVISION}, so it was left alone: " + "; ".join(differences))


def baseline_shape(script_location: Path = SCRIPT_LOCATION) -> Shape:
    """The baseline revision's tables, built in a scratch in-memory SQLite database."""
    scratch = create_engine("sqlite://")
    try:
        with scratch.begin() as connection:
            command.upgrade(alembic_config(connection, script_location), BASELINE_REVISION)
            return schema_shape(connection, set(REGISTRY_TABLES))
    finally:
        scratch.dispose()


def schema_shape(connection: Connection, tables: set[str]) -> Shape:
    """Names that must match whatever the dialect: columns and their nullability, keys, indexes."""
    inspector = inspect(connection)
    present = set(inspector.get_table_names()) - {VERSION_TABLE}
    return {table: {
        "columns": {c["name"]: c["nullable"] for c in inspector.get_columns(table)},
        "primary key": sorted(inspector.get_pk_constraint(table)["constrained_columns"]),
        "unique": sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
        # PostgreSQL also lists the index behind each unique constraint; those are compared as "unique".
        "indexes": {i["name"]: tuple(i["column_names"]) for i in inspector.get_indexes(table)
                    if not i.get("duplicates_constraint")},
        "foreign keys": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                               for f in inspector.get_foreign_keys(table)),
    } for table in sorted(present & tables)}


def _differences(expected: dict[str, Any], found: dict[str, Any] | None) -> list[str]:
    if found is None:
        return ["missing"]
    return [f"{part} differ (expected {expected[part]}, found {found[part]})"
            for part in expected if expected[part] != found[part]]
