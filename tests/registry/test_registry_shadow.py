"""Shadow scoring by replay on the real broker with two tiny synthetic models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Producer
from registry_helpers import create_topics, produce_frames, topic_names

from linewatch.deploy.cli import main
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.settings import RegistrySettings
from linewatch.detector.registry.shadow import ShadowError, ShadowOptions, ShadowRun, write_report
from linewatch.detector.registry.store import FolderStore
from linewatch.errors import DataError

pytestmark = pytest.mark.integration

MINUTE_NS = 60 * 10**9


@pytest.fixture
def replay_line(bootstrap: str, unique: str, pg_database: Database, model_a: Path, model_b: Path,
                tmp_path: Path) -> dict:
    """Frames from two hours ago (outside the window), the last hour (inside), plus frames to skip."""
    topics = topic_names(unique)
    create_topics(bootstrap, [topics["frames"]])
    registry = Registry(pg_database, FolderStore(tmp_path / "store"))
    active = registry.register(model_a, product="bracket").version
    candidate = registry.register(model_b, product="bracket").version
    registry.promote(active, product="bracket")
    now = time.time_ns()
    produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=3,
                   capture_ns=[now - 120 * MINUTE_NS + i * MINUTE_NS for i in range(3)])
    inside = produce_frames(bootstrap, topics["frames"], cameras=2, per_camera=5, first_sequence=3, seed=1,
                            capture_ns=[now - 50 * MINUTE_NS + i * MINUTE_NS for i in range(5)])
    produce_frames(bootstrap, topics["frames"], cameras=1, per_camera=1, first_sequence=8, seed=2,
                   capture_ns=[now - 40 * MINUTE_NS], extra_headers=[("lw-product", b"housing")])
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics["frames"], key=b"cam-0", value=b"not an image", timestamp=(now - 30 * MINUTE_NS) // 10**6,
                     headers=[("lw-version", b"1"), ("lw-camera", b"cam-0"), ("lw-line", b"line-1"),
                              ("lw-seq", b"9"), ("lw-capture-ns", str(now).encode()), ("lw-encoding", b"png"),
                              ("lw-width", b"64"), ("lw-height", b"64"), ("lw-channels", b"3")])
    assert producer.flush(15) == 0
    settings = RegistrySettings(kafka={"bootstrap_servers": bootstrap}, topics=topics)  # type: ignore[arg-type]
    return {"registry": registry, "settings": settings, "inside": inside, "active": active,
            "candidate": candidate, "now": now, "topics": topics}


def _expected(model_path: Path, frames: list) -> dict[str, list[bool]]:
    """Each camera's verdicts under one model, computed directly from the produced images."""
    model = AnomalyModel.load(model_path, "cpu")
    alerts = model.predict([f.image for f in frames]).anomalous
    found: dict[str, list[bool]] = {}
    for frame, alert in zip(frames, alerts, strict=True):
        found.setdefault(frame.camera_id, []).append(bool(alert))
    return found


def test_replay_of_the_last_hour_compares_both_models_frame_by_frame(replay_line: dict, model_a: Path,
                                                                     model_b: Path, tmp_path: Path) -> None:
    options = ShadowOptions(candidate=replay_line["candidate"], product="bracket",
                            since_ns=replay_line["now"] - 60 * MINUTE_NS, top=3)
    report = ShadowRun(replay_line["settings"], replay_line["registry"], options).run()
    json_path, html_path = write_report(report, tmp_path / "report")

    inside = replay_line["inside"]
    assert report["complete"] and report["frames_scored"] == len(inside) == 10
    assert report["frames_skipped"] == {"other_product": 1, "undecodable": 1}
    assert report["records_before_window"] in (0, 6)  # Kafka seeks past them; Tansu's time index returns offset 0
    saved = json.loads(json_path.read_text())
    expected = {"candidate": _expected(model_b, inside), "active": _expected(model_a, inside)}
    for camera, stats in saved["per_camera"].items():
        assert stats["frames"] == 5
        for role in ("candidate", "active"):
            assert stats["alert_rate"][role] == pytest.approx(np.mean(expected[role][camera]))
        agree = np.mean(np.equal(expected["candidate"][camera], expected["active"][camera]))
        assert stats["agreement"] == pytest.approx(agree)
    assert sum(saved["distributions"]["candidate"]["normalised_histogram"]) == 10
    assert len(saved["top_disagreements"]) == 3
    gaps = [abs(d["candidate"]["normalised"] - d["active"]["normalised"]) for d in saved["top_disagreements"]]
    for d in saved["top_disagreements"]:
        for role in ("candidate", "active"):
            assert (tmp_path / "report" / d["heatmaps"][role]).read_bytes()[:4] == b"\x89PNG"
    split = [d["candidate"]["alert"] != d["active"]["alert"] for d in saved["top_disagreements"]]
    assert split == sorted(split, reverse=True)  # verdict splits first, then by score gap within each group
    assert all(a >= b for (a, b, s, t) in zip(gaps, gaps[1:], split, split[1:], strict=False) if s == t)
    page = html_path.read_text()
    assert replay_line["candidate"] in page and page.count("data:image/png;base64,i") == 6


def test_cli_writes_the_report_and_refuses_without_an_active_version(replay_line: dict, pg_database: Database,
                                                                      tmp_path: Path, bootstrap: str,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LINEWATCH_TOPICS__FRAMES", replay_line["topics"]["frames"])
    common = ["--database-url", pg_database.url, "--model-store", str(replay_line["registry"].store.root),
              "--bootstrap-servers", bootstrap]
    out = tmp_path / "cli-report"
    assert main(["models", "shadow", replay_line["candidate"], "--product", "bracket", "--since", "1h",
                 "--out", str(out), *common]) == 0
    assert json.loads((out / "report.json").read_text())["frames_scored"] == 10
    assert (out / "report.html").is_file()
    assert main(["models", "shadow", replay_line["candidate"], "--product", "housing", "--since", "1h",
                 *common]) == DataError.exit_code
    assert "no active version" in capsys.readouterr().err
    with pytest.raises(ShadowError, match="already the active"):
        ShadowRun(replay_line["settings"], replay_line["registry"],
                  ShadowOptions(candidate=replay_line["active"], product="bracket", since_ns=0))
