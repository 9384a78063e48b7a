"""Helpers of the detector service tests: topics, settings, frames, topic readers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.detector.service.settings import DetectorSettings
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame


def topic_names(unique: str) -> dict[str, str]:
    """Unique topic names of one test."""
    return {name: f"{name}-{unique}" for name in ("frames", "results", "breaches", "dead_letters")}


def create_topics(bootstrap: str, topics: dict[str, str], partitions: int = 2) -> None:
    """Create the test's topics (frames with ``partitions``, outputs with 1)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = [NewTopic(name, num_partitions=partitions if role == "frames" else 1, replication_factor=1)
           for role, name in topics.items()]
    for future in admin.create_topics(new).values():
        future.result(15)


def settings_for(bootstrap: str, redis_url: str, topics: dict[str, str], unique: str, model: Path,
                 **overrides: object) -> DetectorSettings:
    """Detector settings pointed at the test's broker, topics, Redis prefix and model."""
    values: dict[str, object] = {
        "kafka": {"bootstrap_servers": bootstrap}, "topics": topics,
        "redis": {"url": redis_url, "key_prefix": f"lwt-{unique}", "socket_timeout_s": 0.5},
        "model": model, "device": "cpu", "group_id": f"det-{unique}", "session_timeout_ms": 6000,
        "metrics_port": 0, "metrics_host": "127.0.0.1", "max_batch_size": 8, "max_wait_ms": 30,
        "statistics_interval_ms": 1000, "torch_threads": 1,
        # Short lifetimes: a test run must not leave week-long keys in the machine's Redis.
        "heatmap_ttl_s": 60, "breach_ttl_s": 300, "camera_key_ttl_s": 300,
    }
    values.update(overrides)
    return DetectorSettings(**values)  # type: ignore[arg-type]


def produce_frames(bootstrap: str, topic: str, cameras: int, per_camera: int, size: int = 64,
                   first_sequence: int = 0) -> set[tuple[str, int]]:
    """Produce synthetic JPEG frames (half defective); returns the (camera, sequence) pairs."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent = set()
    for seq in range(first_sequence, first_sequence + per_camera):
        for cam in range(cameras):
            sample = render_sample(seq * 31 + cam, size=size)
            frame = encode_frame(sample.image, camera_id=f"cam-{cam}", line_id="line-1", sequence=seq,
                                 capture_ns=time.time_ns(), label=sample.label)
            producer.produce(topic, key=frame.key, value=frame.value, headers=frame.headers)
            sent.add((f"cam-{cam}", seq))
    assert producer.flush(30) == 0
    return sent


def read_topic(bootstrap: str, topic: str, done: Callable[[list], bool], timeout_s: float = 60.0) -> list:
    """Read ``topic`` from the start until ``done(messages)`` or the timeout; returns the messages."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{topic}-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(messages) and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
    finally:
        consumer.close()
    return messages
