"""Camera producers against the real local broker: content, order, sequences, faults, back-pressure."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from confluent_kafka import Message

from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import free_port
from linewatch.ingest.camera import Camera, run_camera
from linewatch.ingest.metrics import CameraMetrics, serve_metrics
from linewatch.ingest.producer import FrameProducer
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.sources import CapturedFrame, Source, SourceError, SyntheticSource
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import EncodedFrame, decode_frame, encode_frame

Settings = Callable[..., CameraSettings]
ReadTopic = Callable[..., list[Message]]


def headers_of(message: Message) -> dict[str, str]:
    """The record's headers as text."""
    return {name: (value or b"").decode() for name, value in message.headers() or []}


def test_frames_round_trip_byte_exact_with_every_header(camera_settings: Settings, read_topic: ReadTopic) -> None:
    settings = camera_settings()
    ensure_topics(settings.kafka, [settings.topics.frames], 2)
    image = render_sample(3, 48, defect_type="crack").image
    frames = [encode_frame(image, camera_id="cam-1", line_id="line-9", sequence=i, capture_ns=1_700_000_000_000 + i,
                           encoding=enc, label="defect", defect_type="crack", source_id=f"part-{i}.png")
              for i, enc in enumerate(("jpeg", "png", "raw"))]
    metrics = CameraMetrics()
    producer = FrameProducer(settings.kafka, settings.topics.frames, metrics)
    for frame in frames:
        assert producer.send(frame)
    assert producer.flush(15) == 0 and producer.acked == 3 and producer.failed == 0
    records = read_topic(settings.topics.frames, 3)
    assert len(records) == 3
    for sent, got in zip(frames, sorted(records, key=lambda m: int(headers_of(m)["lw-seq"])), strict=True):
        assert got.key() == sent.key and got.value() == sent.value
        assert got.headers() == sent.headers  # every header, same order, same bytes
        meta, decoded = decode_frame(got.value(), got.headers())
        assert meta == sent.meta
        if sent.meta.encoding != "jpeg":
            assert np.array_equal(decoded, image)
    assert metrics.value("linewatch_camera_frames_sent_total", camera="cam-1") == 3
    assert metrics.value("linewatch_camera_bytes_sent_total", camera="cam-1") == sum(len(f.value) for f in frames)


def test_per_camera_order_holds_across_partitions(camera_settings: Settings, read_topic: ReadTopic) -> None:
    cameras = [camera_settings(camera_id=f"cam-{i}", encoding="raw", partitions=4, line_id="line-2")
               for i in range(4)]
    metrics = CameraMetrics()
    sources = [SyntheticSource(size=24, seed=i, count=15, defect_probability=0.5) for i in range(4)]
    threads = [threading.Thread(target=run_camera, args=(s, src), kwargs={"metrics": metrics})
               for s, src in zip(cameras, sources, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    records = read_topic(cameras[0].topics.frames, 60)
    assert len(records) == 60
    by_camera: dict[str, list] = {}
    for record in records:
        by_camera.setdefault(record.key().decode(), []).append(record)
    assert len({r.partition() for r in records}) >= 2  # the cameras really are spread out
    for index, (camera, got) in enumerate(sorted(by_camera.items())):
        assert len({r.partition() for r in got}) == 1  # one camera, one partition
        assert [int(headers_of(r)["lw-seq"]) for r in got] == list(range(15))  # offset order == capture order
        for number, record in enumerate(got):
            meta, image = decode_frame(record.value(), record.headers())
            sample = render_sample(sources[index].sample_seed(number), 24, 0.5)
            assert np.array_equal(image, sample.image) and meta.camera_id == camera
            assert (meta.label, meta.defect_type, meta.line_id) == (sample.label, sample.defect_type, "line-2")


def test_sequence_numbers_continue_after_producer_restart(camera_settings: Settings, read_topic: ReadTopic) -> None:
    settings = camera_settings(partitions=1)
    first = run_camera(settings, "synthetic:?size=24&count=4")
    second = run_camera(settings, "synthetic:?size=24&count=4")  # a new producer, same state folder
    assert (first.first_sequence, first.last_sequence) == (0, 3)
    assert (second.first_sequence, second.last_sequence) == (4, 7)
    records = read_topic(settings.topics.frames, 8)
    assert [int(headers_of(r)["lw-seq"]) for r in records] == list(range(8))


def test_missing_folder_is_retried_until_it_appears(camera_settings: Settings, read_topic: ReadTopic,
                                                   tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    settings = camera_settings()
    result: list = []
    thread = threading.Thread(target=lambda: result.append(run_camera(settings, f"folder:{folder}?glob=*.png")))
    thread.start()
    time.sleep(0.6)
    assert thread.is_alive()  # still retrying, not crashed
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((16, 16, 3), 40 * i, np.uint8))
    thread.join(30)
    stats = result[0]
    assert stats.open_failures >= 2 and stats.captured == 3 and stats.sent == 3
    assert [headers_of(r)["lw-source-id"] for r in read_topic(settings.topics.frames, 3)] == ["0.png", "1.png",
                                                                                               "2.png"]


class FlakySource(Source):
    """Fails to open once, then drops its 'connection' after every 4 frames twice; 12 frames in all."""

    def __init__(self) -> None:
        self.opens, self.next_index, self.since_open = 0, 0, 0

    @property
    def description(self) -> str:
        return "flaky test source"

    def open(self) -> None:
        self.opens += 1
        if self.opens == 1:
            raise SourceError("connection refused")
        self.since_open = 0

    def read(self) -> CapturedFrame | None:
        if self.next_index >= 12:
            return None
        if self.since_open == 4 and self.opens <= 3:
            raise SourceError("stream dropped")
        self.since_open += 1
        self.next_index += 1
        return CapturedFrame(image=np.full((8, 8, 3), self.next_index, np.uint8), source_id=str(self.next_index))


def test_flaky_source_is_reopened_without_losing_frames(camera_settings: Settings, read_topic: ReadTopic) -> None:
    settings = camera_settings(partitions=1, encoding="png")
    source = FlakySource()
    stats = run_camera(settings, source)
    assert (stats.open_failures, stats.reopens, stats.captured, stats.sent) == (1, 2, 12, 12)
    assert [headers_of(r)["lw-source-id"] for r in read_topic(settings.topics.frames, 12)] == \
        [str(i) for i in range(1, 13)]


class GatedProducer(FrameProducer):
    """The real producer, whose first send blocks until the capture thread has captured ``release_after``
    frames: the queue is then certainly full, whatever the machine's speed (no sleeps, no timing)."""

    def __init__(self, *args: Any, metrics: CameraMetrics, camera: str, release_after: int, **kwargs: Any) -> None:
        super().__init__(*args, metrics, **kwargs)
        self.watched, self.camera, self.release_after = metrics, camera, release_after
        self.released = threading.Event()

    def captured(self) -> float:
        return self.watched.value("linewatch_camera_frames_captured_total", camera=self.camera)

    def send(self, frame: EncodedFrame, stop_event: threading.Event | None = None,
             give_up_after_stop_s: float = 30.0) -> bool:
        if not self.released.is_set():
            deadline = time.monotonic() + 60
            while self.captured() < self.release_after:
                assert time.monotonic() < deadline, "the capture thread never filled the queue"
                time.sleep(0.01)  # polling a condition with a deadline, not a timing assumption
            self.released.set()
        return super().send(frame, stop_event, give_up_after_stop_s)


def test_back_pressure_policy_is_visible_in_metrics(camera_settings: Settings, read_topic: ReadTopic) -> None:
    dropping = camera_settings(camera_id="fast-cam", queue_size=2, queue_policy="drop-oldest", partitions=1)
    metrics = CameraMetrics()
    producer = GatedProducer(dropping.kafka, dropping.topics.frames, metrics=metrics, camera="fast-cam",
                             release_after=30)
    stats = run_camera(dropping, SyntheticSource(size=24, count=30), metrics=metrics, producer=producer)
    dropped = metrics.value("linewatch_camera_frames_dropped_total", camera="fast-cam", reason="queue_full")
    # The send blocked until all 30 were captured, so the queue (2) kept only the two newest, plus the frame
    # in the blocked send if the publisher took one before the capture thread finished: 27 or 28 dropped.
    assert stats.captured == 30 and dropped == stats.dropped["queue_full"] == 30 - stats.sent
    assert stats.sent in (2, 3)
    assert metrics.value("linewatch_camera_frames_captured_total", camera="fast-cam") == 30
    assert metrics.value("linewatch_camera_frames_sent_total", camera="fast-cam") == stats.sent
    sent = read_topic(dropping.topics.frames, stats.sent)
    assert [int(headers_of(r)["lw-seq"]) for r in sent] == list(range(stats.sent))
    ids = [int(headers_of(r)["lw-source-id"].split("-")[1]) for r in sent]
    assert ids == sorted(ids) and ids[-2:] == [28, 29]  # the newest frames survive, the oldest were dropped

    blocking = camera_settings(camera_id="blocking-cam", queue_size=2, queue_policy="block")
    producer = GatedProducer(blocking.kafka, blocking.topics.frames, metrics=metrics, camera="blocking-cam",
                             release_after=3)  # 1 in the send, 2 in the queue: the capture now blocks
    stats = run_camera(blocking, SyntheticSource(size=24, count=20), metrics=metrics, producer=producer)
    assert stats.sent == 20 and stats.dropped == {}
    assert metrics.value("linewatch_camera_frames_dropped_total", camera="blocking-cam", reason="queue_full") == 0


class NeverOpens(Source):
    """A source whose server is down: every open fails."""

    @property
    def description(self) -> str:
        return "unreachable test source"

    def open(self) -> None:
        raise SourceError("connection refused")

    def read(self) -> CapturedFrame | None:
        return None


class RecordingCamera(Camera):
    """A camera that records how long each reopen backoff would wait, and stops after ``waits`` of them."""

    def __init__(self, *args: Any, waits: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waited: list[float] = []
        self.waits = waits

    def _sleep(self, seconds: float) -> None:
        self.waited.append(seconds)
        if len(self.waited) >= self.waits:
            self.stop_event.set()


def test_reopen_backoff_has_full_jitter(camera_settings: Settings) -> None:
    """After an outage every camera retried at 0.5, 1, 2, ... s in lockstep; now each waits in [0, ceiling]."""
    settings = camera_settings(camera_id="jitter-cam", reopen_initial_s=1.0, reopen_max_s=4.0)
    camera = RecordingCamera(settings, NeverOpens(), waits=200)
    stats = camera.run()
    ceilings = [min(1.0 * 2**i, 4.0) for i in range(len(camera.waited))]
    assert stats.open_failures == len(camera.waited) == 200
    assert all(0 <= w <= c for w, c in zip(camera.waited, ceilings, strict=True))
    assert len(set(camera.waited)) == 200  # not the same schedule on every camera
    tail = camera.waited[2:]  # ceiling 4 s from the third failure on
    assert sum(tail) / len(tail) < 3.0 and min(tail) < 1.0


def test_size_guard_in_the_camera_loop(camera_settings: Settings, read_topic: ReadTopic) -> None:
    metrics = CameraMetrics()
    resizing = camera_settings(camera_id="big-cam", encoding="png", max_message_bytes=20_000)
    stats = run_camera(resizing, "synthetic:?size=256&count=2", metrics=metrics)
    assert stats.sent == 2
    for record in read_topic(resizing.topics.frames, 2):
        meta, image = decode_frame(record.value(), record.headers())
        assert meta.width < 256 and len(record.value()) < 20_000 and image.shape == (meta.height, meta.width, 3)
    rejecting = camera_settings(camera_id="rej-cam", encoding="png", max_message_bytes=20_000,
                                oversize_policy="reject")
    stats = run_camera(rejecting, "synthetic:?size=256&count=2", metrics=metrics)
    assert stats.sent == 0 and stats.dropped == {"oversize": 2}
    assert metrics.value("linewatch_camera_frames_dropped_total", camera="rej-cam", reason="oversize") == 2


def test_metrics_endpoint_serves_camera_metrics(camera_settings: Settings) -> None:
    metrics = CameraMetrics()
    port = serve_metrics(free_port(), metrics.registry, addr="127.0.0.1")
    run_camera(camera_settings(camera_id="metered"), "synthetic:?size=24&count=3", metrics=metrics, max_frames=2)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'linewatch_camera_frames_captured_total{camera="metered"} 2.0' in body
    assert 'linewatch_camera_frames_sent_total{camera="metered"} 2.0' in body
    assert 'linewatch_camera_encode_seconds_count{camera="metered"} 2.0' in body
    assert "linewatch_camera_bytes_sent_total" in body and "linewatch_camera_delivery_errors_total" in body


def test_loop_restarts_a_recorded_source(camera_settings: Settings, read_topic: ReadTopic, tmp_path: Path) -> None:
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    settings = camera_settings(loop=True, partitions=1)
    stats = run_camera(settings, str(tmp_path / "*.png"), max_frames=5)
    assert stats.sent == 5
    assert [headers_of(r)["lw-source-id"] for r in read_topic(settings.topics.frames, 5)] == \
        ["0.png", "1.png", "0.png", "1.png", "0.png"]
