"""Shadow scoring by replay: a candidate and the active version score the line's own recent frames.

``linewatch models shadow VERSION --product P --since 2h`` reads the ``frames`` topic with its own
consumer group (never the detectors' group, and it commits nothing): each partition starts at the
offset of the first frame appended at or after ``--since`` (``offsets_for_times``) and stops at the
end offset captured when the run starts, so the replay is a fixed window even while the line keeps
producing. Every frame is scored by both models; a frame "alerts" under a model when its image
score reaches that model's own image threshold.

Budget for the live line: the replay is one extra consumer of already-written data (the broker
serves it from its log, the detectors are not involved; records older than ``--since`` that the seek
still returns are counted and dropped before decoding), fetches at most ``fetch_max_bytes`` per
request and, with ``max_rate``, at most that many frames a second; scoring runs in this process.

Frames with an ``lw-product`` header naming another product, or on another line than ``--line``,
are skipped and counted; frames that fail to decode are counted by reason, never scored.

Outputs ``report.json`` (everything measured) and ``report.html`` (the same, with score histograms
and both heatmaps of the frames where the two disagree most).
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.offsets import end_offsets
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.times import iso
from linewatch.errors import DataError
from linewatch.ingest.wire import FrameMeta, WireFormatError, decode_frame

log = logging.getLogger(__name__)
PRODUCT_HEADER = "lw-product"


class ShadowError(DataError, ValueError):
    """A shadow run that cannot start (no active version, no frames topic); the message says why."""


@dataclass(frozen=True)
class ShadowOptions:
    """What to replay and how."""

    candidate: str
    product: str
    since_ns: int
    line: str = ""
    top: int = 8
    batch_size: int = 16
    max_rate: float = 0.0  # frames per second, 0 = as fast as scoring allows
    fetch_max_bytes: int = 8 * 1024 * 1024
    device: str = "cpu"
    group_id: str | None = None
    idle_timeout_s: float = 60.0


@dataclass(order=True)
class _Disagreement:
    """One candidate for the "disagree most" table (ordered by how strongly the two disagree)."""

    key: tuple[int, float]
    serial: int
    row: dict[str, Any] = field(compare=False)
    images: dict[str, bytes] = field(compare=False)


@dataclass
class _Tally:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    top: list[_Disagreement] = field(default_factory=list)
    serial: int = 0
    incomplete: list[int] = field(default_factory=list)
    before_window: int = 0


def _window(consumer: Consumer, topic: str, since_ns: int, timeout_s: float = 15.0,
            ) -> tuple[list[TopicPartition], dict[int, int]]:
    """Start offset (first frame at/after ``since``) and end offset (now) of every partition with frames in it."""
    metadata = consumer.list_topics(topic, timeout=timeout_s)
    if topic not in metadata.topics or metadata.topics[topic].error is not None:
        raise ShadowError(f"topic {topic} does not exist on the broker")
    partitions = sorted(metadata.topics[topic].partitions)
    since_ms = since_ns // 1_000_000
    highs = end_offsets(consumer, topic, partitions, timeout_s)
    found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=timeout_s)
    starts, ends = [], {}
    for tp in found:
        if 0 <= tp.offset < highs[tp.partition]:  # -1: no frame appended since then in this partition
            starts.append(TopicPartition(topic, tp.partition, tp.offset))
            ends[tp.partition] = highs[tp.partition]
    return starts, ends


def _product_of(msg: Message) -> str | None:
    for name, value in cast(Any, msg.headers()) or []:
        if name == PRODUCT_HEADER and value is not None:
            return bytes(value).decode(errors="replace")
    return None


class ShadowRun:
    """One replay: consume the window, score with both models, keep what the report needs."""

    def __init__(self, settings: RegistrySettings, registry: Registry, options: ShadowOptions) -> None:
        self.settings, self.options = settings, options
        candidate = registry.get(options.candidate)
        active = registry.active(options.product, options.line)
        if active is None:
            raise ShadowError(f"product {options.product!r} has no active version to compare with; promote one first")
        if active.version == candidate.version:
            raise ShadowError(f"{candidate.version} is already the active version of {options.product!r}")
        self.records = {"candidate": candidate, "active": active}
        self.models = {role: AnomalyModel.load(registry.path(record.version), options.device)
                       for role, record in self.records.items()}
        self.tally = _Tally()

    def run(self) -> dict[str, Any]:
        """Replay the window; returns the report (see :func:`write_report`)."""
        config = self.settings.kafka.client_config()
        config.update({"group.id": self.options.group_id or f"{self.settings.registry.shadow_group_prefix}-"
                                                            f"{uuid.uuid4().hex[:8]}",
                       "enable.auto.commit": False, "auto.offset.reset": "earliest",
                       "fetch.max.bytes": self.options.fetch_max_bytes})
        consumer = Consumer(config)
        started = time.monotonic()
        try:
            starts, ends = _window(consumer, self.settings.topics.frames, self.options.since_ns)
            until_ns = time.time_ns()
            if starts:
                consumer.assign(starts)
                self._consume(consumer, ends)
        except KafkaException as exc:
            raise ShadowError(f"cannot replay {self.settings.topics.frames}: {exc}") from None
        finally:
            consumer.close()
        return self._report(starts, ends, until_ns, time.monotonic() - started)

    def _consume(self, consumer: Consumer, ends: dict[int, int]) -> None:
        """Read until every partition reached its end offset; score in batches."""
        remaining = dict(ends)
        pending: list[tuple[Message, FrameMeta, np.ndarray]] = []
        first = last_progress = time.monotonic()
        while remaining:
            messages = consumer.consume(num_messages=self.options.batch_size, timeout=1.0)
            for msg in messages:
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                if msg.error() or partition not in remaining or offset >= ends[partition]:
                    continue
                if offset + 1 >= remaining[partition]:
                    del remaining[partition]
                self._accept(msg, pending)
            if messages:
                last_progress = time.monotonic()
            else:
                self._drop_finished(consumer, remaining, last_progress)
            if len(pending) >= self.options.batch_size or (pending and not remaining):
                self._score(pending)
                pending = []
            self._pace(first)
        if pending:
            self._score(pending)

    def _drop_finished(self, consumer: Consumer, remaining: dict[int, int], last_progress: float) -> None:
        """Partitions whose position passed their end without a record there (gaps), or that stall too long."""
        topic = self.settings.topics.frames
        for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
            if tp.offset >= remaining[tp.partition]:
                del remaining[tp.partition]
        if remaining and time.monotonic() - last_progress > self.options.idle_timeout_s:
            self.tally.incomplete = sorted(remaining)
            log.warning("shadow: no progress for %.0f s on partitions %s; reporting what was read",
                        self.options.idle_timeout_s, sorted(remaining))
            remaining.clear()

    def _accept(self, msg: Message, pending: list[tuple[Message, FrameMeta, np.ndarray]]) -> None:
        # offsets_for_times gives the first offset at/after --since, but a later record may carry an earlier
        # timestamp (producer clocks), and some Kafka-protocol brokers answer offset 0 for any time
        if msg.timestamp()[1] < self.options.since_ns // 1_000_000:
            self.tally.before_window += 1
            return
        product = _product_of(msg)
        if product is not None and product != self.options.product:
            self.tally.skipped["other_product"] += 1
            return
        try:
            meta, image = decode_frame(msg.value(), cast(Any, msg.headers()))
        except WireFormatError as exc:
            self.tally.skipped[exc.reason] += 1
            return
        if self.options.line and meta.line_id != self.options.line:
            self.tally.skipped["other_line"] += 1
            return
        pending.append((msg, meta, image))

    def _pace(self, first: float) -> None:
        """Sleep just enough to keep under ``max_rate`` frames a second (the stated budget)."""
        if self.options.max_rate <= 0:
            return
        ahead = len(self.tally.rows) / self.options.max_rate - (time.monotonic() - first)
        if ahead > 0:
            time.sleep(ahead)

    def _score(self, batch: list[tuple[Message, FrameMeta, np.ndarray]]) -> None:
        images = [image for _msg, _meta, image in batch]
        predictions = {role: model.predict(images) for role, model in self.models.items()}
        for i, (msg, meta, image) in enumerate(batch):
            row: dict[str, Any] = {"camera_id": meta.camera_id, "line_id": meta.line_id, "sequence": meta.sequence,
                                   "capture_ns": meta.capture_ns, "partition": msg.partition(),
                                   "offset": msg.offset(), "label": meta.label}
            for role, p in predictions.items():
                row[role] = {"score": float(p.image_scores[i]), "normalised": float(p.normalised_scores[i]),
                             "alert": bool(p.anomalous[i])}
            self.tally.rows.append(row)
            self._keep_if_top(row, image, {role: p.maps[i] for role, p in predictions.items()})

    def _keep_if_top(self, row: dict[str, Any], image: np.ndarray, maps: dict[str, np.ndarray]) -> None:
        """Keep the ``top`` strongest disagreements (a verdict split first, then the normalised-score gap)."""
        split = int(row["candidate"]["alert"] != row["active"]["alert"])
        gap = abs(row["candidate"]["normalised"] - row["active"]["normalised"])
        self.tally.serial += 1
        item = _Disagreement((split, gap), self.tally.serial, row, {})
        top = self.tally.top
        if len(top) >= self.options.top and item <= top[0]:
            return
        item.images = {role: _overlay_png(model, image, maps[role]) for role, model in self.models.items()}
        (heapq.heappush if len(top) < self.options.top else heapq.heapreplace)(top, item)

    def _report(self, starts: list[TopicPartition], ends: dict[int, int], until_ns: int,
                seconds: float) -> dict[str, Any]:
        rows = self.tally.rows
        versions = {role: _describe(record) for role, record in self.records.items()}
        top = sorted(self.tally.top, reverse=True)
        return {
            "product": self.options.product, "line": self.options.line or None, "versions": versions,
            "window": {"since": iso(self.options.since_ns), "until": iso(until_ns),
                       "topic": self.settings.topics.frames,
                       "partitions": {str(tp.partition): {"start": tp.offset, "end": ends[tp.partition]}
                                      for tp in starts}},
            "complete": not self.tally.incomplete, "stalled_partitions": self.tally.incomplete,
            "frames_scored": len(rows), "frames_skipped": dict(self.tally.skipped),
            "records_before_window": self.tally.before_window,
            "seconds": round(seconds, 3), "frames_per_second": round(len(rows) / max(seconds, 1e-9), 2),
            "budget": {"max_rate": self.options.max_rate or None, "fetch_max_bytes": self.options.fetch_max_bytes,
                       "consumer_group": "separate, commits nothing"},
            "overall": _agreement(rows), "per_camera": _per_camera(rows), "distributions": _distributions(rows),
            "top_disagreements": [{**d.row, "capture_time": iso(d.row["capture_ns"]),
                                   "heatmaps": {role: f"heatmaps/{_name(d.row)}-{role}.png" for role in d.images}}
                                  for d in top],
            "_images": {f"heatmaps/{_name(d.row)}-{role}.png": png for d in top for role, png in d.images.items()},
        }


def _describe(record: Any) -> dict[str, Any]:
    return {"version": record.version, "product": record.product, "image_threshold": record.image_threshold,
            "registered_by": record.registered_by, "registered_at": record.registered_at.isoformat()}


def _name(row: dict[str, Any]) -> str:
    return f"{row['camera_id']}-{row['sequence']}"


def _overlay_png(model: AnomalyModel, image: np.ndarray, anomaly_map: np.ndarray) -> bytes:
    """The frame with this model's heatmap, as PNG bytes (red at twice the model's image threshold)."""
    from linewatch.detector.evaluation.predict import overlay

    full = model.map_to_image(anomaly_map, image.shape[:2])
    ok, buf = cv2.imencode(".png", cv2.cvtColor(overlay(image, full, model.image_threshold,
                                                        model.pixel_threshold), cv2.COLOR_RGB2BGR))
    return bytes(buf.tobytes()) if ok else b""


def _agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    both = sum(r["candidate"]["alert"] and r["active"]["alert"] for r in rows)
    only_candidate = sum(r["candidate"]["alert"] and not r["active"]["alert"] for r in rows)
    only_active = sum(r["active"]["alert"] and not r["candidate"]["alert"] for r in rows)
    n = len(rows)
    cand = np.array([r["candidate"]["normalised"] for r in rows], float)
    act = np.array([r["active"]["normalised"] for r in rows], float)
    correlation = float(np.corrcoef(cand, act)[0, 1]) if n > 2 and cand.std() > 0 and act.std() > 0 else None
    return {"frames": n, "both_alert": both, "only_candidate": only_candidate, "only_active": only_active,
            "neither": n - both - only_candidate - only_active,
            "agreement": (n - only_candidate - only_active) / n if n else None,
            "alert_rate": {"candidate": (both + only_candidate) / n if n else None,
                           "active": (both + only_active) / n if n else None},
            "normalised_score_correlation": correlation}


def _per_camera(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cameras: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        cameras.setdefault(row["camera_id"], []).append(row)
    return {camera: _agreement(found) for camera, found in sorted(cameras.items())}


def _distributions(rows: list[dict[str, Any]], bins: int = 20) -> dict[str, Any]:
    """Histogram of normalised scores (each model's threshold at 0.5) and quantiles of raw scores."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    found: dict[str, Any] = {"normalised_bin_edges": [round(float(e), 4) for e in edges]}
    for role in ("candidate", "active"):
        raw = np.array([r[role]["score"] for r in rows], float)
        norm = np.array([r[role]["normalised"] for r in rows], float)
        found[role] = {"normalised_histogram": np.histogram(norm, edges)[0].tolist(),
                       "raw_quantiles": {f"p{q}": float(np.percentile(raw, q)) for q in (1, 50, 90, 99)}
                       if raw.size else {}, "raw_max": float(raw.max()) if raw.size else None}
    return found


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``report.json``, ``report.html`` and the heatmap PNGs the report names; returns both paths."""
    from linewatch.detector.registry.shadow_html import render_html

    out_dir.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = report.pop("_images", {})
    for name, png in images.items():
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_bytes(png)
    json_path, html_path = out_dir / "report.json", out_dir / "report.html"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    html_path.write_text(render_html(report, {name: base64.b64encode(png).decode() for name, png in images.items()}))
    return json_path, html_path
