"""Scale-out proof: 8 cameras, two ``linewatch detect`` processes in one group, alerts; one detector is SIGKILLed.

Reduced size by default; ``LINEWATCH_FULL=1`` runs many more frames at a higher rate.
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from e2e_helpers import assignment, http_ok, line_env, spawn, stop, topics_for, wait_until

from linewatch.alerts.rules import CameraState
from linewatch.common.settings import KafkaSettings
from linewatch.common.topics import all_topic_names, ensure_topics
from linewatch.deploy.demo_collect import TopicCollector
from linewatch.deploy.local import free_port
from linewatch.detector.events import FrameResult
from linewatch.ingest.fleet import run_fleet
from linewatch.ingest.settings import CameraSettings

FULL = os.environ.get("LINEWATCH_FULL") == "1"
CAMERAS = 8
FRAMES_PER_CAMERA = 300 if FULL else 40
FPS = 10.0 if FULL else 4.0
ALL_PARTITIONS = set(range(8))


@pytest.mark.slow
@pytest.mark.timeout(300 if FULL else 150)
def test_survivor_takes_over_and_every_frame_gets_exactly_one_result_after_dedup(
        bootstrap: str, redis_url: str, unique: str, tiny_model: Path, tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap_servers=bootstrap)
    topics = topics_for(unique)
    ensure_topics(kafka, all_topic_names(topics), 8)
    env = line_env(topics, f"lwe-{unique}")
    ports = [free_port(), free_port()]
    logs = [tmp_path / "detector-a.log", tmp_path / "detector-b.log"]
    detect = ["detect", "--model", str(tiny_model), "--bootstrap-servers", bootstrap, "--redis-url", redis_url,
              "--group-id", f"det-{unique}", "--device", "cpu", "--max-batch", "4", "--max-wait-ms", "20",
              "--torch-threads", "1"]
    detector_env = {**env, "LINEWATCH_METRICS_HOST": "127.0.0.1"}
    detectors = [spawn([*detect, "--metrics-port", str(port)], detector_env, log)
                 for port, log in zip(ports, logs, strict=True)]
    alerts = spawn(["alerts", "--no-api", "--bootstrap-servers", bootstrap, "--redis-url", redis_url],
                   {**env, "LINEWATCH_API_TOKEN": "Mg2bDirfrzxFZVRtpqtFzKsTlSq1xMX2LDOcPnJF2kM",
                    "LINEWATCH_GROUP_ID": f"alerts-{unique}"},
                   tmp_path / "alerts.log")
    collector = TopicCollector(kafka, topics, f"reader-{unique}").start()
    stop_cameras = threading.Event()
    try:
        # Both members in the group, the 8 partitions split between them without overlap.
        wait_until(lambda: all(http_ok(f"http://127.0.0.1:{p}/readyz") for p in ports), 90, "both detectors ready")
        wait_until(lambda: assignment(logs[0]) and assignment(logs[1]) and not assignment(logs[0]) & assignment(logs[1])
                   and assignment(logs[0]) | assignment(logs[1]) == ALL_PARTITIONS, 60, "a 2-way partition split")
        victim_parts, survivor_parts = assignment(logs[0]), assignment(logs[1])

        cameras = [CameraSettings(camera_id=f"cam-{i}", line_id="line-1", fps=FPS, create_topics=False,
                                  source=f"synthetic:?size=64&defect_probability=0.3&seed={i}&count={FRAMES_PER_CAMERA}",
                                  state_dir=tmp_path / "state", kafka=kafka, topics=topics) for i in range(CAMERAS)]
        stats: list = []
        fleet = threading.Thread(target=lambda: stats.extend(run_fleet(cameras, stop_event=stop_cameras)), daemon=True)
        fleet.start()

        def victim_scored() -> bool:
            with collector.lock:
                return sum(r.partition in victim_parts for r in collector.data.results) >= 8
        wait_until(victim_scored, 60, "the first detector to score frames")
        detectors[0].send_signal(signal.SIGKILL)  # mid-run: batches in flight, offsets partly committed
        killed_ns = time.time_ns()
        assert fleet.is_alive(), "the cameras must still be sending when the detector dies"
        fleet.join(FRAMES_PER_CAMERA / FPS + 60)
        gc.collect()  # closes the cameras' producers while the broker is still up
        sent = {(s.camera_id, seq) for s in stats for seq in range(s.first_sequence, s.last_sequence + 1)}
        assert len(sent) == CAMERAS * FRAMES_PER_CAMERA and all(s.sent == FRAMES_PER_CAMERA for s in stats)
        assert collector.wait_for(lambda d: d.unique_frames() >= sent, 120), "some frames never got a result"
        wait_until(lambda: assignment(logs[1]) == ALL_PARTITIONS, 30, "the survivor to own every partition")

        # The alerts service followed every camera's stream to its last frame through the fail-over.
        client = redis.Redis.from_url(redis_url)

        def alerts_caught_up() -> bool:
            for i in range(CAMERAS):
                raw = client.get(f"lwe-{unique}:alerts:state:cam-{i}")
                if not raw or CameraState.model_validate_json(raw).last_sequence != FRAMES_PER_CAMERA - 1:
                    return False
            return True
        wait_until(alerts_caught_up, 60, "the alerts service to process every camera's last frame")
        assert detectors[1].poll() is None and alerts.poll() is None
    finally:
        stop_cameras.set()
        codes = [stop(p) for p in (*detectors, alerts)]
        data = collector.stop()

    results: list[FrameResult] = data.results
    assert {(r.camera_id, r.sequence) for r in results} == sent  # exactly the frames sent, none invented
    assert not data.dead_letters and not data.unreadable
    # Duplicates may only come from the killed detector's partitions (its uncommitted tail, reprocessed).
    counts: dict[tuple[str, int], list[FrameResult]] = {}
    for r in results:
        counts.setdefault((r.camera_id, r.sequence), []).append(r)
    duplicated = {r.partition for copies in counts.values() if len(copies) > 1 for r in copies}
    assert duplicated <= victim_parts, (duplicated, victim_parts)
    # Results made after the kill can only come from the survivor: it scored the victim's partitions.
    busy_victim_parts = {r.partition for r in results} & victim_parts
    assert busy_victim_parts, f"no camera hashed to the victim's partitions {victim_parts}"
    after_kill = {r.partition for r in results if r.processed_ns > killed_ns}
    assert busy_victim_parts <= after_kill, (busy_victim_parts, after_kill)
    before_kill = {r.partition for r in results if r.processed_ns < killed_ns}
    assert before_kill & victim_parts, "the victim scored frames before it was killed"
    assert survivor_parts.isdisjoint(victim_parts)
    print(f"victim {sorted(victim_parts)}, survivor {sorted(survivor_parts)}, {len(sent)} frames, "
          f"{len(results) - len(sent)} duplicates on {sorted(duplicated)}, "
          f"scored after the kill on {sorted(after_kill)}")
    assert codes[0] == -signal.SIGKILL and codes[1] == 0 and codes[2] == 0, codes
