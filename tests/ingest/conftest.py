"""Helpers for the ingest tests: read a topic back without a consumer group (fast, no rebalance)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.ingest.settings import CameraSettings

ReadTopic = Callable[..., list[Message]]


@pytest.fixture
def read_topic(bootstrap: str) -> ReadTopic:
    """``read_topic(topic, count, timeout_s=20)``: every record of ``topic`` (all partitions), in
    partition then offset order; waits until ``count`` arrived (or the timeout) and a bit after."""

    def read(topic: str, count: int, timeout_s: float = 20.0) -> list[Message]:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
        try:
            deadline = time.monotonic() + timeout_s
            partitions: dict = {}
            while not partitions and time.monotonic() < deadline:  # the topic may not exist yet
                partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
                if not partitions:
                    time.sleep(0.2)
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            found: list[Message] = []
            quiet_until = None
            while time.monotonic() < deadline:
                msg = consumer.poll(0.2)
                if msg is not None and not msg.error():
                    found.append(msg)
                if len(found) >= count:
                    quiet_until = quiet_until or time.monotonic() + 0.5  # catch any extra (duplicate) records
                    if time.monotonic() > quiet_until:
                        break
            return sorted(found, key=lambda m: (m.partition(), m.offset()))
        finally:
            consumer.close()

    return read


@pytest.fixture
def camera_settings(bootstrap: str, unique: str, tmp_path: Path) -> Callable[..., CameraSettings]:
    """``camera_settings(**fields)``: settings on the test broker, a unique frames topic and state dir."""

    def make(**fields: object) -> CameraSettings:
        topics = TopicSettings.model_validate({"frames": f"frames-{unique}", "partitions": fields.pop("partitions", 2)})
        values: dict[str, object] = {"camera_id": "cam-1", "state_dir": tmp_path / "state",
                                     "reopen_initial_s": 0.05, "reopen_max_s": 0.2, "flush_timeout_s": 15.0}
        values.update(fields)
        return CameraSettings(kafka=KafkaSettings(bootstrap_servers=bootstrap), topics=topics, **values)

    return make

