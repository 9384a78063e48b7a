"""``linewatch camera-health``: one consumer of the frames and results topics, per-camera health checks.

Pixel statistics come from the frames topic (its own consumer group, a downscaled greyscale decode),
not from the detector: the detector's hot path stays as it is, a frozen or silent camera is still
seen when the detector is down or lagging, and the health checks scale and fail on their own. The
price is a second decode of every frame, at 1/2 to 1/8 scale (see the README for the cost). Score
drift comes from the results topic. Health is monitoring, not a record: offsets are committed
automatically and a restart starts from the latest frames. A camera's pixel baseline is pinned, or
the one it learned before the restart (kept in Redis), or learned from its first frames (baselines.py).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from confluent_kafka import Consumer, Message, Producer
from pydantic import ValidationError

from linewatch.common.kafka import records
from linewatch.common.topics import ensure_topics
from linewatch.detector.events import EVENT_SCHEMA_VERSION, FrameResult
from linewatch.detector.model.checkpoint import file_sha256, read_metadata
from linewatch.health.alertmanager import HealthAlertmanager
from linewatch.health.baselines import (
    LEARNED,
    LEARNING,
    PINNED,
    refresh_baselines,
    save_baseline,
    starting_baseline,
)
from linewatch.health.checks import CHECKS, CameraMonitor, HealthEvent
from linewatch.health.metrics import HealthMetrics
from linewatch.health.settings import Baseline, HealthSettings, ScoreReference
from linewatch.health.state import record, refresh
from linewatch.health.stats import decode_grey, frame_stats
from linewatch.ingest.wire import WireFormatError, decode_headers

log = logging.getLogger(__name__)


def references_from_checkpoints(paths: list[str]) -> dict[str, ScoreReference]:
    """Model version -> calibration score distribution, read from each checkpoint's header (no torch needed)."""
    references = {}
    for path in paths:
        metadata = read_metadata(path)
        calibration = metadata["calibration"]
        references[file_sha256(Path(path))[:12]] = ScoreReference(p50=calibration["score_stats"]["p50"],
                                                                  log_scale=calibration["log_scale"])
    return references


class HealthService:
    """Consumes frames and results until ``stop_event`` is set; publishes health events when checks change."""

    def __init__(self, settings: HealthSettings, metrics: HealthMetrics | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self.settings, self.metrics = settings, metrics or HealthMetrics()
        self.stop_event = stop_event or threading.Event()
        self.references = {**references_from_checkpoints(settings.reference_checkpoints),
                           **settings.score_references}
        kafka = settings.kafka.client_config()
        self.consumer = Consumer({**kafka, "group.id": settings.group_id, "enable.auto.commit": True,
                                  "auto.offset.reset": settings.start_from,
                                  "session.timeout.ms": settings.session_timeout_ms,
                                  "heartbeat.interval.ms": max(250, settings.session_timeout_ms // 4)})
        self.producer = Producer({**kafka, "acks": "all"})
        self.alertmanager = (HealthAlertmanager(settings.alertmanager_url, settings.alertname)
                             if settings.alertmanager_url else None)
        self.redis = settings.redis.client() if settings.redis_state else None
        self.monitors: dict[str, CameraMonitor] = {}
        self.baseline_sources: dict[str, str] = {}  # camera -> pinned / stored / learning / learned
        self.last_resend = time.monotonic()
        self.last_refresh = -float("inf")  # the first tick refreshes: the heartbeat shows the service at once

    def run(self) -> None:
        """Consume until stopped."""
        topics = [self.settings.topics.frames, self.settings.topics.results]
        ensure_topics(self.settings.kafka, [*topics, self.settings.health_topic], self.settings.topics.partitions,
                      self.settings.topics.replication_factor)
        self.consumer.subscribe(topics)
        try:
            while not self.stop_event.is_set():
                for msg in records(self.consumer.consume(200, timeout=0.2)):
                    self.handle(msg)
                self.tick()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            if self.alertmanager is not None:
                self.alertmanager.close()

    def handle(self, msg: Message) -> None:
        """Route one record to the frame or the score checks."""
        if msg.topic() == self.settings.topics.frames:
            self._frame(msg)
        else:
            self._result(msg)

    def _monitor(self, camera_id: str, line_id: str) -> CameraMonitor:
        if camera_id not in self.monitors:
            config = self.settings.checks.for_camera(camera_id)
            start = starting_baseline(camera_id, self.settings.baselines.get(camera_id), self.redis,
                                      self.settings.redis.key_prefix, self.settings.baseline_ttl_s,
                                      config.baseline_frames)
            log.info("camera %s baseline: %s", camera_id, start.detail)
            self.baseline_sources[camera_id] = start.source
            self.monitors[camera_id] = CameraMonitor(camera_id, line_id, config, baseline=start.baseline)
            for check in CHECKS:  # 0 from the start: a healthy camera is a series at 0 on the dashboard, not a gap
                self.metrics.unhealthy.labels(line_id, camera_id, check).set(0)
        return self.monitors[camera_id]

    def _frame(self, msg: Message) -> None:
        started = time.perf_counter()
        try:
            meta = decode_headers(_header_list(msg))
            stats = frame_stats(decode_grey(msg.value() or b"", meta, self.settings.decode_min_side))
        except WireFormatError as exc:  # the detector dead-letters it; health only skips it
            self.metrics.unreadable.labels("frames").inc()
            log.debug("unreadable frame skipped: %s", exc)
            return
        self.metrics.decode_seconds.observe(time.perf_counter() - started)
        monitor = self._monitor(meta.camera_id, meta.line_id)
        learning = monitor.baseline is None
        events = monitor.observe_frame(stats, time.monotonic(), time.time_ns())
        if learning and monitor.baseline is not None:
            self._learned(monitor.camera_id, monitor.baseline)
        self._gauge_frame(monitor, stats.mean, stats.saturated_fraction, stats.dark_fraction, stats.focus)
        self.emit(events)

    def _learned(self, camera_id: str, baseline: Baseline) -> None:
        """Keep a freshly learned baseline in Redis, so a restart reuses it instead of learning the camera anew."""
        self.baseline_sources[camera_id] = LEARNED
        where = "not kept: no Redis state"
        if self.redis is not None:
            self._redis(save_baseline, camera_id, baseline, self.settings.baseline_ttl_s)
            where = "kept in Redis for restarts"
        log.info("camera %s baseline learned: mean %.1f, focus %.1f (%s)", camera_id, baseline.mean, baseline.focus,
                 where)

    def _gauge_frame(self, monitor: CameraMonitor, mean: float, saturated: float, dark: float, focus: float) -> None:
        labels = (monitor.line_id, monitor.camera_id)
        self.metrics.frames.labels(*labels).inc()
        self.metrics.brightness.labels(*labels).set(mean)
        self.metrics.saturated.labels(*labels).set(saturated)
        self.metrics.dark.labels(*labels).set(dark)
        self.metrics.identical.labels(*labels).set(monitor.identical_run)
        self.metrics.silence.labels(*labels).set(0)
        if monitor.baseline is not None:
            self.metrics.focus_ratio.labels(*labels).set(focus / monitor.baseline.focus)

    def _result(self, msg: Message) -> None:
        try:
            result = FrameResult.model_validate_json(msg.value() or b"")
        except ValidationError:
            self.metrics.unreadable.labels("results").inc()
            return
        if result.schema_version != EVENT_SCHEMA_VERSION:
            self.metrics.unreadable.labels("results").inc()
            return
        monitor = self._monitor(result.camera_id, result.line_id)
        events = monitor.observe_score(result.image_score, result.model_version,
                                       self.references.get(result.model_version), time.time_ns())
        self.metrics.scores.labels(monitor.line_id, monitor.camera_id).inc()
        if monitor.last_drift is not None:
            self.metrics.drift.labels(monitor.line_id, monitor.camera_id).set(monitor.last_drift)
        self.emit(events)

    def tick(self) -> None:
        """Silence checks, silence gauges and Alertmanager re-sends."""
        now_s, now_ns = time.monotonic(), time.time_ns()
        for monitor in self.monitors.values():
            if monitor.last_frame_s is not None:
                self.metrics.silence.labels(monitor.line_id, monitor.camera_id).set(now_s - monitor.last_frame_s)
            self.emit(monitor.tick(now_s, now_ns))
        if self.redis is not None and now_s - self.last_refresh > self.settings.redis_ttl_s / 4:
            self.last_refresh = now_s
            self._redis(refresh, [m.camera_id for m in self.monitors.values() if m.unhealthy()],
                        self.settings.redis_ttl_s)
            self._refresh_baselines(now_s)
        if self.alertmanager is not None and now_s - self.last_resend > 60:
            self.last_resend = now_s
            try:
                self.alertmanager.resend()
            except httpx.HTTPError as exc:
                log.warning("re-sending camera-health alerts failed: %s", exc)

    def _refresh_baselines(self, now_s: float) -> None:
        """Extend the stored baselines of cameras that sent a frame lately (a camera gone for good expires)."""
        recent = self.settings.redis_ttl_s  # the refresh runs every redis_ttl_s / 4: no active camera is missed
        active = [m.camera_id for m in self.monitors.values()
                  if self.baseline_sources.get(m.camera_id) not in (PINNED, LEARNING)
                  and m.last_frame_s is not None and now_s - m.last_frame_s < recent]
        if active:
            self._redis(refresh_baselines, active, self.settings.baseline_ttl_s)

    def emit(self, events: list[HealthEvent]) -> None:
        """Publish health transitions: topic, metrics, Alertmanager (best effort), log."""
        for event in events:
            labels = (event.line_id, event.camera_id, event.check)
            firing = event.status == "firing"
            self.metrics.unhealthy.labels(*labels).set(1 if firing else 0)
            if firing:
                self.metrics.alerts.labels(*labels).inc()
            self.producer.produce(self.settings.health_topic, key=event.camera_id.encode(),
                                  value=event.model_dump_json().encode())
            (log.warning if firing else log.info)("camera health %s %s on %s: %s", event.check, event.status,
                                                  event.camera_id, event.detail)
            if self.redis is not None:
                self._redis(record, event, self.settings.redis_ttl_s)
            if self.alertmanager is not None:
                try:
                    self.alertmanager.send(event)
                except httpx.HTTPError as exc:  # the topic and the metric still carry it
                    log.warning("camera-health alert to Alertmanager failed: %s", exc)
        if events:
            self.producer.poll(0)


    def _redis(self, action: Any, *args: Any) -> None:
        """Run one Redis write; Redis down must not stop the checks (the topic and metrics carry the state)."""
        try:
            action(self.redis, self.settings.redis.key_prefix, *args)
        except redis.RedisError as exc:
            log.warning("camera-health state to Redis failed: %s", exc)


def _header_list(msg: Message) -> list[tuple[str, bytes | None]]:
    headers = msg.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in items]


def run_health(settings: HealthSettings, stop_event: threading.Event | None = None,
               metrics: HealthMetrics | None = None) -> None:
    """Serve metrics (when configured) and run the checks until ``stop_event`` is set."""
    metrics = metrics or HealthMetrics()
    if settings.metrics_port is not None:
        from linewatch.ingest.metrics import serve_metrics

        serve_metrics(settings.metrics_port, metrics.registry, settings.metrics_host)
    HealthService(settings, metrics, stop_event).run()
