"""End to end: a line making two products, a promotion mid-stream, on the real broker, Redis and PostgreSQL.

A real detector service follows the registry (PostgreSQL). Cameras send frames with ``lw-product``:
cam-0 makes brackets, cam-1 gears, cam-2 changes over from brackets to gears mid-stream, cam-3 a
product nobody assigned a model to. While the first frames are in flight, a new bracket version is
promoted. Every frame must be scored exactly once, by the version assigned at its time (checked
against the scores each model gives the same image, so a mislabelled result fails), hinge frames
must be dead-lettered, and the audit table must name the model of every frame.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from registry_helpers import create_topics, delete_test_keys

from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.registry.audit import AuditConsumer, explain
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.store import FolderStore
from linewatch.detector.service import DetectorService
from linewatch.detector.service.settings import DetectorSettings
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = pytest.mark.integration

PER_PHASE = 6  # frames per camera before and after the promotion
CHANGEOVER = 3  # cam-2 makes brackets below this sequence, gears from it on (each phase)


def _product(camera: int, sequence: int) -> str:
    if camera == 2:  # the changeover, in each phase
        return "bracket" if sequence % PER_PHASE < CHANGEOVER else "gear"
    return {0: "bracket", 1: "gear", 3: "hinge"}[camera]


def _produce(bootstrap: str, topic: str, sequences: range, images: dict[tuple[str, int], np.ndarray],
             cameras: int = 3) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for seq in sequences:
        for cam in range(cameras):
            image = render_sample(seq * 31 + cam, size=64).image
            frame = encode_frame(image, camera_id=f"cam-{cam}", line_id="line-1", sequence=seq,
                                 capture_ns=time.time_ns(), encoding="png", product=_product(cam, seq))
            producer.produce(topic, key=frame.key, value=frame.value, headers=frame.headers)
            images[(f"cam-{cam}", seq)] = image
    assert producer.flush(30) == 0


def _read(bootstrap: str, topic: str, done: Callable[[list], bool], timeout_s: float = 120.0) -> list:
    """Every record of ``topic`` until ``done`` says so; partitions assigned, not a group joined (a join waits)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while not done(messages) and time.monotonic() < deadline:
            messages.extend(m for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return messages


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.05)


def _settings(bootstrap: str, redis_url: str, topics: dict[str, str], unique: str, postgres_url: str,
              store: Path, fallback_model: Path) -> DetectorSettings:
    return DetectorSettings(
        kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": f"lwt-{unique}", "socket_timeout_s": 0.5},  # type: ignore[arg-type]
        registry={"database_url": postgres_url, "model_store": store},  # type: ignore[arg-type]
        routing={"poll_s": 0.2, "line": "line-1"},  # type: ignore[arg-type]
        model=fallback_model, device="cpu", backend="torch", group_id=f"det-{unique}", session_timeout_ms=6000,
        metrics_port=None, max_batch_size=4, max_wait_ms=30, torch_threads=1, statistics_interval_ms=0,
        heatmap_ttl_s=60, breach_ttl_s=120, camera_key_ttl_s=120)


@pytest.fixture
def topics(bootstrap: str, unique: str) -> dict[str, str]:
    names = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters", "alerts")}
    create_topics(bootstrap, [names["frames"]], partitions=2)
    create_topics(bootstrap, [n for r, n in names.items() if r != "frames"], partitions=1)
    return names


def test_two_products_a_promotion_mid_stream_every_frame_once_by_its_assigned_version_and_audited(
        bootstrap: str, redis_url: str, unique: str, topics: dict[str, str], postgres_url: str,
        pg_database: Database, tmp_path: Path, model_a: Path, model_b: Path, model_c: Path) -> None:
    registry = Registry(pg_database, FolderStore(tmp_path / "store"))
    a = registry.register(model_a, product="bracket", notes="first bracket model").version
    b = registry.register(model_b, product="gear").version
    c = registry.register(model_c, product="bracket", notes="retrained on feedback").version
    registry.promote(a, product="bracket", by="qe")
    registry.promote(b, product="gear", by="qe")

    service = DetectorService(_settings(bootstrap, redis_url, topics, unique, postgres_url, tmp_path / "store",
                                        model_a))
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    images: dict[tuple[str, int], np.ndarray] = {}
    try:
        assert service.ready_event.wait(60), "detector never joined its group"
        _produce(bootstrap, topics["frames"], range(PER_PHASE), images, cameras=4)
        first = _read(bootstrap, topics["results"], lambda m: any(b'"cam-0"' in x.value() for x in m))
        assert first, "no bracket frame was scored before the promotion"
        promoted_ns = time.time_ns()
        registry.promote(c, product="bracket", line="line-1", by="qe", note="mid-stream")  # frames still in flight
        _wait_for(lambda: service.router.versions().get("bracket") == c, 60, "the switch to the promoted version")
        switched_ns = time.time_ns()
        _produce(bootstrap, topics["frames"], range(PER_PHASE, 2 * PER_PHASE), images, cameras=3)
        expected = {key for key in images if key[0] != "cam-3"}
        results = _read(bootstrap, topics["results"], lambda m: len(m) >= len(expected))
        dead = _read(bootstrap, topics["dead_letters"], lambda m: len(m) >= PER_PHASE)
        swaps = service.metrics.registry.get_sample_value("linewatch_detector_model_swaps_total",
                                                          {"product": "bracket"})
    finally:
        service.stop_event.set()
        thread.join(60)
        delete_test_keys(redis_url, f"lwt-{unique}")
    assert not thread.is_alive()

    parsed = [json.loads(m.value()) for m in results]
    scored = [(r["camera_id"], r["sequence"]) for r in parsed]
    assert len(scored) == len(set(scored)) == len(expected) and set(scored) == expected, "each frame exactly once"
    assert swaps == 1.0

    # The version each frame was scored by: gears B; brackets A until the switch, C after it.
    by_frame = {(r["camera_id"], r["sequence"]): r for r in parsed}
    for (camera, seq), r in by_frame.items():
        product = _product(int(camera[-1]), seq)
        if product == "gear":
            assert r["model_version"] == b, (camera, seq)
        elif seq >= PER_PHASE:
            assert r["model_version"] == c, (camera, seq)
        else:
            assert r["model_version"] in (a, c), (camera, seq)
            assert r["processed_ns"] >= promoted_ns if r["model_version"] == c else r["processed_ns"] <= switched_ns
    for camera in ("cam-0", "cam-2"):  # one switch per camera stream, never back
        versions = [by_frame[(camera, s)]["model_version"] for s in range(2 * PER_PHASE)
                    if _product(int(camera[-1]), s) == "bracket"]
        assert versions == sorted(versions, key=lambda v: v == c), versions
    assert any(r["model_version"] == a for r in parsed) and any(r["model_version"] == c for r in parsed)

    # The versions are not just labels: each result's score is what that model gives the frame.
    models = {v: AnomalyModel.load(p, "cpu") for v, p in ((a, model_a), (b, model_b), (c, model_c))}
    for version, model in models.items():
        keys = [k for k, r in by_frame.items() if r["model_version"] == version]
        scores = model.predict([images[k] for k in keys]).image_scores
        got = np.array([by_frame[k]["image_score"] for k in keys])
        np.testing.assert_allclose(got, scores, rtol=1e-3, atol=1e-5, err_msg=f"scores of version {version}")

    # A product without an assigned model: dead-lettered with that reason, never silently dropped.
    reasons = [dict(m.headers())["dl-error-class"].decode() for m in dead]
    assert reasons == ["no_model_for_product"] * PER_PHASE

    # The audit trail answers "which model judged part X and why" for every frame of the test.
    settings = RegistrySettings(kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
                                registry={"database_url": postgres_url,  # type: ignore[arg-type]
                                          "audit_group_id": f"audit-{unique}"})
    AuditConsumer(settings, pg_database).run(threading.Event(), until_end=True)
    for (camera, seq), r in by_frame.items():
        rows = explain(pg_database, camera, seq)
        assert len(rows) == 1, (camera, seq, rows)
        row = rows[0]
        assert row["model_version"] == r["model_version"] and row["product"] == _product(int(camera[-1]), seq)
        assert row["model"]["product"] == row["product"] and row["model"]["calibration"]
        assert row["image_threshold"] == pytest.approx(r["threshold"])
        assert row["image_score"] == pytest.approx(r["image_score"]) and row["anomalous"] == r["anomalous"]
