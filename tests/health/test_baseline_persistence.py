"""Learned pixel baselines survive a restart of the health service (real broker and Redis).

A camera learns its baseline from healthy frames; the service stops; a new service object starts while
the camera is blurred. Had the new service learned again, the blur would be its "normal" and no focus
alert would come; with the stored baseline it comes. Pinned values still win over the stored ones.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
from confluent_kafka import Producer
from helpers.faults import wait_until

from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import LocalStack
from linewatch.health.baselines import PINNED, STORED, baseline_key
from linewatch.health.metrics import HealthMetrics
from linewatch.health.service import HealthService
from linewatch.health.settings import Baseline, CheckConfig, ChecksSettings, HealthSettings
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = pytest.mark.integration

CHECKS = CheckConfig(window=5, baseline_frames=10, confirm=2, focus_ratio=0.35)
TTL_S = 7 * 86400


def parts(count: int, start: int = 0) -> list[np.ndarray]:
    """Good synthetic parts: a sharp, healthy camera."""
    return [render_sample(start + i, size=192, defect_probability=0.0).image for i in range(count)]


def fresh_topics(settings: HealthSettings) -> HealthSettings:
    """The same Redis state with topics of its own: each run reads only the frames sent to it."""
    unique = uuid.uuid4().hex[:10]
    return settings.model_copy(update={
        "topics": TopicSettings(frames=f"frames-{unique}", results=f"results-{unique}", partitions=1),
        "health_topic": f"health-{unique}", "group_id": f"health-{unique}"})


@pytest.fixture
def settings(stack: LocalStack) -> Iterator[HealthSettings]:
    """Settings with their own key prefix; every key under the prefix is deleted afterwards."""
    found = fresh_topics(HealthSettings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers),
        redis=RedisSettings(url=stack.redis_url, key_prefix=f"lw-{uuid.uuid4().hex[:10]}"), redis_ttl_s=60,
        baseline_ttl_s=TTL_S, checks=ChecksSettings(default=CHECKS), start_from="earliest", metrics_port=None))
    yield found
    client = found.redis.client()
    for key in client.scan_iter(f"{found.redis.key_prefix}:*"):
        client.delete(key)


class Running:
    """A health service on its own thread and topics, stopped on exit (a restart is a new one)."""

    def __init__(self, settings: HealthSettings) -> None:
        self.settings = fresh_topics(settings)
        ensure_topics(self.settings.kafka, [self.settings.topics.frames, self.settings.topics.results,
                                            self.settings.health_topic], 1)
        self.service = HealthService(self.settings, HealthMetrics())
        self.thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def send(self, camera: str, images: list[np.ndarray]) -> None:
        producer = Producer(self.settings.kafka.client_config())
        for seq, image in enumerate(images):
            frame = encode_frame(image, camera_id=camera, line_id="line-1", sequence=seq, capture_ns=time.time_ns())
            producer.produce(self.settings.topics.frames, key=frame.key, value=frame.value, headers=frame.headers)
        assert producer.flush(30) == 0

    def frames_read(self, camera: str) -> float:
        return self.service.metrics.value("linewatch_camera_health_frames_total", line="line-1", camera=camera)

    def __exit__(self, *_: object) -> None:
        self.service.stop_event.set()
        self.thread.join(30)


def test_a_restarted_service_reuses_the_learned_baseline(settings: HealthSettings,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linewatch.health.service")
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    with Running(settings) as first:
        first.send("cam-a", parts(CHECKS.baseline_frames))
        wait_until(lambda: client.exists(baseline_key(prefix, "cam-a")), 60, "the learned baseline stored")
        learned = first.service.monitors["cam-a"].baseline
    assert learned is not None
    assert 0 < client.ttl(baseline_key(prefix, "cam-a")) <= TTL_S  # no key lives forever

    blurred = [cv2.GaussianBlur(im, (0, 0), 3) for im in parts(CHECKS.baseline_frames + CHECKS.window + 10, 100)]
    with Running(settings) as second:
        second.send("cam-a", blurred)
        wait_until(lambda: second.frames_read("cam-a") == len(blurred), 60, "every blurred frame read")
        assert second.service.baseline_sources["cam-a"] == STORED
        assert second.service.monitors["cam-a"].baseline == learned  # not learned again from the blurred frames
        assert second.service.monitors["cam-a"].unhealthy() == ["focus"]
    assert "camera cam-a baseline: stored in Redis" in caplog.text


def test_pinned_baselines_win_and_an_unreadable_stored_one_is_learned_again(settings: HealthSettings,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linewatch.health.service")
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    client.set(baseline_key(prefix, "cam-pinned"), '{"mean": 50.0, "focus": 50.0}', ex=60)
    client.set(baseline_key(prefix, "cam-garbled"), "not json", ex=60)
    pinned = Baseline(mean=120.0, focus=300.0)
    with Running(settings.model_copy(update={"baselines": {"cam-pinned": pinned}})) as run:
        run.send("cam-pinned", parts(3))
        run.send("cam-garbled", parts(CHECKS.baseline_frames))
        wait_until(lambda: run.frames_read("cam-garbled") == CHECKS.baseline_frames, 60, "frames read")
        service = run.service
        assert service.monitors["cam-pinned"].baseline == pinned
        assert service.baseline_sources["cam-pinned"] == PINNED
        relearned = service.monitors["cam-garbled"].baseline
        assert relearned is not None
        wait_until(lambda: client.get(baseline_key(prefix, "cam-garbled")) != b"not json", 30, "the record replaced")
    assert "camera cam-garbled baseline: learning from its first 10 frames: the stored baseline could not be read" \
        in caplog.text
    assert "camera cam-pinned baseline: pinned" in caplog.text
