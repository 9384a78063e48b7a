"""The alerts consumer loop: results topic -> rules -> Redis state + outbox -> deliveries -> commit.

At-least-once: a batch of records is applied to the rules in memory, then the new states, the
history and the outbox are written in one Redis transaction. Every loop iteration then makes one
non-blocking delivery pass over the outbox (:mod:`alerts.outbox`: a failing channel backs off on
its own while polling and the other channels go on), and a batch's offsets are committed only once
every outbox entry that existed when it was persisted is delivered or dead-lettered.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from linewatch.alerts.channels import build_channels
from linewatch.alerts.deliveries import Channel
from linewatch.alerts.deliveries.alertmanager import AlertmanagerChannel
from linewatch.alerts.history import AlertHistory
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.outbox import CommitGate, OutboxDrainer, RetryPolicy
from linewatch.alerts.rules import AlertEvent, CameraState, step
from linewatch.alerts.settings import AlertsSettings
from linewatch.alerts.state import OutboxEntry, StateStore
from linewatch.detector.events import EVENT_SCHEMA_VERSION, FrameResult, dead_letter_headers

log = logging.getLogger(__name__)


def ensure_topics(settings: AlertsSettings, names: list[str], timeout_s: float = 15.0) -> None:
    """Create the topics among ``names`` that do not exist yet (ingest's topic helper, our settings)."""
    from linewatch.common.topics import ensure_topics as create_missing

    create_missing(settings.kafka, names, settings.topics.partitions, settings.topics.replication_factor, timeout_s)


class AlertsService:
    """One alerts consumer; ``run`` blocks until ``stop_event`` is set."""

    def __init__(self, settings: AlertsSettings, metrics: AlertsMetrics | None = None,
                 stop_event: threading.Event | None = None) -> None:
        self.settings, self.metrics = settings, metrics or AlertsMetrics()
        self.stop_event = stop_event or threading.Event()
        self.topic = settings.topics.results
        self.redis = settings.redis.client()
        self.history = history_for(settings, self.redis)
        self.store = StateStore(self.redis, settings.redis.key_prefix, self.history)
        kafka = settings.kafka.client_config()
        self.producer = Producer({**kafka, "acks": "all", "enable.idempotence": True})
        self.consumer = Consumer({**kafka, "group.id": settings.group_id, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "session.timeout.ms": settings.session_timeout_ms})
        self.channels: dict[str, Channel] = {c.name: c for c in build_channels(settings, self.producer)}
        self.states: dict[str, CameraState] = {}
        self.assigned: set[int] = set()
        self.last_resend = time.monotonic()
        self.policy = RetryPolicy(settings.retry)
        self.gate = CommitGate()
        self.drainer = OutboxDrainer(self.store, self.topic, self.channels, self.policy, self.metrics,
                                     self._dead_letter_entry)

    def run(self) -> None:
        """Consume until stopped; closes the consumer (leaving the group at once) at the end."""
        ensure_topics(self.settings, [self.topic, self.settings.topics.alert_dead_letters]
                      + ([self.settings.topics.alerts] if self.settings.publish_alerts_topic else []))
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stop_event.is_set():
                messages = self.consumer.consume(self.settings.batch_size, timeout=0.5)
                try:
                    self.process(messages)
                except (redis.RedisError, RuntimeError) as exc:
                    log.error("batch failed, will retry it: %s", exc)
                    self._rewind(messages)
                    self.stop_event.wait(1.0)
                self._resend_open_alerts()
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _rewind(self, messages: list[Message]) -> None:
        """Seek back to the batch's first records so that it is consumed again."""
        self.states.clear()  # reload from Redis: the transaction either happened or did not
        first: dict[int, int] = {}
        for msg in messages:
            if not msg.error():
                first.setdefault(msg.partition() or 0, msg.offset() or 0)
        for partition, offset in first.items():
            try:
                self.consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as exc:  # partition revoked meanwhile: its new owner starts from the commit
                log.warning("cannot rewind partition %d: %s", partition, exc)

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.assigned.update(p.partition for p in partitions)
        log.info("assigned partitions %s of %s", sorted(self.assigned), self.topic)

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        revoked = {p.partition for p in partitions}
        self.assigned.difference_update(revoked)
        self.gate.forget(revoked)
        self.states.clear()  # another instance may own these cameras now; Redis has the truth

    def process(self, messages: list[Message]) -> None:
        """Apply one batch and persist it, make one delivery pass, commit what the outbox allows."""
        changed: dict[str, CameraState] = {}
        events: list[AlertEvent] = []
        partitions: dict[str, int] = {}
        offsets: dict[int, int] = {}
        for msg in messages:
            error = msg.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                continue
            partition = msg.partition() or 0
            offsets[partition] = (msg.offset() or 0) + 1
            result = self._decode(msg)
            if result is None:
                continue
            state = changed.get(result.camera_id) or self._state(result.camera_id)
            rule = self.settings.rules.for_camera(result.line_id, result.camera_id)
            new, transitions = step(state, result, rule)
            if new is state:
                continue  # redelivered frame
            changed[result.camera_id] = new
            partitions[result.camera_id] = partition
            events.extend(transitions)
        if changed:
            entries = [OutboxEntry(channel=c.name, event=e) for e in events for c in self.channels.values()
                       if e.kind in c.kinds]
            self.store.commit(list(changed.values()), events, entries, topic=self.topic, partitions=partitions)
            self.states.update(changed)
            for event in events:
                self._count(event)
        for partition, offset in offsets.items():
            self.gate.hold(partition, offset)
        self.drain()

    def _decode(self, msg: Message) -> FrameResult | None:
        try:
            result = FrameResult.model_validate_json(msg.value() or b"")
            if result.schema_version != EVENT_SCHEMA_VERSION:
                raise ValueError(f"unknown schema_version {result.schema_version}")
            return result
        except (ValidationError, ValueError) as exc:
            log.warning("bad record at %s[%d]@%d goes to %s: %s", msg.topic(), msg.partition(), msg.offset(),
                        self.settings.topics.alert_dead_letters, str(exc).splitlines()[0])
            headers = dead_letter_headers(topic=msg.topic() or "", partition=msg.partition() or 0,
                                          offset=msg.offset() or 0, error_class=type(exc).__name__,
                                          message=str(exc), original=_header_list(msg))
            self._dead_letter(msg.key(), msg.value() or b"", headers)
            return None

    def _state(self, camera_id: str) -> CameraState:
        if camera_id not in self.states:
            state = self.store.load(camera_id)
            self.states[camera_id] = state
            if state.alert is not None:
                self.metrics.firing.labels(state.line_id, camera_id).set(1)
        return self.states[camera_id]

    def _count(self, event: AlertEvent) -> None:
        alert = event.alert
        if event.kind == "firing":
            self.metrics.fired.labels(alert.line_id, alert.camera_id, alert.severity).inc()
            self.metrics.firing.labels(alert.line_id, alert.camera_id).set(1)
        else:
            self.metrics.resolved.labels(alert.line_id, alert.camera_id).inc()
            self.metrics.firing.labels(alert.line_id, alert.camera_id).set(0)
        log.info("alert %s %s (%s, peak %.2f)", alert.alert_id, event.kind, alert.severity, alert.peak_score)

    def drain(self) -> None:
        """One delivery pass over the assigned partitions' outboxes, then commit what became committable."""
        committable = self.drainer.drain(sorted(self.assigned), self.gate, self.stop_event)
        if committable:
            self._commit(committable)

    def _dead_letter_entry(self, entry: OutboxEntry, raw: bytes, error: str) -> None:
        headers = [("dl-channel", entry.channel.encode()), ("dl-event-id", entry.entry_id.encode()),
                   ("dl-error-class", b"DeliveryError"), ("dl-error", error.encode()[:2000])]
        self._dead_letter(entry.event.alert.camera_id.encode(), raw, headers)

    def _dead_letter(self, key: bytes | str | None, value: bytes, headers: list[tuple[str, Any]]) -> None:
        """Write to the alert dead-letter topic and wait; raises when the broker does not take it."""
        self.producer.produce(self.settings.topics.alert_dead_letters, key=key, value=value, headers=headers)
        if self.producer.flush(30) > 0:
            raise RuntimeError(f"dead-letter topic {self.settings.topics.alert_dead_letters} did not acknowledge")

    def _commit(self, offsets: dict[int, int]) -> None:
        try:
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                                 asynchronous=False)
        except KafkaException as exc:  # e.g. a rebalance: the records come back and are recognised
            log.warning("offset commit failed: %s", exc)

    def _resend_open_alerts(self) -> None:
        """Re-send open alerts to Alertmanager so that it does not time them out."""
        channel = self.channels.get("alertmanager")
        if not isinstance(channel, AlertmanagerChannel):
            return
        if time.monotonic() - self.last_resend < self.settings.alertmanager_resend_s:
            return
        self.last_resend = time.monotonic()
        open_alerts = [s.alert for s in self.states.values() if s.alert is not None]
        try:
            channel.resend(open_alerts)
        except Exception as exc:  # best effort: the next period tries again
            log.warning("re-sending %d open alerts to Alertmanager failed: %s", len(open_alerts), exc)


def _header_list(msg: Message) -> list[tuple[str, bytes | None]]:
    headers = msg.headers() or []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(name, value.encode() if isinstance(value, str) else value) for name, value in items]


def history_for(settings: AlertsSettings, client: Any) -> AlertHistory:
    """The alert history store these settings describe."""
    return AlertHistory(client, settings.redis.key_prefix, maxlen=settings.history_maxlen,
                        retention_s=settings.alert_retention_s, recent=settings.recent_alerts)


def run_alerts(settings: AlertsSettings, stop_event: threading.Event | None = None,
               metrics: AlertsMetrics | None = None) -> None:
    """Run the consumer and (when ``settings.http.enabled``) the operator API until ``stop_event`` is set."""
    stop_event = stop_event or threading.Event()
    metrics = metrics or AlertsMetrics()
    server = None
    if settings.http.enabled:
        from linewatch.alerts.api import start_server

        server = start_server(settings, metrics)
    try:
        AlertsService(settings, metrics, stop_event).run()
    finally:
        if server is not None:
            server.stop()
