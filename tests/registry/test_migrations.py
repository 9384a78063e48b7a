"""Schema revisions of the registry: Alembic scripts, ``linewatch models migrate`` and the start-up check.

Each test runs on a real SQLite file and on a real PostgreSQL database of its own (created on the
server of ``LINEWATCH_TEST_POSTGRES`` and dropped afterwards). "Made by the previous code" means
what linewatch did before revisions existed: ``Base.metadata.create_all`` and no ``alembic_version``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, insert, inspect, select, text

from linewatch.detector.registry.db import Base, Database, make_engine
from linewatch.detector.registry.migrations import (
    HEAD_REVISION,
    KNOWN_REVISIONS,
    SCRIPT_LOCATION,
    SchemaRevisionError,
    check_revision,
    stored_revision,
)
from linewatch.detector.registry.migrations.upgrade import Migration, migrate

ADMIN_URL = os.environ.get("LINEWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
LINEWATCH = Path(sys.executable).with_name("linewatch")
NOW = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)

NewUrl = Callable[[], str]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NewUrl]:
    """A factory of URLs of new, empty databases of the parametrised backend."""
    if request.param == "sqlite":
        yield lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex[:8]}.db"
        return
    yield from _postgres_databases()


def _postgres_databases() -> Iterator[NewUrl]:
    import psycopg

    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} ({str(exc).strip().splitlines()[0]})")
    made: list[str] = []
    base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)

    def new() -> str:
        made.append(f"lw_migrate_{uuid.uuid4().hex[:12]}")
        admin.execute(f'CREATE DATABASE "{made[-1]}"')
        return f"{base}/{made[-1]}"

    with admin:
        try:
            yield new
        finally:
            for name in made:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def previous_code_database(url: str) -> Engine:
    """A database as linewatch made it before revisions existed, with rows in every table."""
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    fill_every_table(engine)
    return engine


def fill_every_table(engine: Engine) -> None:
    """Two rows in each registry table, every column given a value (nullable ones too)."""
    tables = Base.metadata.tables
    version = {"sha256": "", "product": "tiles", "backbone": "resnet18", "image_size": 256,
               "image_threshold": 1.5, "pixel_threshold": 2.5, "tensor_sha256": "t" * 64,
               "metadata_sha256": "m" * 64, "calibration": {"image_threshold": 1.5}, "training": {"epochs": 3},
               "metrics": {"image_auroc": 0.97}, "feedback_ids": [1, 2], "notes": "first", "registered_by": "ana",
               "registered_at": NOW, "store_path": "/store/x.safetensors", "size_bytes": 123456789012}
    audit = {"line_id": "line-1", "product": "tiles", "capture_ns": 1_800_000_000_000_000_000,
             "model_version": "a" * 12, "image_threshold": 1.5, "pixel_threshold": 2.5, "image_score": 1.2,
             "normalised_score": 0.4, "anomalous": False, "heatmap_key": "lw:heat:1", "alert_id": "al-1",
             "frame_partition": 1, "frame_offset": 42, "processed_ns": 5, "label": "good", "defect_type": None,
             "source_id": "src"}
    feedback = {"camera_id": "cam-0", "verdict": "false_alarm", "defect_type": None, "product": "tiles",
                "model_version": "a" * 12, "alert_id": "al-1", "capture_ns": 7, "heatmap_key": "k",
                "heatmap_png": b"\x89PNG", "frame_partition": 0, "frame_offset": 3, "by": "op", "at": NOW, "note": ""}
    with engine.begin() as connection:
        connection.execute(insert(tables["model_versions"]), [
            {**version, "version": "a" * 12, "sha256": "a" * 64},
            {**version, "version": "b" * 12, "sha256": "b" * 64, "metrics": None}])
        connection.execute(insert(tables["promotions"]), [
            {"product": "tiles", "line": "", "version": v, "action": a, "by": "ana", "at": NOW, "note": "n"}
            for v, a in (("a" * 12, "promote"), ("b" * 12, "promote"))])
        connection.execute(insert(tables["audit"]), [
            {**audit, "camera_id": f"cam-{i}", "sequence": i} for i in range(2)])
        connection.execute(insert(tables["alert_spans"]), [
            {"alert_id": "al-1", "camera_id": "cam-0", "start_sequence": 0, "end_sequence": None, "severity": "warn"},
            {"alert_id": "al-2", "camera_id": "cam-1", "start_sequence": 4, "end_sequence": 9, "severity": ""}])
        connection.execute(insert(tables["feedback"]), [{**feedback, "sequence": i} for i in range(2)])


def every_row(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """All rows of the registry's tables (the columns of today's models), in primary-key order."""
    with engine.connect() as connection:
        return {name: [tuple(row) for row in connection.execute(select(table).order_by(*table.primary_key))]
                for name, table in Base.metadata.tables.items()}


def schema_snapshot(engine: Engine) -> dict[str, Any]:
    """Tables, columns (type, nullability, default), keys and indexes as the database reports them."""
    inspector = inspect(engine)
    return {table: {
        "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"), c.get("autoincrement"))
                    for c in inspector.get_columns(table)],
        "primary key": inspector.get_pk_constraint(table),
        "unique": sorted(str(u) for u in inspector.get_unique_constraints(table)),
        "indexes": sorted(str(i) for i in inspector.get_indexes(table)),
        "foreign keys": sorted(str(f) for f in inspector.get_foreign_keys(table)),
    } for table in sorted(inspector.get_table_names()) if table != "alembic_version"}


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return stored_revision(connection)


def test_the_known_revisions_are_the_scripts_in_order() -> None:
    scripts = ScriptDirectory(str(SCRIPT_LOCATION))
    assert [s.revision for s in reversed(list(scripts.walk_revisions()))] == list(KNOWN_REVISIONS)
    assert scripts.get_heads() == [HEAD_REVISION]


def test_upgrade_head_builds_exactly_the_schema_of_the_models(new_url: NewUrl) -> None:
    migrated, created = new_url(), new_url()
    assert migrate(migrated) == Migration(before=None, after=HEAD_REVISION, adopted_previous_schema=False)
    created_engine, migrated_engine = make_engine(created), make_engine(migrated)
    Base.metadata.create_all(created_engine)
    try:
        assert schema_snapshot(migrated_engine) == schema_snapshot(created_engine)
        with migrated_engine.connect() as connection:
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    finally:
        created_engine.dispose()
        migrated_engine.dispose()


def test_an_empty_database_is_created_at_head_when_opened(new_url: NewUrl) -> None:
    url = new_url()
    Database(url).close()
    engine = make_engine(url)
    try:
        assert revision_of(engine) == HEAD_REVISION
        assert set(inspect(engine).get_table_names()) == {*Base.metadata.tables, "alembic_version"}
    finally:
        engine.dispose()
    assert migrate(url) == Migration(HEAD_REVISION, HEAD_REVISION, adopted_previous_schema=False)


def test_a_database_of_the_previous_code_is_refused_then_migrated_keeping_every_row(new_url: NewUrl) -> None:
    url = new_url()
    engine = previous_code_database(url)
    rows = every_row(engine)
    assert all(len(table_rows) == 2 for table_rows in rows.values())
    with pytest.raises(SchemaRevisionError) as refused:
        Database(url)
    assert str(refused.value).endswith(f"at revision none (made before migrations), this linewatch needs "
                                       f"{HEAD_REVISION}: run `linewatch models migrate`")
    assert revision_of(engine) is None  # the check wrote nothing

    assert migrate(url) == Migration(before=None, after=HEAD_REVISION, adopted_previous_schema=True)
    assert every_row(engine) == rows
    db = Database(url)  # accepted now
    db.close()
    engine.dispose()


def test_tables_that_are_not_the_baseline_are_left_alone(new_url: NewUrl) -> None:
    url = new_url()
    engine = previous_code_database(url)
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_audit_capture"))
        connection.execute(text("ALTER TABLE feedback ADD COLUMN extra INTEGER"))
    with pytest.raises(SchemaRevisionError, match=r"left alone: audit: indexes differ.*; feedback: columns differ"):
        migrate(url)
    assert revision_of(engine) is None
    engine.dispose()


SECOND_REVISION = '''\
"""Test-only revision: a nullable column and an index on the audit table."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("reviewed_by", sa.String(200), nullable=True))
        batch.create_index("ix_audit_reviewed_by", ["reviewed_by"])


def downgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.drop_index("ix_audit_reviewed_by")
        batch.drop_column("reviewed_by")
'''


@pytest.fixture
def scripts_with_second_revision(tmp_path: Path) -> Path:
    """The package's scripts plus a test-only revision 0002, as the next release would ship them."""
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (scripts / "versions" / "0002_reviewed_by.py").write_text(textwrap.dedent(SECOND_REVISION))
    return scripts


def test_a_later_revision_keeps_every_row(new_url: NewUrl, scripts_with_second_revision: Path) -> None:
    at_head, previous = new_url(), new_url()
    Database(at_head).close()
    fill_every_table(make_engine(at_head))
    previous_code_database(previous).dispose()
    for url, before in ((at_head, HEAD_REVISION), (previous, None)):
        engine = make_engine(url)
        rows = every_row(engine)
        done = migrate(url, script_location=scripts_with_second_revision)
        assert done == Migration(before=before, after="0002", adopted_previous_schema=before is None)
        assert every_row(engine) == rows
        audit = inspect(engine)
        assert "reviewed_by" in {c["name"] for c in audit.get_columns("audit")}
        assert "ix_audit_reviewed_by" in {i["name"] for i in audit.get_indexes("audit")}
        check_revision(engine, MetaData(), head="0002", known=("0001", "0002"))  # the next release accepts it
        with pytest.raises(SchemaRevisionError, match="at revision 0002, which this linewatch does not know"):
            Database(url)  # and this one, which does not know 0002, refuses it
        with pytest.raises(SchemaRevisionError, match="at revision 0002, which this linewatch cannot migrate"):
            migrate(url)
        engine.dispose()


FAILING_REVISION = '''\
"""Test-only revision that fails half-way."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit") as batch:
        batch.add_column(sa.Column("half_done", sa.String(20), nullable=True))
    raise RuntimeError("the second half of the migration failed")


def downgrade() -> None:
    pass
'''


def test_a_failing_revision_changes_nothing(new_url: NewUrl, tmp_path: Path) -> None:
    scripts = tmp_path / "failing"
    shutil.copytree(SCRIPT_LOCATION, scripts, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (scripts / "versions" / "0002_fails.py").write_text(FAILING_REVISION)
    url = new_url()
    engine = previous_code_database(url)
    rows = every_row(engine)
    with pytest.raises(RuntimeError, match="second half"):
        migrate(url, script_location=scripts)
    assert revision_of(engine) is None, "not even the baseline stamp stays"
    assert "half_done" not in {c["name"] for c in inspect(engine).get_columns("audit")}
    assert every_row(engine) == rows
    engine.dispose()


def test_the_start_up_check_refuses_an_out_of_date_database_with_one_line(new_url: NewUrl) -> None:
    url = new_url()
    Database(url).close()
    engine = make_engine(url)
    with pytest.raises(SchemaRevisionError) as refused:
        check_revision(engine, Base.metadata, head="0002", known=("0001", "0002"))
    shown = engine.url.render_as_string(hide_password=True)
    assert str(refused.value) == (f"registry database {shown} at revision 0001, this linewatch needs 0002: "
                                  "run `linewatch models migrate`")
    assert revision_of(engine) == "0001"
    engine.dispose()


def test_services_starting_together_on_an_empty_database_all_open_it(new_url: NewUrl) -> None:
    url = new_url()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            Database(url).close()
        except BaseException as exc:  # collected: the assertion below shows every starter that failed
            errors.append(exc)

    starters = [threading.Thread(target=start) for _ in range(4)]
    for starter in starters:
        starter.start()
    for starter in starters:
        starter.join(60)
    assert errors == []
    engine = make_engine(url)
    assert revision_of(engine) == HEAD_REVISION
    engine.dispose()


def _linewatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINEWATCH), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.integration  # runs the installed `linewatch` four times: seconds each
def test_linewatch_models_migrate_on_the_command_line(new_url: NewUrl) -> None:
    url = new_url()
    engine = previous_code_database(url)
    rows = every_row(engine)
    shown = engine.url.render_as_string(hide_password=True)

    refused = _linewatch("models", "list", "--database-url", url)
    assert refused.returncode == 2  # a ConfigurationError: the deployment lacks a step
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("linewatch models") and line.endswith(
        f": error: registry database {shown} at revision none (made before migrations), "
        f"this linewatch needs {HEAD_REVISION}: run `linewatch models migrate`")

    migrated = _linewatch("models", "migrate", "--database", url)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == (f"registry database {shown} migrated from revision none to {HEAD_REVISION} "
                                       "(tables made before migrations recognised and kept)")
    assert every_row(engine) == rows

    again = _linewatch("models", "migrate", "--database-url", url)
    assert again.stdout.strip() == f"registry database {shown} is at revision {HEAD_REVISION}; nothing to do"
    listed = _linewatch("models", "list", "--database-url", url)
    assert listed.returncode == 0 and "a" * 12 in listed.stdout and "b" * 12 in listed.stdout
    engine.dispose()
