"""The alerts consumer loop: results topic -> rules -> Redis state + outbox -> deliveries -> commit.

At-least-once: a batch of records is applied to the rules in memory, then the new states, the
history and the outbox are written in one Redis transaction. Every loop iteration then makes one
non-blocking delivery pass over the outbox (:mod:`alerts.outbox`: a failing channel backs off on
its own while polling and the other channels go on), and a batch's offsets are committed only once
every outbox entry that existed when it was persisted is delivered or dead-lettered.

Hostile or broken records (:mod:`alerts.intake`, :func:`alerts.rules.admit`) are dead-lettered or
refused and counted, never retried forever; dead-letter records are bounded in size; a poison outbox
entry is moved aside (:mod:`alerts.outbox`). Writes are fenced by partition epoch (:mod:`alerts.state`).
Every ``housekeeping_s`` the open alerts of the owned partitions are read from Redis: silent cameras'
alerts become ``silent``, and the rest are re-sent to Alertmanager every ``alertmanager_resend_s`` and
at once after an assignment (a restart or rebalance), so Alertmanager never times out a live alert.

Suspect alerts: once per batch, the camera-health checks failing for the batch's cameras are read from
the heatmap Redis (``linewatch.health.state``, one round trip) and passed to the rule, which marks the
alerts of unhealthy cameras suspect. Health that cannot be read leaves alerts unmarked (logged): a
monitoring aid must not stop defect alerts.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from linewatch.alerts.channels import build_channels
from linewatch.alerts.deliveries import Channel
from linewatch.alerts.deliveries.alertmanager import AlertmanagerChannel
from linewatch.alerts.history import AlertHistory
from linewatch.alerts.intake import RejectedRecordError, bounded_dead_letter, decode_result
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.outbox import DeadLetterError, OutboxBarrier, OutboxDrainer, RetryPolicy
from linewatch.alerts.rules import Alert, AlertEvent, CameraState, admit, go_silent, step
from linewatch.alerts.settings import AlertsSettings
from linewatch.alerts.state import FencedError, OutboxEntry, StateStore
from linewatch.common.kafka import TopicPartitionKey
from linewatch.common.kafka.consumer import Assignment, commit_positions, records
from linewatch.common.kafka.producer import DeliveryFailedError, DeliveryProducer
from linewatch.detector.events import FrameResult, dead_letter_headers
from linewatch.health.state import failing_checks

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
        self.redis = settings.state_store_redis().client()
        self.health_redis = settings.redis.client()  # where `linewatch camera-health` keeps its state
        self.history = history_for(settings, self.redis)
        self.store = StateStore(self.redis, settings.redis.key_prefix, self.history,
                                state_ttl_s=settings.state_ttl_s)
        kafka = settings.kafka.client_config()
        self.producer = DeliveryProducer(Producer({**kafka, "acks": "all", "enable.idempotence": True}))
        self.consumer = Consumer({**kafka, "group.id": settings.group_id, "enable.auto.commit": False,
                                  "auto.offset.reset": "earliest", "session.timeout.ms": settings.session_timeout_ms})
        self.channels: dict[str, Channel] = {c.name: c for c in build_channels(settings, self.producer)}
        self.states: dict[str, CameraState] = {}
        self.assigned: set[int] = set()
        self.epochs: dict[int, int] = {}  # partition -> our owner epoch (see alerts.state)
        self.last_resend = time.monotonic()
        self.resend_due = False  # set by an assignment: re-send the stored open alerts at once
        self.last_housekeeping = 0.0
        self.policy = RetryPolicy(settings.retry)
        self.gate = OutboxBarrier(self.topic)
        self.assignment = Assignment(self.consumer, self.gate.gate, on_assign=self._on_assign,
                                     on_revoke=self._on_revoke)
        self.drainer = OutboxDrainer(self.store, self.topic, self.channels, self.policy, self.metrics,
                                     self._dead_letter_entry)

    def run(self) -> None:
        """Consume until stopped; closes the consumer (leaving the group at once) at the end."""
        ensure_topics(self.settings, [self.topic, self.settings.topics.alert_dead_letters]
                      + ([self.settings.topics.alerts] if self.settings.publish_alerts_topic else []))
        self.assignment.subscribe([self.topic])
        try:
            while not self.stop_event.is_set():
                messages = records(self.consumer.consume(self.settings.batch_size, timeout=0.5))
                try:
                    self._acquire_missing()
                    self.process(messages)
                    self.housekeeping()
                except FencedError as exc:
                    self._fenced(exc, messages)
                except (redis.RedisError, RuntimeError, KafkaException) as exc:
                    log.error("batch failed, will retry it: %s", str(exc)[:500])
                    self._rewind(messages)
                    self.stop_event.wait(1.0)
        finally:
            self.consumer.close()
            self.producer.flush(10)

    def _fenced(self, exc: FencedError, messages: list[Message]) -> None:
        """Another instance owns some of our partitions now: stop writing for them, keep the rest going."""
        self.metrics.fenced.inc()
        owned = self.store.owns(self.topic, self.epochs)
        lost = set(self.epochs) - owned
        log.warning("fenced out of partitions %s: %s", sorted(lost), exc)
        for partition in lost:
            self.epochs.pop(partition, None)
        # Not re-acquired until Kafka assigns them to us again: their records are skipped meanwhile.
        self.assigned.difference_update(lost)
        self.gate.forget(lost)
        self.assignment.drop((self.topic, p) for p in lost)
        self._rewind(messages)

    def _rewind(self, messages: list[Message]) -> None:
        """Seek back to the batch's first records so that it is consumed again."""
        self.states.clear()  # reload from Redis: the transaction either happened or did not
        first: dict[int, int] = {}
        for msg in messages:
            first.setdefault(msg.partition() or 0, msg.offset() or 0)
        for partition, offset in first.items():
            try:
                self.consumer.seek(TopicPartition(self.topic, partition, offset))
            except KafkaException as exc:  # partition revoked meanwhile: its new owner starts from the commit
                log.warning("cannot rewind partition %d: %s", partition, exc)

    def _on_assign(self, partitions: list[TopicPartitionKey]) -> None:
        new = sorted(p for _, p in partitions)
        self.assigned.update(new)
        self.states.clear()
        try:
            self.epochs.update(self.store.acquire(self.topic, new))
        except redis.RedisError as exc:  # retried by the loop; until then nothing is written for them
            log.warning("cannot take the owner epoch of partitions %s yet: %s", new, exc)
        self.resend_due = True
        log.info("assigned partitions %s of %s (epochs %s)", sorted(self.assigned), self.topic, self.epochs)

    def _acquire_missing(self) -> None:
        """Owner epochs of assigned partitions that the assignment callback could not get."""
        missing = sorted(p for p in self.assigned if p not in self.epochs)
        if missing:
            self.epochs.update(self.store.acquire(self.topic, missing))

    def _on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        revoked = {p for _, p in partitions}
        self.assigned.difference_update(revoked)
        for partition in revoked:
            self.epochs.pop(partition, None)
        self.gate.forget(revoked)
        self.states.clear()  # another instance may own these cameras now; Redis has the truth

    def process(self, messages: list[Message]) -> None:
        """Apply one batch and persist it, make one delivery pass, commit what the outbox allows."""
        changed: dict[str, CameraState] = {}
        events: list[AlertEvent] = []
        partitions: dict[str, int] = {}
        offsets: dict[int, int] = {}
        now_ns = time.time_ns()
        unhealthy = self._unhealthy(messages)
        for msg in messages:
            partition = msg.partition() or 0
            if partition not in self.epochs:
                continue  # fenced out, or no epoch yet: not ours to write (nor to commit)
            offsets[partition] = (msg.offset() or 0) + 1
            result = self._decode(msg)
            if result is None:
                continue
            state = changed.get(result.camera_id) or self._state(result.camera_id)
            new, transitions = self._apply(state, result, now_ns, unhealthy.get(result.camera_id, []))
            if new is state:
                continue  # redelivered frame
            new.partition = partition
            changed[result.camera_id] = new
            partitions[result.camera_id] = partition
            events.extend(transitions)
        if changed:
            self._persist(list(changed.values()), events, partitions)
        for partition, offset in offsets.items():
            self.gate.hold(partition, offset)
        self.drain()

    def _unhealthy(self, messages: list[Message]) -> dict[str, list[str]]:
        """Camera id -> its failing camera-health checks, for the cameras of this batch (record key = camera)."""
        cameras = sorted({key.decode(errors="replace") for msg in messages if isinstance(key := msg.key(), bytes)})
        if not cameras:
            return {}
        try:
            return failing_checks(self.health_redis, self.settings.redis.key_prefix, cameras)
        except redis.RedisError as exc:
            log.warning("camera health unreadable, alerts of this batch not marked suspect: %s", exc)
            return {}

    def _apply(self, state: CameraState, result: FrameResult, now_ns: int,
               unhealthy: list[str]) -> tuple[CameraState, list[AlertEvent]]:
        """The rule step, counting the frames the guard refuses or holds."""
        rule = self.settings.rules.for_camera(result.line_id, result.camera_id)
        admission = admit(state, result, self.settings.guard, now_ns, rule)  # the same rule as step's: same verdict
        if admission == "future":
            self.metrics.rejected.labels(admission).inc()
            log.warning("camera %s: frame %d refused (capture time ahead of this host's clock)", result.camera_id,
                        result.sequence)
        elif admission == "sequence_jump":
            self.metrics.rejected.labels(admission).inc()
            log.warning("camera %s: frame %d held off the track (highest sequence %d): it counts once %d frames "
                        "near it agree", result.camera_id, result.sequence, state.last_sequence,
                        self.settings.guard.reanchor_after)
        return step(state, result, rule, self.settings.guard, now_ns, unhealthy)

    def _persist(self, states: list[CameraState], events: list[AlertEvent], partitions: dict[str, int]) -> None:
        entries = [OutboxEntry(channel=c.name, event=e) for e in events for c in self.channels.values()
                   if e.kind in c.kinds]
        self.store.commit(states, events, entries, topic=self.topic, partitions=partitions, epochs=self.epochs)
        self.states.update({s.camera_id: s for s in states})
        for event in events:
            self._count(event)

    def _decode(self, msg: Message) -> FrameResult | None:
        try:
            return decode_result(msg.value(), msg.key(), self.settings.guard)
        except RejectedRecordError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            log.warning("bad record at %s[%d]@%d goes to %s: %s", msg.topic(), msg.partition(), msg.offset(),
                        self.settings.topics.alert_dead_letters, str(exc)[:300])
            headers = dead_letter_headers(topic=msg.topic() or "", partition=msg.partition() or 0,
                                          offset=msg.offset() or 0, error_class=exc.reason,
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
        elif event.kind == "suspect":
            log.warning("alert %s is suspect: camera %s unhealthy (%s)", alert.alert_id, alert.camera_id,
                        ", ".join(alert.suspect_checks))
            return
        elif event.kind == "silent":
            self.metrics.silent.labels(alert.line_id, alert.camera_id).inc()
            self.metrics.firing.labels(alert.line_id, alert.camera_id).set(0)
        else:
            self.metrics.resolved.labels(alert.line_id, alert.camera_id).inc()
            self.metrics.firing.labels(alert.line_id, alert.camera_id).set(0)
        log.info("alert %s %s (%s, peak %.2f)", alert.alert_id, event.kind, alert.severity, alert.peak_score)

    def drain(self) -> None:
        """One delivery pass over the owned partitions' outboxes, then commit what became committable."""
        owned = sorted(self.store.owns(self.topic, self.epochs))
        committable = self.drainer.drain(owned, self.gate, self.stop_event)
        if committable:
            self._commit(committable)

    def _dead_letter_entry(self, entry: OutboxEntry, raw: bytes, error: str) -> None:
        headers = [("dl-channel", entry.channel.encode()), ("dl-event-id", entry.entry_id.encode()),
                   ("dl-error-class", b"DeliveryError"), ("dl-error", error.encode(errors="replace")[:2000])]
        self._dead_letter(entry.event.alert.camera_id.encode(), raw, headers)

    def _dead_letter(self, key: bytes | str | None, value: bytes, headers: list[tuple[str, Any]]) -> None:
        """Write a bounded record to the alert dead-letter topic and wait; :class:`DeadLetterError` when the
        broker does not take it."""
        topic = self.settings.topics.alert_dead_letters
        key, value, bounded = bounded_dead_letter(key, value, headers)
        try:
            self.producer.send_and_wait(topic, key, value, bounded, timeout_s=30)
        except DeliveryFailedError as exc:
            raise DeadLetterError(f"dead-letter topic: {exc}") from exc

    def _commit(self, offsets: dict[int, int]) -> None:
        commit_positions(self.consumer, {(self.topic, p): o for p, o in offsets.items()})

    def housekeeping(self) -> None:
        """Every ``housekeeping_s`` (and at once after an assignment): silence, re-send, keep open alerts alive."""
        now = time.monotonic()
        if not self.resend_due and now - self.last_housekeeping < self.settings.housekeeping_s:
            return
        self.last_housekeeping = now
        open_alerts = self._owned_open_alerts()
        still_open = self._silence(open_alerts)
        self.history.refresh_open([a.alert_id for a in still_open])
        if self.resend_due or now - self.last_resend >= self.settings.alertmanager_resend_s:
            self.resend_due, self.last_resend = False, now
            self._resend(still_open)

    def _owned_open_alerts(self) -> list[tuple[Alert, CameraState]]:
        """Open alerts (as stored in Redis) of cameras whose partition this instance owns, with their state."""
        alerts = self.history.open_alerts()
        states = self.store.load_many(sorted({a.camera_id for a in alerts}))
        owned = set(self.epochs)
        return [(a, states[a.camera_id]) for a in alerts if a.camera_id in states
                and states[a.camera_id].partition in owned and states[a.camera_id].alert is not None
                and states[a.camera_id].alert.alert_id == a.alert_id]  # type: ignore[union-attr]

    def _silence(self, open_alerts: list[tuple[Alert, CameraState]]) -> list[Alert]:
        """Close the alerts of cameras silent for ``silent_after_s`` as ``silent``; returns those still open."""
        now_ns, still_open = time.time_ns(), []
        changed: list[CameraState] = []
        events: list[AlertEvent] = []
        for alert, state in open_alerts:
            new, transitions = go_silent(state, now_ns, self.settings.silent_after_s)
            if transitions:
                changed.append(new)
                events.extend(transitions)
            else:
                still_open.append(alert)
        if changed:
            self._persist(changed, events, {s.camera_id: s.partition for s in changed})
        return still_open

    def _resend(self, open_alerts: list[Alert]) -> None:
        """Re-send open alerts to Alertmanager so that it does not time them out."""
        channel = self.channels.get("alertmanager")
        if not isinstance(channel, AlertmanagerChannel) or not open_alerts:
            return
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
                        retention_s=settings.alert_retention_s, recent=settings.recent_alerts,
                        open_ttl_s=settings.state_ttl_s)


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
