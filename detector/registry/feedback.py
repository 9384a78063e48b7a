"""Operator feedback: "false alarm" / "real defect" marks, and their export as a training data set.

:func:`record_feedback` is what the operator API calls; it fills product, model version, capture
time and the frame's place in the ``frames`` topic from the audit row of that frame, so the export
can fetch the original image from Kafka later (the operator page only has the overlay).

:func:`export_feedback` writes an MVTec-layout folder that ``linewatch train`` reads:

- ``train/good/<camera>-<sequence>.png``            frames marked false alarm;
- ``test/<defect type or "defect">/<camera>-<sequence>.png``   frames marked real defect;
- ``heatmaps/<type>/<camera>-<sequence>_overlay.png`` the detector's overlay where it was saved;
- ``feedback_manifest.json``                          ids exported and frames skipped (with the reason).

Images come from the frames topic at the audited offset; a frame that has left the topic
(retention) or fails to decode is skipped and listed in the manifest, never silently dropped.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import select

from linewatch.common.settings import KafkaSettings
from linewatch.detector.registry.db import AuditRecord, Database, Feedback
from linewatch.detector.registry.models import FEEDBACK_MANIFEST
from linewatch.errors import DataError
from linewatch.ingest.wire import WireFormatError, decode_frame

VERDICTS = ("false_alarm", "real_defect")


class FeedbackError(DataError, ValueError):
    """Feedback that cannot be recorded or exported; the message says why."""


def record_feedback(db: Database, *, camera_id: str, sequence: int, verdict: str, by: str,
                    defect_type: str | None = None, alert_id: str | None = None, note: str = "",
                    heatmap_png: bytes | None = None, product: str | None = None) -> Feedback:
    """Store one mark; the audit row of the frame (latest scoring) supplies where the frame is."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    with db.session() as session:
        audit = session.scalars(select(AuditRecord).where(AuditRecord.camera_id == camera_id,
                                                          AuditRecord.sequence == sequence)
                                .order_by(AuditRecord.processed_ns.desc()).limit(1)).first()
        entry = Feedback(camera_id=camera_id, sequence=sequence, verdict=verdict, defect_type=defect_type,
                         by=by, note=note, heatmap_png=heatmap_png,
                         alert_id=alert_id or (audit.alert_id if audit else None),
                         product=product or (audit.product if audit else None),
                         model_version=audit.model_version if audit else None,
                         capture_ns=audit.capture_ns if audit else None,
                         heatmap_key=audit.heatmap_key if audit else None,
                         frame_partition=audit.frame_partition if audit else -1,
                         frame_offset=audit.frame_offset if audit else -1)
        session.add(entry)
    return entry


@dataclass
class ExportSummary:
    """What an export wrote and what it had to skip."""

    good: int = 0
    defects: int = 0
    heatmaps: int = 0
    feedback_ids: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)


class FrameFetcher:
    """Reads single frames from the ``frames`` topic by (partition, offset)."""

    def __init__(self, kafka: KafkaSettings, topic: str, timeout_s: float = 10.0) -> None:
        config = kafka.client_config()
        config.update({"group.id": f"linewatch-feedback-export-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                       "enable.partition.eof": True})
        self.consumer, self.topic, self.timeout_s = Consumer(config), topic, timeout_s

    def fetch(self, partition: int, offset: int, camera_id: str, sequence: int) -> np.ndarray:
        """The decoded RGB frame; FeedbackError when it is gone or is not the frame the audit named."""
        if partition < 0 or offset < 0:
            raise FeedbackError("no audit row locates this frame in the frames topic")
        low, _high = self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=self.timeout_s)
        if offset < low:
            raise FeedbackError(f"frame left the {self.topic} topic (retention); earliest offset is {low}")
        self.consumer.assign([TopicPartition(self.topic, partition, offset)])
        msg = self.consumer.poll(self.timeout_s)
        if msg is None or msg.error() or msg.offset() != offset:
            raise FeedbackError(f"could not read {self.topic}[{partition}]@{offset}: "
                                f"{msg.error() if msg is not None and msg.error() else 'no record'}")
        try:
            meta, image = decode_frame(msg.value(), cast(Any, msg.headers()))
        except WireFormatError as exc:
            raise FeedbackError(f"frame at {self.topic}[{partition}]@{offset} does not decode: {exc}") from None
        if (meta.camera_id, meta.sequence) != (camera_id, sequence):
            raise FeedbackError(f"{self.topic}[{partition}]@{offset} is {meta.camera_id}/{meta.sequence}, "
                                f"not {camera_id}/{sequence}")
        return image

    def close(self) -> None:
        """Leave the broker."""
        self.consumer.close()


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise FeedbackError(f"cannot write {path}")


def export_feedback(db: Database, fetcher: FrameFetcher, *, product: str, out: Path) -> ExportSummary:
    """Write the product's marked frames as an MVTec-layout folder plus a manifest; returns the summary."""
    with db.session() as session:
        entries = list(session.scalars(select(Feedback).where(Feedback.product == product).order_by(Feedback.id)))
    latest = {(e.camera_id, e.sequence): e for e in entries}  # a later mark of the same frame wins
    summary = ExportSummary()
    for entry in latest.values():
        try:
            image = fetcher.fetch(entry.frame_partition, entry.frame_offset, entry.camera_id, entry.sequence)
        except FeedbackError as exc:
            summary.skipped.append({"id": entry.id, "camera_id": entry.camera_id, "sequence": entry.sequence,
                                    "reason": str(exc)})
            continue
        _export_one(entry, image, out, summary)
    manifest = {"product": product, "feedback_ids": summary.feedback_ids, "good": summary.good,
                "defects": summary.defects, "heatmaps": summary.heatmaps, "skipped": summary.skipped}
    out.mkdir(parents=True, exist_ok=True)
    (out / FEEDBACK_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


def _export_one(entry: Feedback, image: np.ndarray, out: Path, summary: ExportSummary) -> None:
    name = f"{entry.camera_id}-{entry.sequence}"
    if entry.verdict == "false_alarm":
        _write_png(out / "train" / "good" / f"{name}.png", image)
        summary.good += 1
    else:
        kind = entry.defect_type or "defect"
        _write_png(out / "test" / kind / f"{name}.png", image)
        summary.defects += 1
        if entry.heatmap_png:
            target = out / "heatmaps" / kind / f"{name}_overlay.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(entry.heatmap_png)
            summary.heatmaps += 1
    summary.feedback_ids.append(entry.id)
