"""Audit trail and operator feedback on the real broker and a real PostgreSQL database.

Frames go to a real topic, a minimal scorer publishes one result per frame, `AuditConsumer` writes the
audit table; the operator routes (mounted on a bare FastAPI app here) read it and record feedback;
the feedback export reads the frames back from the topic into a training folder.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from confluent_kafka import Producer
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient
from registry_helpers import create_topics, produce_frames, read_frame, score_and_publish, topic_names

from linewatch.alerts.audit_routes import router
from linewatch.alerts.rules import Alert, AlertEvent
from linewatch.alerts.settings import RuleConfig
from linewatch.common import cache_keys
from linewatch.common.images import list_test, list_train_good
from linewatch.deploy.cli import main
from linewatch.detector.registry.audit import AuditConsumer, explain, export_csv, query_audit
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.feedback import FrameFetcher, export_feedback
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.store import FolderStore

pytestmark = pytest.mark.integration

CAMERAS, PER_CAMERA = 2, 6
TOKEN = "test-token"


def _identity(request: Request) -> str:
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        raise HTTPException(401, "missing or wrong bearer token")
    return "operator-olga"


def _settings(bootstrap: str, postgres_url: str, topics: dict[str, str], unique: str) -> RegistrySettings:
    return RegistrySettings(kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
                            registry={"database_url": postgres_url, "audit_group_id": f"audit-{unique}"})


def _alert_event(camera: str, start: int, end: int | None) -> bytes:
    alert = Alert(alert_id=f"{camera}-alert-1", line_id="line-1", camera_id=camera,
                  state="firing" if end is None else "resolved", severity="major", start_ns=1, end_ns=None,
                  start_sequence=start, end_sequence=end, peak_score=0.9, frame_count=2, worst_sequence=start,
                  worst_heatmap_key=None, rule=RuleConfig())
    return AlertEvent(kind=alert.state, alert=alert).model_dump_json().encode()


@pytest.fixture
def line(bootstrap: str, unique: str, pg_database: Database, model_a: Path, tmp_path: Path) -> dict:
    """A product's frames on a real topic, scored by a registered model, audited into PostgreSQL."""
    topics = topic_names(unique)
    create_topics(bootstrap, list(topics.values()))
    registry = Registry(pg_database, FolderStore(tmp_path / "store"))
    version = registry.register(model_a, product="bracket").version
    now = time.time_ns()
    capture = [now - (PER_CAMERA - i) * 60 * 10**9 for i in range(PER_CAMERA)]  # one frame a minute
    frames = produce_frames(bootstrap, topics["frames"], cameras=CAMERAS, per_camera=PER_CAMERA, capture_ns=capture)
    results = score_and_publish(bootstrap, frames, topics["results"], model_a)
    settings = _settings(bootstrap, pg_database.url, topics, unique)
    return {"topics": topics, "frames": frames, "results": results, "version": version, "settings": settings,
            "capture": capture}


def _audit(settings: RegistrySettings, db: Database, group: str | None = None) -> AuditConsumer:
    consumer = AuditConsumer(settings, db, group_id=group)
    consumer.run(threading.Event(), until_end=True)
    return consumer


def test_every_frame_is_audited_once_with_its_model_thresholds_and_alert(line: dict, pg_database: Database,
                                                                         bootstrap: str) -> None:
    anomalous = [r for r in line["results"] if r.anomalous and r.camera_id == "cam-0"]
    span_end = max(r.sequence for r in anomalous) if anomalous else 0
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(line["topics"]["alerts"], key=b"cam-0", value=_alert_event("cam-0", 0, span_end))
    producer.produce(line["topics"]["alerts"], key=b"cam-0", value=b"{not an alert")
    assert producer.flush(15) == 0

    first = _audit(line["settings"], pg_database)
    assert first.written == CAMERAS * PER_CAMERA and first.skipped == 1
    rows = query_audit(pg_database, limit=None)
    by_frame = {(r["camera_id"], r["sequence"]): r for r in rows}
    assert len(rows) == len(by_frame) == CAMERAS * PER_CAMERA
    for result in line["results"]:
        row = by_frame[(result.camera_id, result.sequence)]
        assert row["model_version"] == line["version"] and row["product"] == "bracket"
        assert row["image_threshold"] == pytest.approx(result.threshold) and row["pixel_threshold"] is not None
        assert row["image_score"] == pytest.approx(result.image_score) and row["anomalous"] == result.anomalous
        assert (row["frame_partition"], row["frame_offset"]) == (result.partition, result.offset)
        expected_alert = "cam-0-alert-1" if result.camera_id == "cam-0" and result.anomalous else None
        assert row["alert_id"] == expected_alert

    # a second reader of the same results (a restart that lost its offsets) writes no duplicate
    again = _audit(line["settings"], pg_database, group=f"{line['settings'].registry.audit_group_id}-again")
    assert again.written == 0 and len(query_audit(pg_database, limit=None)) == CAMERAS * PER_CAMERA

    why = explain(pg_database, "cam-1", 3)
    assert len(why) == 1 and why[0]["model"]["calibration"]["image_threshold"] == pytest.approx(
        why[0]["image_threshold"])


def test_alert_arriving_after_its_frames_still_names_them(line: dict, pg_database: Database,
                                                          bootstrap: str) -> None:
    _audit(line["settings"], pg_database)
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(line["topics"]["alerts"], key=b"cam-1", value=_alert_event("cam-1", 2, None))
    assert producer.flush(15) == 0
    _audit(line["settings"], pg_database)
    rows = query_audit(pg_database, camera="cam-1", limit=None)
    assert [r["alert_id"] for r in rows] == [
        "cam-1-alert-1" if r["anomalous"] and r["sequence"] >= 2 else None for r in rows]


def test_api_and_csv_filter_by_camera_and_time(line: dict, pg_database: Database) -> None:
    _audit(line["settings"], pg_database)
    app = FastAPI()
    app.include_router(router(_identity, database=pg_database))
    client = TestClient(app)
    assert client.get("/api/audit").status_code == 401
    since = line["capture"][3]
    got = client.get("/api/audit", params={"camera": "cam-0", "since": str(since)},
                     headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 200
    assert [(r["camera_id"], r["sequence"]) for r in got.json()] == [("cam-0", s) for s in range(3, PER_CAMERA)]
    recent = client.get("/api/audit", params={"since": "150s"}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert {r["sequence"] for r in recent.json()} == {4, 5}
    assert client.get("/api/audit", params={"since": "yesterday"},
                      headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 422
    out = io.StringIO()
    assert export_csv(pg_database, out, camera="cam-1") == PER_CAMERA
    parsed = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [int(r["sequence"]) for r in parsed] == list(range(PER_CAMERA))
    assert {r["model_version"] for r in parsed} == {line["version"]} and parsed[0]["capture_time"].endswith("+00:00")


def test_audit_cli_backfills_exports_and_explains(line: dict, pg_database: Database, bootstrap: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_TOPICS__RESULTS", line["topics"]["results"])
    monkeypatch.setenv("LINEWATCH_TOPICS__ALERTS", line["topics"]["alerts"])
    db = ["--database-url", pg_database.url]
    assert main(["audit", "run", "--until-end", "--bootstrap-servers", bootstrap, "--group",
                 f"audit-cli-{time.time_ns()}", *db]) == 0
    out = tmp_path / "audit.csv"
    assert main(["audit", "export", "--out", str(out), "--camera", "cam-0", "--since", "1d", *db]) == 0
    assert len(list(csv.DictReader(out.open()))) == PER_CAMERA
    capsys.readouterr()
    assert main(["audit", "show", "--camera", "cam-0", "--sequence", "2", *db]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown[0]["model_version"] == line["version"] and shown[0]["model"]["product"] == "bracket"
    assert main(["audit", "show", "--camera", "cam-9", "--sequence", "2", *db]) == 1


def test_feedback_round_trips_into_a_training_folder(line: dict, pg_database: Database, redis_url: str,
                                                     unique: str, bootstrap: str, tmp_path: Path,
                                                     model_b: Path) -> None:
    _audit(line["settings"], pg_database)
    prefix = f"lwt-{unique}"
    client_redis = redis.Redis.from_url(redis_url)
    overlay_key = cache_keys.heatmap_key(prefix, "cam-1", 4)
    client_redis.hset(overlay_key, "overlay", b"\x89PNG overlay bytes")
    client_redis.expire(overlay_key, 60)
    app = FastAPI()
    app.include_router(router(_identity, database=pg_database, redis=client_redis, prefix=prefix))
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    marks = [{"camera_id": "cam-0", "sequence": 1, "verdict": "false_alarm"},
             {"camera_id": "cam-1", "sequence": 4, "verdict": "real_defect", "defect_type": "scratch"},
             {"camera_id": "cam-0", "sequence": 2, "verdict": "real_defect"}]
    try:
        for mark in marks:
            response = client.post("/api/feedback", json=mark, headers=auth)
            assert response.status_code == 201, response.text
            assert response.json()["by"] == "operator-olga" and response.json()["product"] == "bracket"
    finally:
        client_redis.delete(overlay_key)
    assert client.post("/api/feedback", json={**marks[0], "verdict": "maybe"}, headers=auth).status_code == 422

    out = tmp_path / "dataset"
    fetcher = FrameFetcher(line["settings"].kafka, line["topics"]["frames"])
    try:
        summary = export_feedback(pg_database, fetcher, product="bracket", out=out)
    finally:
        fetcher.close()
    assert (summary.good, summary.defects, summary.heatmaps, summary.skipped) == (1, 2, 1, [])
    frames = {(f.camera_id, f.sequence): f for f in line["frames"]}
    good = list_train_good(out)
    assert [Path(r.path).name for r in good] == ["cam-0-1.png"]
    assert {(Path(r.path).parent.name, Path(r.path).name) for r in list_test(out)} == {
        ("scratch", "cam-1-4.png"), ("defect", "cam-0-2.png")}
    import cv2

    written = cv2.cvtColor(cv2.imread(str(out / "train" / "good" / "cam-0-1.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, read_frame(bootstrap, line["topics"]["frames"], frames[("cam-0", 1)]))
    assert (out / "heatmaps" / "scratch" / "cam-1-4_overlay.png").read_bytes() == b"\x89PNG overlay bytes"
    manifest = json.loads((out / "feedback_manifest.json").read_text())
    assert len(manifest["feedback_ids"]) == 3

    registry = Registry(pg_database, FolderStore(tmp_path / "store"))
    trained = registry.register(model_b, product="bracket", trained_on=out)
    assert sorted(trained.feedback_ids) == sorted(manifest["feedback_ids"])


def test_routes_answer_503_while_the_registry_database_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINEWATCH_REGISTRY__DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    app = FastAPI()
    app.include_router(router(_identity))  # including the routes must not need the database
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/api/audit", headers=auth).status_code == 503
    mark = {"camera_id": "cam-0", "sequence": 1, "verdict": "false_alarm"}
    assert client.post("/api/feedback", json=mark, headers=auth).status_code == 503
