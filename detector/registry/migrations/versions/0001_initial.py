"""The registry and audit schema as it was when migrations were introduced (the baseline).

Written out in full rather than derived from the models: a revision describes one fixed schema, and
the models will move on. A database made before migrations existed (``create_all``, no
``alembic_version``) has exactly these tables; ``linewatch models migrate`` recognises it and stamps
this revision instead of running it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit serial.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    _model_versions()
    _promotions()
    _audit()
    _alert_spans()
    _feedback()


def downgrade() -> None:
    for table in ("feedback", "alert_spans", "audit", "promotions", "model_versions"):
        op.drop_table(table)


def _model_versions() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=12), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=200), nullable=False),
        sa.Column("backbone", sa.String(length=100), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("image_threshold", sa.Float(), nullable=False),
        sa.Column("pixel_threshold", sa.Float(), nullable=False),
        sa.Column("tensor_sha256", sa.String(length=64), nullable=False),
        sa.Column("metadata_sha256", sa.String(length=64), nullable=False),
        sa.Column("calibration", sa.JSON(), nullable=False),
        sa.Column("training", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("feedback_ids", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("registered_by", sa.String(length=200), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_index("ix_model_versions_product", "model_versions", ["product"])


def _promotions() -> None:
    op.create_table(
        "promotions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("product", sa.String(length=200), nullable=False),
        sa.Column("line", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=12), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["version"], ["model_versions.version"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_promotions_scope", "promotions", ["product", "line", "id"])


def _audit() -> None:
    op.create_table(
        "audit",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.String(length=200), nullable=False),
        sa.Column("line_id", sa.String(length=200), nullable=False),
        sa.Column("product", sa.String(length=200), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("capture_ns", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("image_threshold", sa.Float(), nullable=False),
        sa.Column("pixel_threshold", sa.Float(), nullable=True),
        sa.Column("image_score", sa.Float(), nullable=False),
        sa.Column("normalised_score", sa.Float(), nullable=False),
        sa.Column("anomalous", sa.Boolean(), nullable=False),
        sa.Column("heatmap_key", sa.Text(), nullable=True),
        sa.Column("alert_id", sa.String(length=200), nullable=True),
        sa.Column("frame_partition", sa.Integer(), nullable=False),
        sa.Column("frame_offset", sa.BigInteger(), nullable=False),
        sa.Column("processed_ns", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.String(length=20), nullable=True),
        sa.Column("defect_type", sa.String(length=200), nullable=True),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("camera_id", "sequence", "capture_ns", "model_version", name="uq_audit_frame_model"),
    )
    op.create_index("ix_audit_camera_time", "audit", ["camera_id", "capture_ns"])
    op.create_index("ix_audit_capture", "audit", ["capture_ns"])


def _alert_spans() -> None:
    op.create_table(
        "alert_spans",
        sa.Column("alert_id", sa.String(length=200), nullable=False),
        sa.Column("camera_id", sa.String(length=200), nullable=False),
        sa.Column("start_sequence", sa.BigInteger(), nullable=False),
        sa.Column("end_sequence", sa.BigInteger(), nullable=True),
        sa.Column("severity", sa.String(length=50), nullable=False),
        sa.PrimaryKeyConstraint("alert_id"),
    )
    op.create_index("ix_alert_spans_camera", "alert_spans", ["camera_id", "start_sequence"])


def _feedback() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("camera_id", sa.String(length=200), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=False),
        sa.Column("defect_type", sa.String(length=200), nullable=True),
        sa.Column("product", sa.String(length=200), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("alert_id", sa.String(length=200), nullable=True),
        sa.Column("capture_ns", sa.BigInteger(), nullable=True),
        sa.Column("heatmap_key", sa.Text(), nullable=True),
        sa.Column("heatmap_png", sa.LargeBinary(), nullable=True),
        sa.Column("frame_partition", sa.Integer(), nullable=False),
        sa.Column("frame_offset", sa.BigInteger(), nullable=False),
        sa.Column("by", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_feedback_frame", "feedback", ["camera_id", "sequence"])
    op.create_index("ix_feedback_product", "feedback", ["product", "id"])
