"""Live shadow: a candidate scores the line's frames as they arrive, beside the active version, and touches nothing.

``linewatch models shadow VERSION --product P --live --duration 30m`` reads the ``frames`` topic under a consumer
group id of its own (``<shadow_group_prefix>-live-<VERSION>``, assigned partitions, nothing committed), from the
end of each partition as the run starts, so the detectors' group, offsets and verdicts are untouched. Each frame
of the product is scored by the candidate and by the product's active version, exactly as the replay does
(:class:`~.shadow.ShadowRun`); one JSON row per frame goes to the shadow results topic (``results-shadow`` by
default, never ``results`` or ``breaches``: no verdict, no alert, no heatmap), and at the end the same report as
the replay is written.

Its cost on the line is bounded, not hoped for: it runs in its own process (on the CPU by default, leaving the
GPU to the line), ``--max-rate`` caps the frames it scores a second, and frames over that budget are skipped and
counted (``over_budget``) rather than queued, so the shadow never falls behind the line and never grows memory;
fetches are capped by ``fetch_max_bytes``. What it costs the detectors is measured in
benchmarks/results/shadow_live.md.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, Producer, TopicPartition

from linewatch.common.topics import ensure_topics
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.offsets import end_offsets
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.shadow import ShadowError, ShadowOptions, ShadowRun, _product_of
from linewatch.detector.registry.times import iso
from linewatch.ingest.wire import FrameMeta

SHADOW_RESULTS_TOPIC = "results-shadow"
DEFAULT_LIVE_MAX_RATE = 5.0  # frames a second: a sample of the line, enough for the report in minutes


@dataclass(frozen=True)
class LiveOptions:
    """How long to watch and where the shadow's rows go."""

    duration_s: float | None = None  # None: until stopped
    max_frames: int | None = None
    results_topic: str = SHADOW_RESULTS_TOPIC


class RateBudget:
    """Token bucket: ``rate`` frames a second, bursts of at most one second's worth after a quiet spell."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.clock = rate, clock
        self.tokens, self.refilled = 1.0, clock()

    def take(self) -> bool:
        """True when one more frame may be scored now (unlimited when ``rate`` <= 0)."""
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.refilled) * self.rate)
        self.refilled = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class LiveShadowRun(ShadowRun):
    """Scores frames as they arrive until the duration, the frame count or ``stop`` ends it."""

    def __init__(self, settings: RegistrySettings, registry: Registry, options: ShadowOptions, live: LiveOptions,
                 stop: threading.Event | None = None) -> None:
        super().__init__(settings, registry, options)
        if live.results_topic in (settings.topics.results, settings.topics.breaches, settings.topics.alerts):
            raise ShadowError(f"the shadow results topic {live.results_topic!r} is one the line reads; choose another")
        self.live, self.stop = live, stop or threading.Event()
        self.ready = threading.Event()  # set once partitions are assigned: frames from then on are watched
        self.producer: Producer | None = None
        self._window_start_ns = 0
        self.budget = RateBudget(options.max_rate)

    def _group_id(self) -> str:
        return self.options.group_id or f"{self.settings.registry.shadow_group_prefix}-live-" \
                                        f"{self.records['candidate'].version}"

    def run(self) -> dict[str, Any]:
        """Watch the line; returns the report (see :func:`~.shadow.write_report`)."""
        config = self.settings.kafka.client_config()
        config.update({"group.id": self._group_id(), "enable.auto.commit": False, "auto.offset.reset": "latest",
                       "fetch.max.bytes": self.options.fetch_max_bytes})
        ensure_topics(self.settings.kafka, [self.live.results_topic], 1, self.settings.topics.replication_factor)
        consumer = Consumer(config)
        self.producer = Producer(self.settings.kafka.client_config())
        started = time.monotonic()
        self._window_start_ns = time.time_ns()
        try:
            self._start_at_the_end(consumer)
            self._watch(consumer, started)
        except KafkaException as exc:
            raise ShadowError(f"cannot follow {self.settings.topics.frames}: {exc}") from None
        finally:
            consumer.close()
            self.producer.flush(30)
        report = self._report([], {}, time.time_ns(), time.monotonic() - started)
        report["window"] = {"since": iso(self._window_start_ns), "until": report["window"]["until"],
                            "topic": self.settings.topics.frames, "live": True}
        report["budget"] = {**report["budget"], "consumer_group": f"{self._group_id()} (its own, commits nothing)",
                            "results_topic": self.live.results_topic,
                            "skipped_over_budget": self.tally.skipped.get("over_budget", 0)}
        return report

    def _start_at_the_end(self, consumer: Consumer) -> None:
        """Assign every partition at its end offset as of now: every frame appended after ``ready`` is seen,
        none from before (a reset to "latest" resolved later could skip the frames appended in between)."""
        topic = self.settings.topics.frames
        metadata = consumer.list_topics(topic, timeout=15)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            raise ShadowError(f"topic {topic} does not exist on the broker")
        ends = end_offsets(consumer, topic, sorted(metadata.topics[topic].partitions))
        consumer.assign([TopicPartition(topic, partition, offset) for partition, offset in ends.items()])
        self.ready.set()

    def _watch(self, consumer: Consumer, started: float) -> None:
        self.budget = RateBudget(self.options.max_rate)  # from now: no credit for the start-up time
        while not self._finished(started):
            pending: list[tuple[Message, FrameMeta, np.ndarray]] = []
            for msg in consumer.consume(num_messages=self.options.batch_size, timeout=0.5):
                if msg.error():
                    continue
                product = _product_of(msg)
                if product is not None and product != self.options.product:
                    self.tally.skipped["other_product"] += 1
                    continue
                if self._enough(len(pending)):
                    break
                if not self.budget.take():
                    self.tally.skipped["over_budget"] += 1
                    continue
                self._accept(msg, pending)
            if pending:
                self._score(pending)
                self._publish(self.tally.rows[-len(pending):])

    def _enough(self, pending: int) -> bool:
        return self.live.max_frames is not None and len(self.tally.rows) + pending >= self.live.max_frames

    def _finished(self, started: float) -> bool:
        live = self.live
        return (self.stop.is_set()
                or (live.duration_s is not None and time.monotonic() - started >= live.duration_s)
                or (live.max_frames is not None and len(self.tally.rows) >= live.max_frames))

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        assert self.producer is not None
        for row in rows:
            key = f"{row['camera_id']}".encode()
            self.producer.produce(self.live.results_topic, key=key, value=json.dumps(
                {**row, "product": self.options.product, "candidate_version": self.records["candidate"].version,
                 "active_version": self.records["active"].version}).encode())
        self.producer.poll(0)
