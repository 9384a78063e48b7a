"""Helpers of the registry tests: topics, frames with known offsets, and a minimal scorer.

The scorer stands in for the detector service (which is not under test here): it reads the frames
topic, scores with :class:`AnomalyModel` exactly as the detector does and publishes one
:class:`FrameResult` per frame, carrying the frame's partition and offset.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.common import cache_keys
from linewatch.detector.events import FrameResult, Latency
from linewatch.detector.model.inference import AnomalyModel
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import decode_frame, encode_frame


def topic_names(unique: str) -> dict[str, str]:
    """Unique topic names of one test (TopicSettings field -> name)."""
    return {name: f"{name}-{unique}" for name in ("frames", "results", "alerts")}


def delete_test_keys(redis_url: str, prefix: str) -> None:
    """Remove what a test's detector wrote to the machine's Redis under its key prefix."""
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)


def create_topics(bootstrap: str, names: list[str], partitions: int = 2) -> None:
    """Create the test's topics."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1)
                                       for n in names]).values():
        future.result(15)


@dataclass(frozen=True)
class SentFrame:
    """A produced frame and where the broker put it."""

    camera_id: str
    sequence: int
    capture_ns: int
    partition: int
    offset: int
    image: np.ndarray
    label: str


def produce_frames(bootstrap: str, topic: str, *, cameras: int, per_camera: int, capture_ns: list[int],
                   size: int = 64, seed: int = 0, first_sequence: int = 0,
                   extra_headers: list[tuple[str, bytes]] | None = None) -> list[SentFrame]:
    """Produce synthetic PNG frames (some defective), one per sequence; record timestamp = capture time."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 50})
    sent: list[SentFrame] = []
    pending: dict[tuple[str, int], tuple[int, np.ndarray, str]] = {}
    errors: list[str] = []

    def delivered_for(camera: str, sequence: int) -> Callable[[object, object], None]:
        def delivered(err: object, msg: object) -> None:
            if err is not None:
                errors.append(str(err))
                return
            when, image, label = pending[(camera, sequence)]
            sent.append(SentFrame(camera, sequence, when, msg.partition(), msg.offset(),  # type: ignore[attr-defined]
                                  image, label))
        return delivered

    encoded = []
    for i in range(per_camera):  # render first, then produce in a burst: records share batches, as on a line
        seq = first_sequence + i
        for cam in range(cameras):
            sample = render_sample(seed * 10_000 + seq * 31 + cam, size=size)
            frame = encode_frame(sample.image, camera_id=f"cam-{cam}", line_id="line-1", sequence=seq,
                                 capture_ns=capture_ns[i], encoding="png", label=sample.label)
            pending[(f"cam-{cam}", seq)] = (capture_ns[i], sample.image, sample.label)
            encoded.append((frame, f"cam-{cam}", seq, capture_ns[i] // 1_000_000))
    for frame, camera, seq, timestamp_ms in encoded:
        producer.produce(topic, key=frame.key, value=frame.value, headers=frame.headers + (extra_headers or []),
                         timestamp=timestamp_ms, on_delivery=delivered_for(camera, seq))
    assert producer.flush(30) == 0 and not errors, errors
    return sorted(sent, key=lambda f: (f.camera_id, f.sequence))


def score_and_publish(bootstrap: str, frames: list[SentFrame], results_topic: str, model_path: Path,
                      prefix: str = "lw") -> list[FrameResult]:
    """Score ``frames`` with the model (as the detector would) and publish their results."""
    model = AnomalyModel.load(model_path, "cpu")
    prediction = model.predict([f.image for f in frames])
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    results = []
    for i, f in enumerate(frames):
        result = FrameResult(
            camera_id=f.camera_id, line_id="line-1", sequence=f.sequence, capture_ns=f.capture_ns,
            image_score=float(prediction.image_scores[i]), normalised_score=float(prediction.normalised_scores[i]),
            anomalous=bool(prediction.anomalous[i]), threshold=model.image_threshold,
            model_version=model.model_version, heatmap_key=cache_keys.heatmap_key(prefix, f.camera_id, f.sequence),
            latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0, end_to_end_ms=0), label=f.label,
            partition=f.partition, offset=f.offset, processed_ns=time.time_ns())
        producer.produce(results_topic, key=f.camera_id.encode(), value=result.model_dump_json().encode())
        results.append(result)
    assert producer.flush(30) == 0
    return results


def read_frame(bootstrap: str, topic: str, frame: SentFrame) -> np.ndarray:
    """Decode one produced frame back from the topic (what an exporter should have written)."""
    from confluent_kafka import TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.time_ns()}"})
    try:
        consumer.assign([TopicPartition(topic, frame.partition, frame.offset)])
        msg = consumer.poll(15)
        assert msg is not None and msg.error() is None
        return decode_frame(msg.value(), msg.headers())[1]
    finally:
        consumer.close()
