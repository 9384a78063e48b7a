"""Helpers of the hostile-input tests: run the real alerts service, produce raw records, read topics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from helpers.redis_server import throwaway_redis

from linewatch.alerts.service import AlertsService, ensure_topics
from linewatch.alerts.settings import AlertsSettings


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it is truthy (returned) or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def produce_raw(bootstrap: str, topic: str, records: list[tuple[bytes | str | None, bytes | str]]) -> None:
    """Produce (key, value) records as given (no validation), in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for key, value in records:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def result_record(result: Any, key: str | None = None) -> tuple[str, str]:
    """A detector result as a (key, JSON) record; the key is the camera id unless given."""
    return (result.camera_id if key is None else key), result.model_dump_json()


@contextmanager
def running(settings: AlertsSettings) -> Iterator[AlertsService]:
    """The real alerts service consuming in a thread; stopped (and checked to have stopped) on exit."""
    ensure_topics(settings, [settings.topics.results, settings.topics.alert_dead_letters, settings.topics.alerts])
    service = AlertsService(settings, stop_event=threading.Event())
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run()
        except BaseException as exc:  # the test asserts the service never died
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    service.thread = thread  # type: ignore[attr-defined]
    try:
        yield service
    finally:
        service.stop_event.set()
        thread.join(30)
    assert not thread.is_alive()
    assert not errors, f"the alerts service died: {errors[0]!r}"


def read_all(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[Message]:
    """At least ``count`` records of ``topic`` from the beginning (fails after ``timeout_s``)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}-{time.monotonic_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.message.max.bytes": 2_000_000})
    consumer.subscribe([topic])
    found: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count:
            assert time.monotonic() < deadline, f"only {len(found)} of {count} records on {topic}"
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                found.append(msg)
    finally:
        consumer.close()
    return found


@contextmanager
def redis_server(tmp_path: Path, *args: str) -> Iterator[str]:
    """A throwaway redis-server with extra arguments (e.g. a memory limit); yields its URL."""
    with throwaway_redis(tmp_path, "--save", "", "--appendonly", "no", *args) as url:
        yield url
