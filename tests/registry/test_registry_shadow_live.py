"""Live shadow on the real broker: a candidate scores frames as they arrive, beside the active version, and the
line's topics and consumer groups are untouched."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from registry_helpers import create_topics, produce_frames, topic_names

from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.shadow import ShadowError, ShadowOptions, write_report
from linewatch.detector.registry.shadow_live import LiveOptions, LiveShadowRun, RateBudget
from linewatch.detector.registry.store import FolderStore


def _records(bootstrap: str, topic: str, count: int, timeout_s: float = 30.0) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{time.time_ns()}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list = []
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                found.append(msg)
        return found
    finally:
        consumer.close()


@pytest.mark.integration
def test_live_shadow_scores_new_frames_with_both_models_and_writes_only_its_own_topic(
        bootstrap: str, unique: str, tmp_path: Path, model_a: Path, model_b: Path) -> None:
    topics = {**topic_names(unique), "breaches": f"breaches-{unique}"}
    create_topics(bootstrap, list(topics.values()))
    registry = Registry(Database(f"sqlite:///{tmp_path / 'registry.db'}"), FolderStore(tmp_path / "store"))
    active = registry.register(model_a, product="bracket").version
    candidate = registry.register(model_b, product="bracket").version
    registry.promote(active, product="bracket")
    now = time.time_ns()
    before = produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=2, capture_ns=[now, now])  # not seen
    settings = RegistrySettings(kafka={"bootstrap_servers": bootstrap}, topics=topics)  # type: ignore[arg-type]
    shadow_topic = f"results-shadow-{unique}"
    run = LiveShadowRun(settings, registry, ShadowOptions(candidate=candidate, product="bracket", since_ns=now,
                                                          batch_size=4),
                        LiveOptions(max_frames=6, duration_s=120, results_topic=shadow_topic))
    reports: list = []
    watcher = threading.Thread(target=lambda: reports.append(run.run()), daemon=True)
    watcher.start()
    assert run.ready.wait(60), "the live shadow never joined the frames topic"
    produce_frames(bootstrap, topics["frames"], cameras=1, per_camera=2, capture_ns=[now, now], seed=3,
                   first_sequence=50, extra_headers=[("lw-product", b"gear")])  # another product: skipped
    frames = produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=3, seed=1, first_sequence=10,
                            capture_ns=[now + i for i in range(3)])
    watcher.join(120)
    assert not watcher.is_alive() and reports, "the live shadow did not stop after its frame count"
    report = reports[0]

    scored = [(r["camera_id"], r["sequence"]) for r in report["top_disagreements"]]
    assert report["frames_scored"] == 6 and report["frames_skipped"] == {"other_product": 2}, (report, scored)
    assert report["versions"]["candidate"]["version"] == candidate and report["window"]["live"] is True
    rows = {(json.loads(m.value())["camera_id"], json.loads(m.value())["sequence"]): json.loads(m.value())
            for m in _records(bootstrap, shadow_topic, 6)}
    assert set(rows) == {(f.camera_id, f.sequence) for f in frames}, "frames from before the start are not watched"
    assert not {(f.camera_id, f.sequence) for f in before} & set(rows)
    for role, path in (("candidate", model_b), ("active", model_a)):  # both models really scored each frame
        scores = AnomalyModel.load(path, "cpu").predict([f.image for f in frames]).image_scores
        got = [rows[(f.camera_id, f.sequence)][role]["score"] for f in frames]
        np.testing.assert_allclose(got, scores, rtol=1e-3, atol=1e-5, err_msg=role)
    assert all(r["candidate_version"] == candidate and r["active_version"] == active for r in rows.values())

    # Nothing the line reads was written, and no offsets were committed for the line's or the shadow's group.
    assert _records(bootstrap, topics["results"], 1, timeout_s=2) == []
    assert _records(bootstrap, topics["breaches"], 1, timeout_s=2) == []
    groups = AdminClient({"bootstrap.servers": bootstrap}).list_consumer_groups().result(15).valid
    shadow_groups = [g.group_id for g in groups if "live" in g.group_id and candidate in g.group_id]
    for group in shadow_groups:
        committed = Consumer({"bootstrap.servers": bootstrap, "group.id": group}).committed(
            [TopicPartition(topics["frames"], p) for p in range(2)], timeout=10)
        assert all(tp.offset < 0 for tp in committed), committed

    json_path, html_path = write_report(report, tmp_path / "report")
    assert json.loads(json_path.read_text())["frames_scored"] == 6 and "live" in html_path.read_text().lower()


@pytest.mark.integration
def test_the_shadow_refuses_to_write_to_a_topic_the_line_reads(bootstrap: str, unique: str, tmp_path: Path,
                                                               model_a: Path, model_b: Path) -> None:
    topics = topic_names(unique)
    registry = Registry(Database(f"sqlite:///{tmp_path / 'registry.db'}"), FolderStore(tmp_path / "store"))
    registry.promote(registry.register(model_a, product="bracket").version, product="bracket")
    candidate = registry.register(model_b, product="bracket").version
    settings = RegistrySettings(kafka={"bootstrap_servers": bootstrap}, topics=topics)  # type: ignore[arg-type]
    with pytest.raises(ShadowError, match="the line reads"):
        LiveShadowRun(settings, registry, ShadowOptions(candidate=candidate, product="bracket", since_ns=0),
                      LiveOptions(results_topic=topics["results"]))


@pytest.mark.unit
def test_the_rate_budget_allows_rate_frames_a_second_and_bursts_of_one_second_at_most() -> None:
    now = [0.0]
    budget = RateBudget(4.0, clock=lambda: now[0])
    assert [budget.take() for _ in range(3)] == [True, False, False]  # one token to start
    now[0] = 1.0
    assert sum(budget.take() for _ in range(10)) == 4
    now[0] = 100.0  # a quiet spell earns one second's burst, not a hundred
    assert sum(budget.take() for _ in range(100)) == 4
    assert all(RateBudget(0.0, clock=lambda: 0.0).take() for _ in range(50))  # 0: unlimited
