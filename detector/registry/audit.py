"""Audit trail: one row per scored frame, written by a consumer of the ``results`` topic.

Each row answers "which model judged this part, with which thresholds, and what did it say":
camera, line, product (from the registry record of the model version), sequence, capture time,
model version, image and pixel thresholds, raw and normalised score, verdict, heatmap key, the
frame's place in the ``frames`` topic (so feedback export can fetch the image) and the alert id.

Alert ids come from the ``alerts`` topic (when the alerts service publishes it): each alert event
records the span of sequences it covers, and anomalous frames of that camera inside the span get
its id, whichever of the two records arrives first.

Delivery: offsets are committed after the rows are committed, and a frame is unique per
(camera, sequence, capture time, model version), so a restart re-reads a few results without
writing a row twice. Rows older than ``audit_retention_days`` (capture time) are pruned.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from pydantic import ValidationError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from linewatch.detector.events import EVENT_SCHEMA_VERSION, FrameResult
from linewatch.detector.registry.db import AlertSpan, AuditRecord, Database, ModelVersion
from linewatch.detector.registry.offsets import end_offsets
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.times import iso

log = logging.getLogger(__name__)

AUDIT_COLUMNS = ("camera_id", "line_id", "product", "sequence", "capture_ns", "capture_time", "model_version",
                 "image_threshold", "pixel_threshold", "image_score", "normalised_score", "anomalous",
                 "heatmap_key", "alert_id", "label", "defect_type", "source_id", "frame_partition", "frame_offset")
_CHUNK = 500  # rows per INSERT: well under PostgreSQL's 65535 bind parameters


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING in the session's dialect; returns the rows written."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement: Any = pg_insert(AuditRecord).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(AuditRecord).on_conflict_do_nothing()
    written = 0
    for start in range(0, len(rows), _CHUNK):
        # RETURNING counts the rows really inserted (executemany reports no rowcount)
        written += len(session.execute(statement.returning(AuditRecord.id), rows[start:start + _CHUNK]).all())
    return written


class AuditWriter:
    """Turns results and alert events into audit rows."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._versions: dict[str, tuple[str | None, float | None]] = {}

    def _version_info(self, session: Session, version: str) -> tuple[str | None, float | None]:
        """(product, pixel threshold) of a registered version; (None, None) for an unregistered one."""
        if version not in self._versions:
            record = session.get(ModelVersion, version)
            info = (record.product, record.pixel_threshold) if record else (None, None)
            if record is None:
                return info  # it may be registered later: do not cache the miss
            self._versions[version] = info
        return self._versions[version]

    def write_results(self, results: Sequence[FrameResult]) -> int:
        """Insert one row per result (duplicates ignored); returns how many rows are new."""
        if not results:
            return 0
        with self.db.session() as session:
            spans = _open_spans(session, results)
            rows = [self._row(session, result, spans) for result in results]
            return _insert_ignoring_duplicates(session, rows)

    def _row(self, session: Session, r: FrameResult, spans: dict[str, list[AlertSpan]]) -> dict[str, Any]:
        product, pixel_threshold = self._version_info(session, r.model_version)
        alert_id = next((s.alert_id for s in spans.get(r.camera_id, []) if r.anomalous and _covers(s, r.sequence)),
                        None)
        return {"camera_id": r.camera_id, "line_id": r.line_id, "product": product, "sequence": r.sequence,
                "capture_ns": r.capture_ns, "model_version": r.model_version, "image_threshold": r.threshold,
                "pixel_threshold": pixel_threshold, "image_score": r.image_score,
                "normalised_score": r.normalised_score, "anomalous": r.anomalous, "heatmap_key": r.heatmap_key,
                "alert_id": alert_id, "frame_partition": r.partition, "frame_offset": r.offset,
                "processed_ns": r.processed_ns, "label": r.label, "defect_type": r.defect_type,
                "source_id": r.source_id}

    def apply_alert(self, event: dict[str, Any]) -> None:
        """Record an alert event's span and stamp its id on the anomalous frames already audited."""
        alert = event["alert"]
        alert_id, camera = str(alert["alert_id"]), str(alert["camera_id"])
        start, end = int(alert["start_sequence"]), alert.get("end_sequence")
        with self.db.session() as session:
            span = session.get(AlertSpan, alert_id) or AlertSpan(alert_id=alert_id, camera_id=camera,
                                                                  start_sequence=start)
            span.end_sequence = None if end is None else int(end)
            span.severity = str(alert.get("severity", ""))
            session.add(span)
            condition = [AuditRecord.camera_id == camera, AuditRecord.sequence >= start, AuditRecord.anomalous,
                         AuditRecord.alert_id.is_(None)]
            if end is not None:
                condition.append(AuditRecord.sequence <= int(end))
            session.execute(update(AuditRecord).where(*condition).values(alert_id=alert_id))

    def prune(self, retention_s: float, now_ns: int | None = None) -> int:
        """Delete rows captured more than ``retention_s`` ago; returns how many."""
        cutoff = (time.time_ns() if now_ns is None else now_ns) - int(retention_s * 1e9)
        with self.db.session() as session:
            result: Any = session.execute(delete(AuditRecord).where(AuditRecord.capture_ns < cutoff))
            return int(result.rowcount or 0)


def _covers(span: AlertSpan, sequence: int) -> bool:
    return span.start_sequence <= sequence and (span.end_sequence is None or sequence <= span.end_sequence)


def _open_spans(session: Session, results: Sequence[FrameResult]) -> dict[str, list[AlertSpan]]:
    """Alert spans that may cover some anomalous result of this batch, per camera."""
    cameras = {r.camera_id for r in results if r.anomalous}
    if not cameras:
        return {}
    low = min(r.sequence for r in results)
    found: dict[str, list[AlertSpan]] = {}
    query = select(AlertSpan).where(AlertSpan.camera_id.in_(cameras),
                                    or_(AlertSpan.end_sequence.is_(None), AlertSpan.end_sequence >= low))
    for span in session.scalars(query):
        found.setdefault(span.camera_id, []).append(span)
    return found


# ---- reading -------------------------------------------------------------------------------------------------


def query_audit(db: Database, *, camera: str | None = None, since_ns: int | None = None,
                until_ns: int | None = None, sequence: int | None = None, limit: int | None = 1000,
                ) -> list[dict[str, Any]]:
    """Audit rows as dicts, oldest first, filtered by camera, capture time and sequence."""
    with db.session() as session:
        return [as_dict(row) for row in session.scalars(_select(camera, since_ns, until_ns, sequence, limit))]


def _select(camera: str | None, since_ns: int | None, until_ns: int | None, sequence: int | None,
            limit: int | None) -> Any:
    query = select(AuditRecord)
    if camera is not None:
        query = query.where(AuditRecord.camera_id == camera)
    if since_ns is not None:
        query = query.where(AuditRecord.capture_ns >= since_ns)
    if until_ns is not None:
        query = query.where(AuditRecord.capture_ns < until_ns)
    if sequence is not None:
        query = query.where(AuditRecord.sequence == sequence)
    query = query.order_by(AuditRecord.capture_ns, AuditRecord.camera_id, AuditRecord.sequence)
    return query.limit(limit) if limit else query


def as_dict(row: AuditRecord) -> dict[str, Any]:
    """One audit row in the export's column order (``capture_time`` added as ISO-8601 UTC)."""
    values = {column: getattr(row, column, None) for column in AUDIT_COLUMNS if column != "capture_time"}
    values["capture_time"] = iso(row.capture_ns)
    return {column: values[column] for column in AUDIT_COLUMNS}


def export_csv(db: Database, out: TextIO, *, camera: str | None = None, since_ns: int | None = None,
               until_ns: int | None = None) -> int:
    """Write matching rows as CSV (header first), streaming; returns the number of rows."""
    writer = csv.DictWriter(out, fieldnames=list(AUDIT_COLUMNS))
    writer.writeheader()
    count = 0
    with db.session() as session:
        for row in session.scalars(_select(camera, since_ns, until_ns, None, None).execution_options(yield_per=2000)):
            writer.writerow(as_dict(row))
            count += 1
    return count


def explain(db: Database, camera: str, sequence: int) -> list[dict[str, Any]]:
    """Every audit row of one part with the registry record of the model that judged it."""
    rows = query_audit(db, camera=camera, sequence=sequence, limit=None)
    with db.session() as session:
        for row in rows:
            record = session.get(ModelVersion, row["model_version"])
            row["model"] = None if record is None else {
                "product": record.product, "backbone": record.backbone, "image_size": record.image_size,
                "calibration": record.calibration, "registered_by": record.registered_by,
                "registered_at": record.registered_at.isoformat(), "notes": record.notes}
    return rows


# ---- the consumer --------------------------------------------------------------------------------------------


class AuditConsumer:
    """Reads ``results`` (and ``alerts`` where it exists) into the audit table."""

    def __init__(self, settings: RegistrySettings, db: Database, *, group_id: str | None = None) -> None:
        self.settings, self.writer = settings, AuditWriter(db)
        config = settings.kafka.client_config()
        # the other services' 10 s session: a restarted writer gets its partitions back in seconds, not librdkafka's 45
        config.update({"group.id": group_id or settings.registry.audit_group_id, "enable.auto.commit": False,
                       "auto.offset.reset": "earliest", "enable.partition.eof": False,
                       "session.timeout.ms": 10_000, "heartbeat.interval.ms": 2_500})
        self.consumer = Consumer(config)
        self.written = self.skipped = 0
        self._last_prune = 0.0

    def _topics(self) -> list[str]:
        names = set(self.consumer.list_topics(timeout=15).topics)
        wanted = [self.settings.topics.results, self.settings.topics.alerts]
        if self.settings.topics.results not in names:
            raise KafkaException(f"topic {self.settings.topics.results} does not exist yet")
        return [t for t in wanted if t in names]

    def run(self, stop: threading.Event, *, until_end: bool = False, batch: int = 500) -> None:
        """Consume until ``stop`` is set, or (``until_end``) until the end offsets seen at start."""
        try:
            ends = self._assign_to_end() if until_end else None
            if ends is None:
                self.consumer.subscribe(self._topics())
            while not stop.is_set():
                messages = self.consumer.consume(num_messages=batch, timeout=0.5)
                self._handle(messages)
                self._maybe_prune()
                if ends is not None and self._reached(ends):
                    break
        finally:
            self.consumer.close()

    def _assign_to_end(self) -> dict[tuple[str, int], int]:
        """Assign every partition from the group's committed offset; returns the end offset of each."""
        metadata = self.consumer.list_topics(timeout=15)
        ends: dict[tuple[str, int], int] = {}
        self._starts: dict[tuple[str, int], int] = {}
        for topic in self._topics():
            partitions = sorted(metadata.topics[topic].partitions)
            ends.update({(topic, p): end for p, end in end_offsets(self.consumer, topic, partitions).items()})
            for tp in self.consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=15):
                low, _high = self.consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=15)
                self._starts[(topic, tp.partition)] = tp.offset if tp.offset >= 0 else low
        self.consumer.assign([TopicPartition(t, p, o if o >= 0 else OFFSET_BEGINNING)
                              for (t, p), o in self._starts.items()])
        return ends

    def _reached(self, ends: dict[tuple[str, int], int]) -> bool:
        """Every partition's position (or, before its first record, its start) is at its end offset."""
        positions = self.consumer.position([TopicPartition(t, p) for t, p in ends])
        for tp in positions:
            key = (tp.topic, tp.partition)
            if max(tp.offset, self._starts[key]) < ends[key]:
                return False
        return True

    def _handle(self, messages: Iterable[Message]) -> None:
        results: list[FrameResult] = []
        alerts: list[dict[str, Any]] = []
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error():
                log.warning("audit consumer: %s", msg.error())
                continue
            offsets[(str(msg.topic()), int(msg.partition() or 0))] = int(msg.offset() or 0) + 1
            self._decode(msg, results, alerts)
        if not offsets:
            return
        self.written += self.writer.write_results(results)
        for event in alerts:
            self.writer.apply_alert(event)
        self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)

    def _decode(self, msg: Message, results: list[FrameResult], alerts: list[dict[str, Any]]) -> None:
        """Append the record to ``results`` or ``alerts``; a record that is neither is counted and skipped."""
        try:
            if msg.topic() == self.settings.topics.results:
                result = FrameResult.model_validate_json(msg.value() or b"")
                if result.schema_version != EVENT_SCHEMA_VERSION:
                    raise ValueError(f"schema_version {result.schema_version}")
                results.append(result)
            else:
                event = json.loads(msg.value() or b"")
                if {"alert_id", "camera_id", "start_sequence"} - set(event.get("alert", {})):
                    raise ValueError("not an alert event")
                alerts.append(event)
        except (ValidationError, ValueError, AttributeError, TypeError) as exc:
            self.skipped += 1
            log.warning("audit: skipped %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(),
                        str(exc).splitlines()[0][:200])

    def _maybe_prune(self, every_s: float = 600.0) -> None:
        if time.monotonic() - self._last_prune < every_s:
            return
        self._last_prune = time.monotonic()
        pruned = self.writer.prune(self.settings.registry.audit_retention_days * 86400)
        if pruned:
            log.info("audit: pruned %d rows older than %.1f days", pruned, self.settings.registry.audit_retention_days)
