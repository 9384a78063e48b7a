"""``linewatch camera-health`` against the real broker: healthy and drifted replays of good images."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from confluent_kafka import Consumer, Producer

from linewatch.common.images import list_train_good
from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import LocalStack
from linewatch.detector.events import FrameResult, Latency
from linewatch.health.metrics import HealthMetrics
from linewatch.health.service import HealthService
from linewatch.health.settings import CheckConfig, CheckOverride, ChecksSettings, HealthSettings, ScoreReference
from linewatch.health.state import monitored, recently_unhealthy, unhealthy_checks
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"
# Silence after 10 minutes: a replay that has ended is not silence within a test. The frozen-stream test's camera
# ("stuck") has 3 s, so that it sees silence fire and clear without the other cameras' replays racing it.
CHECKS = CheckConfig(window=10, baseline_frames=20, confirm=3, silence_s=600.0, drift_window=30, drift_threshold=1.5,
                     focus_ratio=0.35)  # 0.35: also right for the synthetic parts used without the shared data
STUCK_SILENCE_S = 3.0
REFERENCE = ScoreReference(p50=1.0, log_scale=0.3)


def good_images(count: int) -> list[np.ndarray]:
    """Good images of the shared data set (a healthy camera), or synthetic good parts when it is absent."""
    if (DATA / "train" / "good").is_dir():
        records = list_train_good(DATA)[:count]
        return [cv2.cvtColor(cv2.imread(str(r.path)), cv2.COLOR_BGR2RGB) for r in records]
    return [render_sample(i, size=256, defect_probability=0.0).image for i in range(count)]


@pytest.fixture(scope="module")
def health(stack: LocalStack) -> Iterator[tuple[HealthSettings, HealthMetrics, list[dict[str, Any]]]]:
    """One health service for the module; yields its settings, metrics and the events on its topic."""
    unique = uuid.uuid4().hex[:10]
    settings = HealthSettings(
        kafka=KafkaSettings(bootstrap_servers=stack.bootstrap_servers),
        topics=TopicSettings(frames=f"frames-{unique}", results=f"results-{unique}", partitions=2),
        redis=RedisSettings(url=stack.redis_url, key_prefix=f"lw-{unique}"), redis_ttl_s=60,
        checks=ChecksSettings(default=CHECKS, cameras={"stuck": CheckOverride(silence_s=STUCK_SILENCE_S)}),
        score_references={"m-1": REFERENCE},
        health_topic=f"health-{unique}", group_id=f"health-{unique}", start_from="earliest", metrics_port=None)
    ensure_topics(settings.kafka, [settings.topics.frames, settings.topics.results, settings.health_topic], 2)
    metrics = HealthMetrics()
    service = HealthService(settings, metrics)
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_read_topic, args=(settings, events, stop), daemon=True)
    runner = threading.Thread(target=service.run, daemon=True)
    reader.start()
    runner.start()
    yield settings, metrics, events
    service.stop_event.set()
    stop.set()
    runner.join(30)
    reader.join(30)
    client = settings.redis.client()
    for key in client.scan_iter(f"{settings.redis.key_prefix}:*"):
        client.delete(key)


def _read_topic(settings: HealthSettings, events: list[dict[str, Any]], stop: threading.Event) -> None:
    consumer = Consumer({**settings.kafka.client_config(), "group.id": f"reader-{settings.group_id}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([settings.health_topic])
    while not stop.is_set():
        msg = consumer.poll(0.2)
        if msg is not None and msg.error() is None:
            events.append(json.loads(msg.value()))
    consumer.close()


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def replay(settings: HealthSettings, camera: str, images: list[np.ndarray]) -> None:
    producer = Producer(settings.kafka.client_config())
    for seq, image in enumerate(images):
        frame = encode_frame(image, camera_id=camera, line_id="line-1", sequence=seq, capture_ns=time.time_ns())
        producer.produce(settings.topics.frames, key=frame.key, value=frame.value, headers=frame.headers)
    assert producer.flush(30) == 0


def frames_read(metrics: HealthMetrics, camera: str) -> float:
    return metrics.value("linewatch_camera_health_frames_total", line="line-1", camera=camera)


def checks_fired(events: list[dict[str, Any]], camera: str) -> list[str]:
    return [e["check"] for e in events if e["camera_id"] == camera and e["status"] == "firing"]


def test_healthy_replay_raises_nothing_and_a_blurred_one_raises_a_focus_alert(health: Any) -> None:
    settings, metrics, events = health
    images = good_images(80)
    replay(settings, "healthy", images)
    blurred = images[:30] + [cv2.GaussianBlur(im, (0, 0), 3) for im in images[30:80]]
    replay(settings, "blurred", blurred)
    wait_until(lambda: checks_fired(events, "blurred"), 120, "a camera-health alert for the blurred camera")
    wait_until(lambda: frames_read(metrics, "healthy") == len(images), 60, "every healthy frame read")
    assert checks_fired(events, "blurred") == ["focus"]
    assert all(e["kind"] == "camera_health" for e in events)
    assert checks_fired(events, "healthy") == []
    assert metrics.value("linewatch_camera_health_unhealthy", line="line-1", camera="blurred", check="focus") == 1
    assert metrics.value("linewatch_camera_focus_ratio", line="line-1", camera="blurred") < CHECKS.focus_ratio
    client = settings.redis.client()
    assert list(unhealthy_checks(client, settings.redis.key_prefix, "blurred")) == ["focus"]
    assert unhealthy_checks(client, settings.redis.key_prefix, "healthy") == {}
    # What the operator page reads: the service is reporting, and which cameras had a check firing.
    assert monitored(client, settings.redis.key_prefix)
    assert recently_unhealthy(client, settings.redis.key_prefix) == ["blurred"]
    assert unhealthy_checks(client, settings.redis.key_prefix, "blurred")["focus"]["line_id"] == "line-1"
    assert metrics.value("linewatch_camera_health_unhealthy", line="line-1", camera="healthy", check="focus") == 0
    assert "healthy" in {s.labels["camera"] for m in metrics.registry.collect() for s in m.samples
                         if s.name == "linewatch_camera_health_unhealthy"}  # a series at 0, not a gap


def test_darkened_replay_raises_an_exposure_alert(health: Any) -> None:
    settings, _metrics, events = health
    images = good_images(60)
    replay(settings, "darkened", images[:30] + [(im * 0.2).astype(np.uint8) for im in images[30:]])
    wait_until(lambda: checks_fired(events, "darkened"), 120, "an exposure alert")
    assert checks_fired(events, "darkened") == ["exposure"]


def test_frozen_stream_then_silence_then_recovery(health: Any) -> None:
    settings, metrics, events = health
    images = good_images(10)
    replay(settings, "stuck", images[:5] + [images[5]] * (CHECKS.frozen_frames + CHECKS.confirm + 2))
    wait_until(lambda: "frozen" in checks_fired(events, "stuck"), 120, "a frozen-stream alert")
    wait_until(lambda: "silence" in checks_fired(events, "stuck"), 60, "a silence alert once frames stop")
    replay(settings, "stuck", images[6:10])
    wait_until(lambda: {(e["check"], e["status"]) for e in events if e["camera_id"] == "stuck"} >=
               {("silence", "resolved"), ("frozen", "resolved")}, 60, "both alerts to resolve")
    assert metrics.value("linewatch_camera_health_unhealthy", line="line-1", camera="stuck", check="frozen") == 0
    assert unhealthy_checks(settings.redis.client(), settings.redis.key_prefix, "stuck") == {}


def test_score_drift_against_the_calibration_raises_a_drift_alert(health: Any) -> None:
    settings, metrics, events = health
    rng = np.random.default_rng(1)
    producer = Producer(settings.kafka.client_config())
    steady = np.exp(rng.normal(0.0, 0.3, 60))
    drifted = np.exp(rng.normal(1.0, 0.3, 60))
    for camera, scores in (("steady", steady), ("drifting", np.concatenate([steady, drifted]))):
        for seq, score in enumerate(scores):
            result = FrameResult(camera_id=camera, line_id="line-1", sequence=seq, capture_ns=time.time_ns(),
                                 image_score=float(score), normalised_score=0.1, anomalous=False, threshold=3.0,
                                 model_version="m-1", heatmap_key=None,
                                 latency=Latency(queue_ms=1, decode_ms=1, inference_ms=1, end_to_end_ms=3))
            producer.produce(settings.topics.results, key=camera.encode(), value=result.model_dump_json().encode())
    assert producer.flush(30) == 0
    wait_until(lambda: "drift" in checks_fired(events, "drifting"), 120, "a drift alert")
    wait_until(lambda: metrics.value("linewatch_camera_health_scores_total", line="line-1", camera="steady") == 60,
               60, "every steady score read")
    assert checks_fired(events, "steady") == []
    assert metrics.value("linewatch_camera_score_drift", line="line-1", camera="drifting") > CHECKS.drift_threshold
