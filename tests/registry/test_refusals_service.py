"""A real detector service refuses a damaged promotion: /metrics shows it, Redis holds the page's record, and
every frame is still scored by the previous model; a rollback clears both (needs the service wiring)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer
from registry_helpers import create_topics, produce_frames

from linewatch.common import cache_keys as ck
from linewatch.deploy.local import free_port
from linewatch.detector.model.checkpoint import file_sha256
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.store import FolderStore
from linewatch.detector.service import DetectorService
from linewatch.detector.service.settings import DetectorSettings

pytestmark = pytest.mark.integration


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def read_results(bootstrap: str, topic: str, count: int) -> list[dict[str, Any]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    try:
        while len(found) < count and time.monotonic() < deadline:
            found.extend(json.loads(m.value()) for m in consumer.consume(100, timeout=0.5) if m.error() is None)
    finally:
        consumer.close()
    return found


def test_the_detector_service_shows_a_refusal_and_keeps_scoring_with_the_previous_model(
        bootstrap: str, redis_url: str, unique: str, tmp_path: Path, model_a: Path, model_b: Path) -> None:
    import redis

    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    registry = Registry(db, FolderStore(tmp_path / "store"))
    a = registry.register(model_a, product="bracket").version
    b = registry.register(model_b, product="bracket").version
    shutil.copytree(tmp_path / "store", tmp_path / "detector-store")
    FolderStore(tmp_path / "detector-store").path_for(file_sha256(model_b)).write_bytes(b"\0" * 100)
    registry.promote(a, product="bracket")
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters", "alerts")}
    create_topics(bootstrap, list(topics.values()), partitions=1)
    prefix, port = f"lwt-{unique}", free_port()
    settings = DetectorSettings(
        kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": prefix},  # type: ignore[arg-type]
        registry={"database_url": f"sqlite:///{tmp_path / 'registry.db'}",  # type: ignore[arg-type]
                  "model_store": tmp_path / "detector-store"},
        routing={"poll_s": 0.2, "default_product": "bracket"},  # type: ignore[arg-type]
        model=model_a, device="cpu", backend="torch", group_id=f"det-{unique}", session_timeout_ms=6000,
        metrics_host="127.0.0.1", metrics_port=port, max_batch_size=4, max_wait_ms=30, torch_threads=1,
        statistics_interval_ms=0)
    service = DetectorService(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    client = redis.Redis.from_url(redis_url)
    refused = f'linewatch_detector_model_refused{{product="bracket",reason="model_file",version="{b}"}} 1.0'

    def scrape() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    try:
        assert service.ready_event.wait(60), "detector never joined its group"
        registry.promote(b, product="bracket")
        wait_for(lambda: refused in scrape(), "the refusal on /metrics")
        key = ck.model_refusal_key(prefix, "bracket", "")
        record = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        assert (record["version"], record["reason"], record["running_version"]) == (b, "model_file", a)
        capture = [time.time_ns() + i for i in range(4)]
        produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=4, capture_ns=capture)
        results = read_results(bootstrap, topics["results"], 8)
        assert len(results) == 8 and {r["model_version"] for r in results} == {a}, "the previous model scores"
        registry.rollback(product="bracket")
        wait_for(lambda: "linewatch_detector_model_refused{" not in scrape(), "the refusal cleared on /metrics")
        wait_for(lambda: not client.exists(key), "the record cleared")
    finally:
        service.stop_event.set()
        thread.join(60)
        db.close()
    assert not thread.is_alive()
