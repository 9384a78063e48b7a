"""What the line produced during a demo run, read back from its Kafka topics by a background reader."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from pydantic import ValidationError

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.detector.events import FrameResult

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """Records read so far (results keep every copy, so duplicates can be counted)."""

    results: list[FrameResult] = field(default_factory=list)
    alert_events: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, str]] = field(default_factory=list)
    unreadable: int = 0

    def unique_frames(self) -> set[tuple[str, int]]:
        """(camera, sequence) of every frame that has a result."""
        return {(r.camera_id, r.sequence) for r in self.results}


class TopicCollector:
    """Reads the results, alerts and dead-letter topics from their start until stopped."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings, group_id: str) -> None:
        self.topics = topics
        self.data = Collected()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({**kafka.client_config(), "group.id": group_id, "auto.offset.reset": "earliest",
                                   "enable.auto.commit": False, "session.timeout.ms": 6000})
        self._thread = threading.Thread(target=self._run, name="demo-collector", daemon=True)

    def start(self) -> TopicCollector:
        """Subscribe and read in a daemon thread."""
        self._consumer.subscribe([self.topics.results, self.topics.alerts, self.topics.dead_letters])
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    self._add(msg.topic() or "", msg.value() or b"", list(msg.headers() or []))

    def _add(self, topic: str, value: bytes, headers: list[Any]) -> None:
        with self.lock:
            if topic == self.topics.dead_letters:
                self.data.dead_letters.append({k: bytes(v).decode(errors="replace") for k, v in headers
                                               if k.startswith("dl-") and v is not None})
                return
            try:
                if topic == self.topics.results:
                    self.data.results.append(FrameResult.model_validate_json(value))
                else:
                    self.data.alert_events.append(json.loads(value))
            except (ValidationError, ValueError):
                self.data.unreadable += 1

    def wait_for(self, done: Callable[[Collected], bool], timeout_s: float) -> bool:
        """Block until ``done(data)`` holds (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if done(self.data):
                    return True
            time.sleep(0.2)
        with self.lock:
            return done(self.data)

    def stop(self) -> Collected:
        """Stop reading and return what was read."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
        return self.data


def group_caught_up(kafka: KafkaSettings, group_id: str, topic: str) -> bool:
    """True when ``group_id`` has committed the end of every partition of ``topic``."""
    consumer = Consumer({**kafka.client_config(), "group.id": group_id, "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or not meta.partitions:
            return False
        parts = [TopicPartition(topic, p) for p in meta.partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
        for tp in parts:
            high = consumer.get_watermark_offsets(tp, timeout=10)[1]
            if high > 0 and committed.get(tp.partition, -1) < high:
                return False
        return True
    except Exception as exc:  # the summary still comes out; it just waited less
        log.warning("cannot read the offsets of group %s: %s", group_id, exc)
        return False
    finally:
        consumer.close()
