"""Hostile and malformed records against the real broker and Redis (the detector side).

Each test drives a real detector (consumer group, producer, Redis writer) and fails on the code
before the fix: a record that crash-looped it, a worker death that hung it, a key that silenced a
camera, reordered results, keys without TTL, a public /metrics, heatmap keys that were never written.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from service_helpers import create_topics, produce_frames, read_topic, settings_for, topic_names

from linewatch.common.kafka import CommitGate
from linewatch.deploy.local import start_redis
from linewatch.detector.events import FrameResult
from linewatch.detector.service import DetectorService, DetectorSettings
from linewatch.detector.service.decoding import Record
from linewatch.detector.service.outputs import OutputProducer
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import FrameMeta, encode_frame, meta_to_headers

pytestmark = pytest.mark.integration


def _start(service: DetectorService) -> threading.Thread:
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    return thread


def _stop(service: DetectorService, thread: threading.Thread) -> None:
    service.stop_event.set()
    thread.join(60)
    assert not thread.is_alive(), "the detector did not stop"


def _frame(camera: str, seq: int, size: int = 64, **meta: Any) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of a valid frame; ``meta`` overrides header fields (not checked here)."""
    image = render_sample(seq, size=size).image
    good = encode_frame(image, camera_id="cam-tmp", line_id="line-1", sequence=seq, capture_ns=time.time_ns())
    fields = {**good.meta.__dict__, "camera_id": camera, **meta}
    return camera.encode(errors="surrogateescape"), good.value, meta_to_headers(FrameMeta(**fields))


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None, list | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000, "linger.ms": 5,
                         "enable.idempotence": True})
    for key, value, headers in records:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def _results(messages: list) -> list[FrameResult]:
    return [FrameResult.model_validate_json(m.value()) for m in messages]


def _committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        return int(consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset)
    finally:
        consumer.close()


@pytest.mark.timeout(240)
def test_hostile_records_are_dead_lettered_and_never_stop_the_partition(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Items 1, 4 (wire), 14: the 200,000 x \\x01 camera id that crash-looped the detector, an id with
    ``/``, a key that is not lw-camera (silenced another camera), capture times far in the future, an
    oversized line id: each becomes a dead letter, in one partition, between good frames that all get
    results; the committed offset passes them all."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    now = time.time_ns()
    hostile = {
        "bad_camera_id": [_frame("\x01" * 200_000, 1), _frame("plant1/cam2", 2), _frame("cam 3", 3)],
        "key_mismatch": [(b"other", *_frame("cam-victim", 4)[1:]), (None, *_frame("cam-victim", 5)[1:])],
        "future_capture": [_frame("cam-victim", 6, capture_ns=(1 << 63) - 1),
                           _frame("cam-victim", 7, capture_ns=now + 3_600 * 10**9)],
        "bad_header": [_frame("cam-ok", 8, line_id="L" * 100_000)],
    }
    records, good = [], set()
    for i, record in enumerate(r for rs in hostile.values() for r in rs):
        records.append(record)
        records.append(_frame("cam-good", 100 + i))
        good.add(("cam-good", 100 + i))
    _produce(bootstrap, topics["frames"], records)
    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model))
    thread = _start(service)
    try:
        dead = read_topic(bootstrap, topics["dead_letters"], lambda m: len(m) >= 8, 90)
        results = read_topic(bootstrap, topics["results"],
                             lambda m: {(r.camera_id, r.sequence) for r in _results(m)} >= good, 90)
        assert thread.is_alive(), "the detector stopped on a hostile record"
        deadline = time.monotonic() + 30
        while _committed(bootstrap, f"det-{unique}", topics["frames"]) < len(records):
            assert time.monotonic() < deadline, "the partition's committed offset did not pass the hostile records"
            time.sleep(0.2)
    finally:
        _stop(service, thread)
    classes = sorted(dict(m.headers())["dl-error-class"].decode() for m in dead)
    assert classes == sorted(reason for reason, rs in hostile.items() for _ in rs)
    assert {(r.camera_id, r.sequence) for r in _results(results)} == good  # cam-victim got nothing forged
    assert all(len(m) < 1_000_000 for m in (*dead, *results))
    assert all(len(m.key() or b"") <= 256 for m in dead)


@pytest.mark.timeout(240)
def test_an_output_too_large_to_produce_is_dead_lettered_and_the_partition_goes_on(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Item 1: an output the producer refuses (MSG_SIZE_TOO_LARGE) used to end the detector and every
    restart; now the record is dead-lettered (cut to fit) and later frames of the partition continue."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    long_fields = {"line_id": "L" * 64, "source_id": "s" * 256, "defect_type": "d" * 256}
    records = []
    for seq in range(6):
        records.append(_frame("cam-a", seq, **(long_fields if seq % 2 else {})))
    _produce(bootstrap, topics["frames"], records)
    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model, output_max_bytes=1000))
    thread = _start(service)
    try:
        dead = read_topic(bootstrap, topics["dead_letters"], lambda m: len(m) >= 3, 90)
        results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= 3, 60)
        assert thread.is_alive() and service._outputs is not None and service._outputs.fatal_error is None
    finally:
        _stop(service, thread)
    assert sorted(r.sequence for r in _results(results)) == [0, 2, 4]
    headers = [dict(m.headers()) for m in dead]
    assert sorted(int(h["lw-seq"]) for h in headers) == [1, 3, 5]
    assert all(h["dl-error-class"] == b"output_unproducible" for h in headers)
    assert all(b"too large" in h["dl-error"].lower().replace(b"_", b" ") for h in headers)


class _Crash(BaseException):
    """Not an Exception: nothing in processing catches it, like a bug that kills the worker."""


class _DyingModel:
    """The real tiny model, except that its second batch kills the worker thread."""

    def __init__(self, path: Path) -> None:
        from linewatch.detector.model.inference import AnomalyModel

        self._model = AnomalyModel.load(path, device="cpu")
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls >= 2:
            raise _Crash("worker killed by the test")
        return self._model.predict(*args, **kwargs)


@pytest.mark.timeout(180)
def test_a_dead_worker_ends_the_detector_promptly_and_fails_both_probes(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Item 2: under load the consumer thread blocked forever on the work queue once the worker had
    died, /readyz still said ok and SIGTERM was ignored. Now ``run`` raises within seconds
    (``linewatch detect`` then exits 1) and both probes answer 503 before that."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=40)  # far more than one batch: load
    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model, max_batch_size=2),
                              model=_DyingModel(tiny_model))
    probes: list[tuple[int, int]] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as exc:  # the test inspects it
            error.append(exc)

    def watch() -> None:  # what an orchestrator sees while the detector fails
        while thread.is_alive():
            port = service.health_port
            if port is not None and service.health.failure is not None:
                try:
                    probes.append((httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code,
                                   httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code))
                except httpx.HTTPError:
                    return  # server stopped: the process is on its way out
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    thread.join(60)
    alive = thread.is_alive()
    if alive:
        service.stop_event.set()  # the old code ignores this too
        thread.join(10)
    assert not alive, "the detector hung after its worker died"
    assert error and isinstance(error[0], RuntimeError) and "worker" in str(error[0])
    assert service.health.healthy()[0] is False and service.health.ready()[0] is False
    assert all(p == (503, 503) for p in probes)


class _BrokenOutputModel(_DyingModel):
    """The real model, but cam-poison's frames come back with a 1-D map: building their result raises."""

    def predict(self, frames: Any, *args: Any, **kwargs: Any) -> Any:
        prediction = self._model.predict(frames, *args, **kwargs)
        if self.poisoned:
            maps = np.zeros((len(prediction.maps), 7), np.float32)
            prediction = dataclasses.replace(prediction, maps=maps, anomalous=np.ones(len(maps), bool))
        return prediction

    poisoned = False


@pytest.mark.timeout(240)
def test_a_record_that_breaks_processing_is_dead_lettered_not_a_crash_loop(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Item 1 ("never let one record stop a partition"): an exception while building a batch's
    outputs killed the worker, and every restart died on the same record. Now the batch's frames
    without outputs are dead-lettered (processing_error) and the partition goes on."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    model = _BrokenOutputModel(tiny_model)
    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model, max_batch_size=4),
                              model=model)
    thread = _start(service)
    try:
        assert service.ready_event.wait(60)
        model.poisoned = True
        _produce(bootstrap, topics["frames"], [_frame("cam-poison", seq) for seq in range(3)])
        dead = read_topic(bootstrap, topics["dead_letters"], lambda m: len(m) >= 3, 90)
        model.poisoned = False
        _produce(bootstrap, topics["frames"], [_frame("cam-ok", seq) for seq in range(3)])
        results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= 3, 90)
        assert thread.is_alive(), "the detector died on the poisoned batch"
    finally:
        _stop(service, thread)
    assert {dict(m.headers())["dl-error-class"] for m in dead} == {b"processing_error"}
    assert sorted((r.camera_id, r.sequence) for r in _results(results)) == [("cam-ok", s) for s in range(3)]


@pytest.mark.timeout(120)
def test_a_late_ack_after_a_lost_partition_is_a_no_op_and_add_output_does_not_raise(bootstrap: str,
                                                                                   unique: str) -> None:
    """Item 6: with real deliveries, an output of the old assignment acknowledged after the partition
    was lost and re-assigned made the re-read offset committable early; add_output after on_lost
    raised KeyError. Now acks carry the assignment generation."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    tracker = CommitGate()
    tp = (topics["frames"], 0)
    outputs = OutputProducer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 50},
                             tracker, results_topic=topics["results"], breaches_topic=topics["breaches"],
                             dead_letters_topic=topics["dead_letters"])
    old = [Record(tp[0], 0, offset, b"cam-a", b"x", None, 0, 0, tracker.track(tp, offset)) for offset in (100, 101)]
    result = FrameResult.model_validate_json(
        '{"camera_id": "cam-a", "line_id": "l", "sequence": 1, "capture_ns": 1, "image_score": 0.1,'
        '"normalised_score": 0.1, "anomalous": false, "threshold": 1.0, "model_version": "v", "heatmap_key": null,'
        '"latency": {"queue_ms": 0, "decode_ms": 0, "inference_ms": 0, "end_to_end_ms": 0}}')
    outputs.begin_batch(old)
    outputs.result(result, old[0])
    outputs.result(result, old[1])
    outputs.end_batch()  # produced, not yet acknowledged (linger 50 ms)
    tracker.forget([tp])  # on_lost
    new = [Record(tp[0], 0, offset, b"cam-a", b"x", None, 0, 0, tracker.track(tp, offset)) for offset in (100, 101)]
    assert new[0].generation != old[0].generation
    outputs.result(result, old[1])  # a late output of the lost generation: no KeyError
    assert outputs.flush(30) == 0  # every old delivery acknowledged by the real broker
    assert tracker.take_ready() == {}, "a stale ack made the new assignment's offsets committable"
    outputs.begin_batch(new)
    outputs.result(result, new[0])
    outputs.result(result, new[1])
    outputs.end_batch()
    assert outputs.flush(30) == 0
    assert tracker.take_ready() == {tp: 102}


@pytest.mark.timeout(240)
def test_results_keep_record_order_per_camera_when_frame_sizes_alternate(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Item 7: one camera alternating 64 px and 96 px frames came out 1,3,5,7,2,4,6,8 (grouped by size)."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    _produce(bootstrap, topics["frames"], [_frame("cam-a", seq, size=64 if seq % 2 else 96) for seq in range(1, 33)])
    service = DetectorService(settings_for(bootstrap, redis_url, topics, unique, tiny_model, max_batch_size=8,
                                           max_wait_ms=500))
    thread = _start(service)
    try:
        results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= 32, 90)
    finally:
        _stop(service, thread)
    assert [r.sequence for r in _results(results)] == list(range(1, 33))


@pytest.mark.timeout(240)
def test_every_key_the_detector_writes_expires_and_the_allow_list_keeps_other_cameras_out(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path) -> None:
    """Item 9: latest, recent and the cameras set had no TTL (500 new ids: 1,500 keys without TTL);
    with an allow-list, frames of other cameras are dead-lettered and write no key."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    sent = produce_frames(bootstrap, topics["frames"], cameras=3, per_camera=4)  # cam-0, cam-1, cam-2
    settings = settings_for(bootstrap, redis_url, topics, unique, tiny_model, camera_allow_list=["cam-0", "cam-1"],
                            camera_key_ttl_s=90)
    service = DetectorService(settings)
    thread = _start(service)
    client = redis.Redis.from_url(redis_url)
    prefix = settings.redis.key_prefix
    try:
        read_topic(bootstrap, topics["results"], lambda m: len(m) >= 8, 90)
        dead = read_topic(bootstrap, topics["dead_letters"], lambda m: len(m) >= 4, 60)
        deadline = time.monotonic() + 30
        while client.exists(f"{prefix}:cam:cam-1:latest", f"{prefix}:cam:cam-0:latest") != 2:
            assert time.monotonic() < deadline, "heatmaps were not written"
            time.sleep(0.1)
    finally:
        _stop(service, thread)
    keys = list(client.scan_iter(f"{prefix}:*"))
    try:
        assert {f"{prefix}:cam:cam-0:latest", f"{prefix}:cam:cam-0:recent", f"{prefix}:cameras"} <= \
            {k.decode() for k in keys}
        no_ttl = [k for k in keys if client.ttl(k) < 0]
        assert no_ttl == [], f"keys without TTL: {no_ttl}"
        assert all(client.ttl(k) <= 300 for k in keys)
        assert {m.decode() for m in client.smembers(f"{prefix}:cameras")} == {"cam-0", "cam-1"}
        assert not [k for k in keys if b"cam-2" in k]
        assert {dict(m.headers())["dl-error-class"] for m in dead} == {b"camera_not_allowed"}
        assert len(dead) == sum(1 for cam, _ in sent if cam == "cam-2")
    finally:
        if keys:
            client.delete(*keys)


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.timeout(180)
def test_metrics_listen_on_loopback_by_default(bootstrap: str, redis_url: str, unique: str,
                                               tiny_model: Path) -> None:
    """Item 12: /metrics (no auth) listened on 0.0.0.0 by default; now on 127.0.0.1 unless configured."""
    assert DetectorSettings().metrics_host == "127.0.0.1"
    address = _outward_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine to probe from")
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    settings = settings_for(bootstrap, redis_url, topics, unique, tiny_model)
    settings.metrics_host = DetectorSettings().metrics_host  # the default, not the helper's explicit value
    service = DetectorService(settings)
    thread = _start(service)
    try:
        assert service.ready_event.wait(60)
        port = service.health_port
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://{address}:{port}/metrics", timeout=5)
    finally:
        _stop(service, thread)


@pytest.mark.timeout(300)
def test_results_announce_only_heatmaps_that_are_written_across_a_redis_stall(
        bootstrap: str, unique: str, tiny_model: Path, tmp_path: Path) -> None:
    """Item 16: during a Redis stall (server frozen with SIGSTOP), results carried a heatmap_key that
    was never written. Now every announced key is in Redis once it answers again, and results whose
    write was skipped during the stall carry none."""
    topics = topic_names(unique)
    create_topics(bootstrap, topics, partitions=1)
    server = start_redis(tmp_path)
    url = f"redis://127.0.0.1:{server.port}/0"
    service = DetectorService(settings_for(bootstrap, url, topics, unique, tiny_model, heatmap_stall_s=0.3,
                                           cache_queue_batches=2, max_batch_size=2, heatmaps_per_camera=500))
    thread = _start(service)
    client = redis.Redis.from_url(url, socket_timeout=5)
    pid = server.proc.pid
    try:
        sent = produce_frames(bootstrap, topics["frames"], cameras=1, per_camera=4)
        read_topic(bootstrap, topics["results"], lambda m: len(m) >= 4, 90)
        os.kill(pid, signal.SIGSTOP)
        try:
            sent |= produce_frames(bootstrap, topics["frames"], cameras=1, per_camera=30, first_sequence=4)
            results = read_topic(bootstrap, topics["results"], lambda m: len(m) >= len(sent), 90)
        finally:
            os.kill(pid, signal.SIGCONT)
        parsed = _results(results)
        announced = [r.heatmap_key for r in parsed if r.heatmap_key is not None]
        deadline = time.monotonic() + 60
        while not all(client.exists(k) for k in announced):
            assert time.monotonic() < deadline, \
                f"announced but never written: {[k for k in announced if not client.exists(k)]}"
            time.sleep(0.2)
    finally:
        _stop(service, thread)
        server.stop()
    assert any(r.heatmap_key is None for r in parsed if r.sequence >= 4), "no write was skipped during the stall"


class _RecordingRandom(random.Random):
    """Records the bounds of every ``uniform`` draw and returns its lower bound (retry at once)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return a


@pytest.mark.timeout(60)
def test_heatmap_writer_retries_with_full_jitter(tmp_path: Path) -> None:
    """Full jitter: every retry waits a uniform draw in [0, backoff] (backoff doubling to its cap), not
    the bare exponential sequence that made every detector reconnect in lockstep."""
    from linewatch.common.redis_settings import RedisSettings
    from linewatch.deploy.local import free_port
    from linewatch.detector.service.heatmap_cache import HeatmapCache, HeatmapEntry
    from linewatch.detector.service.metrics import DetectorMetrics

    rng = _RecordingRandom()
    settings = RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=0.5)  # nothing listens
    cache = HeatmapCache(settings, DetectorMetrics(), per_camera=4, ttl_s=60, breach_ttl_s=60,
                         backoff_initial_s=0.01, backoff_max_s=0.04, rng=rng).start()
    try:
        cache.submit([HeatmapEntry("cam", "L", 1, 0, 0.1, 0.1, False, np.zeros((8, 8), np.float32),
                                   np.zeros((8, 8, 3), np.uint8))])
        deadline = time.monotonic() + 30
        while len(rng.bounds) < 4:
            assert time.monotonic() < deadline, "the writer did not retry"
            time.sleep(0.05)
    finally:
        cache.close()
    assert rng.bounds[:4] == [(0, 0.01), (0, 0.02), (0, 0.04), (0, 0.04)]
    assert cache.available is False and cache.key_for("cam", 2) is None
