"""Registry tables (SQLAlchemy 2) and the engine: SQLite by default, PostgreSQL in production.

Tables:

- ``model_versions``  one row per registered checkpoint; the primary key is the version, the first
                      12 hex digits of the file's sha256 (what the detector writes as ``model_version``);
- ``promotions``      append-only history of promotions and rollbacks per (product, line); the active
                      version is derived from it, so a rollback is always defined and nothing is lost;
- ``audit``           one row per scored frame (camera, sequence, capture time, model version,
                      thresholds, score, verdict, heatmap key, alert id), indexed by (camera, capture time);
- ``alert_spans``     which frames each alert covers (from the ``alerts`` topic), to fill ``audit.alert_id``;
- ``feedback``        operators' marks on a frame or alert: false alarm or real defect.

The schema has revisions (Alembic, :mod:`.migrations`): opening a :class:`Database` checks that the
database is at the revision this code needs and refuses it otherwise (``linewatch models migrate``
upgrades it); only a database without any of these tables is created, directly at that revision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")
ALL_LINES = ""  # a promotion for every line of a product


def utcnow() -> datetime:
    """Timezone-aware now (UTC)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the registry tables."""


class ModelVersion(Base):
    """A registered checkpoint."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(12), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    product: Mapped[str] = mapped_column(String(200), index=True)
    backbone: Mapped[str] = mapped_column(String(100))
    image_size: Mapped[int] = mapped_column(Integer)
    image_threshold: Mapped[float] = mapped_column(Float)
    pixel_threshold: Mapped[float] = mapped_column(Float)
    tensor_sha256: Mapped[str] = mapped_column(String(64))
    metadata_sha256: Mapped[str] = mapped_column(String(64))
    calibration: Mapped[dict[str, Any]] = mapped_column(JSON)
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    feedback_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(Text, default="")
    registered_by: Mapped[str] = mapped_column(String(200))
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    store_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)


class Promotion(Base):
    """One entry of the append-only promotion history of a (product, line)."""

    __tablename__ = "promotions"
    __table_args__ = (Index("ix_promotions_scope", "product", "line", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product: Mapped[str] = mapped_column(String(200))
    line: Mapped[str] = mapped_column(String(200), default=ALL_LINES)
    version: Mapped[str] = mapped_column(ForeignKey("model_versions.version"))
    action: Mapped[str] = mapped_column(String(20))  # promote | rollback
    by: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")


class AuditRecord(Base):
    """Which model judged one frame, with what thresholds, and what it said."""

    __tablename__ = "audit"
    __table_args__ = (
        Index("ix_audit_camera_time", "camera_id", "capture_ns"),
        Index("ix_audit_capture", "capture_ns"),
        UniqueConstraint("camera_id", "sequence", "capture_ns", "model_version", name="uq_audit_frame_model"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(200))
    line_id: Mapped[str] = mapped_column(String(200))
    product: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sequence: Mapped[int] = mapped_column(BigInteger)
    capture_ns: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[str] = mapped_column(String(64))
    image_threshold: Mapped[float] = mapped_column(Float)
    pixel_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    image_score: Mapped[float] = mapped_column(Float)
    normalised_score: Mapped[float] = mapped_column(Float)
    anomalous: Mapped[bool] = mapped_column(Boolean)
    heatmap_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    alert_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    frame_partition: Mapped[int] = mapped_column(Integer, default=-1)
    frame_offset: Mapped[int] = mapped_column(BigInteger, default=-1)
    processed_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    label: Mapped[str | None] = mapped_column(String(20), nullable=True)
    defect_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source_id: Mapped[str | None] = mapped_column(Text, nullable=True)


class AlertSpan(Base):
    """The frames an alert covers, from the ``alerts`` topic: links audit rows to alert ids."""

    __tablename__ = "alert_spans"
    __table_args__ = (Index("ix_alert_spans_camera", "camera_id", "start_sequence"),)

    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    camera_id: Mapped[str] = mapped_column(String(200))
    start_sequence: Mapped[int] = mapped_column(BigInteger)
    end_sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # None while firing
    severity: Mapped[str] = mapped_column(String(50), default="")


class Feedback(Base):
    """An operator's judgement of one frame: ``false_alarm`` or ``real_defect``."""

    __tablename__ = "feedback"
    __table_args__ = (Index("ix_feedback_product", "product", "id"),
                      Index("ix_feedback_frame", "camera_id", "sequence"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(200))
    sequence: Mapped[int] = mapped_column(BigInteger)
    verdict: Mapped[str] = mapped_column(String(20))  # false_alarm | real_defect
    defect_type: Mapped[str | None] = mapped_column(String(200), nullable=True)
    product: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    alert_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    capture_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    heatmap_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    heatmap_png: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    frame_partition: Mapped[int] = mapped_column(Integer, default=-1)
    frame_offset: Mapped[int] = mapped_column(BigInteger, default=-1)
    by: Mapped[str] = mapped_column(String(200))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str] = mapped_column(Text, default="")


def make_engine(url: str) -> Engine:
    """An engine for ``url``, tables untouched; a SQLite file's folder is created too."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30})
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the audit consumer write while the CLI and the operator API read.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """An engine plus a session factory; ``with db.session() as s:`` commits on success.

    Opening refuses a database at another schema revision (``SchemaRevisionError``, one line that
    says to run ``linewatch models migrate``) and creates the tables of an empty one.
    """

    def __init__(self, url: str) -> None:
        from linewatch.detector.registry.migrations import check_revision  # it imports this module

        self.url = url
        self.engine = make_engine(url)
        try:
            check_revision(self.engine, Base.metadata)
        except BaseException:
            self.engine.dispose()
            raise
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on an exception."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()
