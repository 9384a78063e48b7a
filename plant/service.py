"""The verdicts consumer: results topic -> one verdict per frame -> MQTT and OPC UA -> commit.

One consumer thread handles a batch in partition order, and results are keyed by camera, so each
camera's verdicts are sent in sequence order. Offsets are committed once every sink has taken the
batch; when a sink fails, the whole batch is sent again (at least once; verdicts are decided again
at that moment, so a retried part that missed its deadline gets the late policy).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

from confluent_kafka import Consumer, Message, TopicPartition

from linewatch.common.kafka import commit_positions, records
from linewatch.common.topics import ensure_topics
from linewatch.errors import InvalidValueError
from linewatch.plant.aio import LoopThread
from linewatch.plant.metrics import VerdictsMetrics
from linewatch.plant.mqtt import MqttSink, SinkError
from linewatch.plant.opcua import PlcWriter, VerdictServer
from linewatch.plant.settings import VerdictsSettings
from linewatch.plant.verdict import OrderGuard, ResultError, Verdict, decide, parse_result

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where verdicts go: ``send`` may queue, ``flush`` waits until everything sent is taken."""

    name: str

    def send(self, verdict: Verdict) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def build_sinks(settings: VerdictsSettings, loop: LoopThread) -> list[Sink]:
    """The sinks the settings enable, in delivery order (the PLC first: it drives the gate)."""
    sinks: list[Sink] = []
    if settings.opcua.plc_endpoint:
        sinks.append(PlcWriter(settings.opcua, loop))
    if settings.mqtt.enabled:
        sinks.append(MqttSink(settings.mqtt))
    if settings.opcua.serve:
        sinks.append(VerdictServer(settings.opcua, loop))
    if not sinks:
        raise InvalidValueError("no verdict sink enabled: set LINEWATCH_MQTT__ENABLED, LINEWATCH_OPCUA__PLC_ENDPOINT "
                         "or LINEWATCH_OPCUA__SERVE")
    return sinks


class VerdictsService:
    """One verdicts consumer; ``run`` blocks until ``stop_event`` is set."""

    def __init__(self, settings: VerdictsSettings, metrics: VerdictsMetrics | None = None,
                 stop_event: threading.Event | None = None, sinks: list[Sink] | None = None) -> None:
        self.settings, self.metrics = settings, metrics or VerdictsMetrics()
        self.stop_event = stop_event or threading.Event()
        self.topic = settings.topics.results
        self.loop = LoopThread("linewatch-verdicts-opcua")
        self.sinks = sinks if sinks is not None else build_sinks(settings, self.loop)
        self.order = OrderGuard()
        self.consumer = Consumer({"fetch.wait.max.ms": settings.fetch_wait_max_ms,
                                  **settings.kafka.client_config(), "group.id": settings.group_id,
                                  "enable.auto.commit": False, "auto.offset.reset": settings.start_from,
                                  "session.timeout.ms": settings.session_timeout_ms})

    def run(self) -> None:
        """Consume until stopped; closes the sinks and the consumer at the end."""
        ensure_topics(self.settings.kafka, [self.topic], self.settings.topics.partitions,
                      self.settings.topics.replication_factor, 15.0)
        self.consumer.subscribe([self.topic], on_revoke=self._on_revoke)
        try:
            while not self.stop_event.is_set():
                messages = records(self.consumer.consume(self.settings.batch_size,
                                                         timeout=self.settings.poll_timeout_s))
                if messages:
                    self._deliver_until_done(messages)
        finally:
            self.consumer.close()
            for sink in self.sinks:
                _close_quietly(sink)
            self.loop.stop()

    def _on_revoke(self, _consumer: Any, _partitions: list[TopicPartition]) -> None:
        self.order.forget()

    def _deliver_until_done(self, messages: list[Message]) -> None:
        """Publish a batch, retrying after sink failures, then commit it."""
        while not self.stop_event.is_set():
            try:
                self.process(messages)
                break
            except SinkError as exc:
                log.error("verdict sink failed, retrying the batch: %s", exc)
                self.stop_event.wait(self.settings.retry_backoff_s)
        else:
            return  # stopping: nothing committed, the next owner sends the batch again
        self._commit(messages)

    def process(self, messages: list[Message]) -> list[Verdict]:
        """Decide and send the batch's new verdicts; raises SinkError when a sink did not take them."""
        sent: list[Verdict] = []
        for msg in messages:
            verdict = self._verdict(msg)
            if verdict is None:
                continue
            for sink in self.sinks:
                try:
                    sink.send(verdict)
                except SinkError:
                    self.metrics.sink_errors.labels(sink.name).inc()
                    raise
            sent.append(verdict)
        for sink in self.sinks:
            try:
                sink.flush()
            except SinkError:
                self.metrics.sink_errors.labels(sink.name).inc()
                raise
        for verdict in sent:
            self._count(verdict)
        return sent

    def _verdict(self, msg: Message) -> Verdict | None:
        try:
            result, body = parse_result(msg.value() or b"")
        except ResultError as exc:
            log.warning("unreadable result at %s[%d]@%d skipped: %s", msg.topic(), msg.partition(), msg.offset(),
                        exc)
            self.metrics.skipped.labels("invalid").inc()
            return None
        if not self.order.is_new(result.camera_id, result.sequence):
            self.metrics.skipped.labels("redelivered").inc()
            return None
        deadline = self.settings.deadlines.for_camera(result.camera_id)
        return decide(result, body, now_ns=time.time_ns(), deadline_ms=deadline,
                      late_policy=self.settings.deadlines.late_policy)

    def _count(self, verdict: Verdict) -> None:
        self.order.mark(verdict.camera_id, verdict.sequence)
        labels = (verdict.line_id, verdict.camera_id)
        self.metrics.published.labels(*labels, verdict.verdict).inc()
        self.metrics.latency.labels(*labels).observe(verdict.latency_ms / 1000)
        if verdict.late:
            self.metrics.late.labels(*labels).inc()
            log.warning("late verdict %s #%d: %.0f ms > %.0f ms deadline, sent %s (scored %s)", verdict.camera_id,
                        verdict.sequence, verdict.latency_ms, verdict.deadline_ms, verdict.verdict,
                        verdict.scored_verdict)

    def _commit(self, messages: list[Message]) -> None:
        # A rebalance that fails the commit brings the records back; they are recognised as published.
        positions = {(msg.topic() or self.topic, msg.partition() or 0): (msg.offset() or 0) + 1 for msg in messages}
        commit_positions(self.consumer, positions, asynchronous=True)


def _close_quietly(sink: Sink) -> None:
    try:
        sink.close()
    except Exception as exc:  # shutting down: a sink that cannot close cleanly must not hide the others
        log.warning("closing sink %s failed: %r", sink.name, exc)


def run_verdicts(settings: VerdictsSettings, stop_event: threading.Event | None = None,
                 metrics: VerdictsMetrics | None = None) -> None:
    """Serve metrics (when configured) and run the consumer until ``stop_event`` is set."""
    metrics = metrics or VerdictsMetrics()
    if settings.metrics_port is not None:
        from linewatch.ingest.metrics import serve_metrics

        serve_metrics(settings.metrics_port, metrics.registry, settings.metrics_host)
    VerdictsService(settings, metrics, stop_event).run()
