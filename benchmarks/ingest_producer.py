"""Frames/s and MB/s one camera producer sustains into the local broker.

Encode time (resize-free JPEG encode of realistic synthetic parts) is measured apart from send time
(pre-encoded frames through :class:`ingest.producer.FrameProducer`, acks=all + idempotence, until
the broker acknowledged every frame). A third figure runs the whole camera loop (``run_camera``:
capture thread, queue, encode, produce) for the end-to-end rate.

    nice -n 10 .venv/bin/python benchmarks/ingest_producer.py [--seconds 8] [--quality 90]

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local Tansu broker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import cv2
import numpy as np

import common
from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import start_local_stack
from linewatch.ingest.camera import run_camera
from linewatch.ingest.metrics import CameraMetrics
from linewatch.ingest.producer import FrameProducer
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.sources import CapturedFrame, Source
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import EncodedFrame, encode_frame

SIZES = {"256x256": (256, 256), "1920x1080": (1920, 1080)}


def make_images(width: int, height: int, count: int = 8) -> list[np.ndarray]:
    """Realistic textured parts (with defects) at the given size."""
    side = min(1024, max(width, height))
    images = []
    for seed in range(count):
        image = render_sample(seed, side, defect_probability=0.5).image
        images.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
    return images


class CycleSource(Source):
    """A recorded source that cycles through prepared images (no decode cost)."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images, self.index = images, 0

    @property
    def description(self) -> str:
        return "benchmark images"

    def open(self) -> None:
        self.index = 0

    def read(self) -> CapturedFrame | None:
        self.index += 1
        return CapturedFrame(image=self.images[self.index % len(self.images)])


def bench_size(name: str, bootstrap: str, seconds: float, quality: int) -> dict[str, float]:
    width, height = SIZES[name]
    images = make_images(width, height)
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    ensure_topics(kafka, [topic], 1)

    encoded: list[EncodedFrame] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds / 3 or len(encoded) < 10:
        encoded.append(encode_frame(images[len(encoded) % len(images)], camera_id="bench", line_id="l",
                                    sequence=len(encoded), capture_ns=time.time_ns(), jpeg_quality=quality))
    encode_s = (time.perf_counter() - started) / len(encoded)
    frame_bytes = float(np.mean([len(f.value) for f in encoded]))

    producer = FrameProducer(kafka, topic, CameraMetrics())
    sent, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        producer.send(encoded[sent % len(encoded)])
        producer.poll(0)
        sent += 1
    assert producer.flush(60) == 0, "frames left undelivered"
    send_s = time.perf_counter() - started
    assert producer.acked == sent and producer.failed == 0

    settings = CameraSettings(camera_id="bench-loop", jpeg_quality=quality, kafka=kafka, queue_policy="block",
                              topics=TopicSettings.model_validate({"frames": topic, "partitions": 1}),
                              state_dir=Path(tempfile.mkdtemp()), create_topics=False)
    stop_after = max(20, int(seconds / (encode_s + 1e-6) / 2))
    stats = run_camera(settings, CycleSource(images), max_frames=stop_after)
    return {
        "frame_kb": frame_bytes / 1024, "encode_ms": encode_s * 1000, "send_fps": sent / send_s,
        "send_mbps": sent * frame_bytes / send_s / 1e6, "loop_fps": stats.sent / stats.elapsed_s,
        "loop_mbps": stats.bytes_sent / stats.elapsed_s / 1e6, "sent": sent, "loop_frames": stats.sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="send phase length per size")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    stack = start_local_stack()
    try:
        common.print_header()
        print(f"opencv {cv2.__version__}, broker {stack.bootstrap_servers}")
        print("| frame | JPEG size (KiB) | encode (ms/frame) | send frames/s | send MB/s | "
              "camera loop frames/s | camera loop MB/s |")
        print("|---|---|---|---|---|---|---|")
        for name in SIZES:
            r = bench_size(name, stack.bootstrap_servers, args.seconds, args.quality)
            print(f"| {name} | {r['frame_kb']:.0f} | {r['encode_ms']:.2f} | {r['send_fps']:.0f} | "
                  f"{r['send_mbps']:.1f} | {r['loop_fps']:.0f} | {r['loop_mbps']:.1f} |", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
