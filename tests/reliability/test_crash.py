"""Crash safety: SIGKILL the detector and the alerts service at random moments of a live stream.

Figures per service: what went in, what came out raw, unique after dedup, duplicates, lost (must be 0).
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from confluent_kafka import Producer
from helpers.faults import (
    Receiver,
    TopicCollector,
    create_topics,
    report,
    size,
    spawn,
    start_alertmanager,
    wait_until,
)

from linewatch.alerts.rules import CameraState, step
from linewatch.alerts.settings import RuleConfig
from linewatch.detector.events import FrameResult, Latency
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
CAMERAS = 4
SECRET = "crash-webhook-secret"


def result_pair(msg: object) -> tuple[str, int]:
    """(camera, sequence) of a results record."""
    result = FrameResult.model_validate_json(msg.value())  # type: ignore[attr-defined]
    return result.camera_id, result.sequence


def _paced_producer(bootstrap: str, records: list[tuple[str, bytes, bytes, list]], duration_s: float,
                    acked: set[bytes]) -> threading.Thread:
    """Produce ``(topic, key, value, headers)`` evenly over ``duration_s``; ``acked`` gets each acked record's id."""
    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        start = time.monotonic()
        for i, (topic, key, value, headers) in enumerate(records):
            delay = start + i * duration_s / len(records) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ident = f"{i}".encode()
            producer.produce(topic, key=key, value=value, headers=headers,
                             on_delivery=lambda err, _m, ident=ident: err is None and acked.add(ident))
            producer.poll(0)
        assert producer.flush(60) == 0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(1800)
def test_detector_sigkill_at_random_moments_loses_no_frame(bootstrap: str, redis_url: str, unique: str,
                                                           tiny_model: Path, tmp_path: Path) -> None:
    total, kills, seed = size(240, 2000), size(2, 20), int(time.time())
    rng = random.Random(seed)
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: 4 if role == "frames" else 1 for role, name in topics.items()})
    images = [render_sample(i, size=64).image for i in range(16)]
    frames = []
    for seq in range(total // CAMERAS):
        for cam in range(CAMERAS):
            f = encode_frame(images[(seq + cam) % 16], camera_id=f"cam-{cam}", line_id="line-1", sequence=seq,
                             capture_ns=time.time_ns())
            frames.append((topics["frames"], f.key, f.value, f.headers))
    expected = {(f"cam-{c}", s) for s in range(total // CAMERAS) for c in range(CAMERAS)}
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    env = {"LINEWATCH_TOPICS__RESULTS": topics["results"], "LINEWATCH_TOPICS__BREACHES": topics["breaches"],
           "LINEWATCH_TOPICS__DEAD_LETTERS": topics["dead_letters"], "LINEWATCH_REDIS__KEY_PREFIX": f"lwr-{unique}",
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000", "LINEWATCH_COMMIT_INTERVAL_MS": "200"}
    args = ["detect", "--model", str(tiny_model), "--bootstrap-servers", bootstrap, "--redis-url", redis_url,
            "--frames-topic", topics["frames"], "--group-id", f"det-{unique}", "--max-batch", "8",
            "--max-wait-ms", "20", "--device", "cpu", "--metrics-port", "0", "--torch-threads", "1"]
    log_path = tmp_path / "detector.log"
    acked: set[bytes] = set()
    producer = _paced_producer(bootstrap, frames, duration_s=kills * 9.0 + 5, acked=acked)
    kill_times = []
    try:
        for _ in range(kills):
            proc = spawn(args, env, log_path)
            seen = len(results)
            wait_until(lambda seen=seen: len(results) > seen or (not producer.is_alive() and len(results) >= total),
                       120, "the detector to produce a result")
            time.sleep(rng.uniform(0.0, 2.0))  # a random moment: mid-batch, mid-commit or idle
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kill_times.append(round(time.monotonic(), 1))
        producer.join(300)
        starts = log_path.read_text().count("consuming ")
        final = spawn(args, env, log_path)
        try:
            # SIGTERM only once its handlers are installed (it logs "consuming" after), else it dies of -15
            wait_until(lambda: log_path.read_text().count("consuming ") > starts, 120, "the final detector to start")
            wait_until(lambda: set(results.items) >= expected, 300, "every frame's result")
        finally:
            final.send_signal(signal.SIGTERM)
            code = final.wait(60)
    finally:
        results.close()
    counts = Counter(results.items)
    figures = {"frames_produced": len(acked), "cameras": CAMERAS, "kills": kills, "seed": seed,
               "results": len(results.items), "unique_results": len(counts),
               "duplicates_before_dedup": len(results.items) - len(counts),
               "duplicates_after_dedup": 0, "lost": len(expected - set(counts)),
               "unexpected": len(set(counts) - expected)}
    report("crash.detector", figures)
    assert len(acked) == len(expected)
    assert figures["lost"] == 0 and figures["unexpected"] == 0, log_path.read_text()[-3000:]
    assert code == 0, log_path.read_text()[-3000:]


def _results_stream(rng: random.Random, per_camera: int) -> list[FrameResult]:
    """Per camera: runs of clean frames and bursts of breaches, 100 ms apart in capture time."""
    start = time.time_ns() - 10**12
    stream = []
    for cam in range(CAMERAS):
        seq = 0
        while seq < per_camera:
            for score in [0.1] * rng.randint(6, 14) + [0.9] * rng.randint(0, 5):
                if seq < per_camera:
                    stream.append(FrameResult(
                        camera_id=f"cam-{cam}", line_id=f"line-{cam % 2}", sequence=seq,
                        capture_ns=start + seq * 100_000_000, image_score=score, normalised_score=score,
                        anomalous=score >= 0.5, threshold=0.5, model_version="crash", heatmap_key=None,
                        latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0, end_to_end_ms=0)))
                    seq += 1
    stream.sort(key=lambda r: (r.sequence, r.camera_id))  # cameras interleaved, each in order
    return stream


def _expected_events(stream: list[FrameResult], rule: RuleConfig) -> set[str]:
    states: dict[str, CameraState] = {}
    events = set()
    for result in stream:
        state = states.get(result.camera_id) or CameraState(camera_id=result.camera_id)
        states[result.camera_id], transitions = step(state, result, rule)
        events.update(e.event_id for e in transitions)
    return events


@pytest.mark.timeout(1800)
def test_alerts_sigkill_delivers_every_alert_exactly_once_in_effect(bootstrap: str, redis_url: str, unique: str,
                                                                    tmp_path: Path) -> None:
    per_camera, kills, seed = size(80, 500), size(2, 20), int(time.time())
    rng = random.Random(seed)
    rule = RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=0.5)
    stream = _results_stream(rng, per_camera)
    expected = _expected_events(stream, rule)
    topics = {"results": f"results-{unique}", "alerts": f"alerts-{unique}", "alert_dead_letters": f"adl-{unique}"}
    create_topics(bootstrap, {name: 2 for name in topics.values()})
    am_proc, am_url = start_alertmanager(tmp_path)
    webhook, am = Receiver(secret=SECRET), Receiver(forward=am_url)
    prefix = f"lwr-{unique}"
    env = {"LINEWATCH_API_TOKEN": "XYdY_Blclj8dysxkqNcYvi5D1oI4wH99DC4CNKMasSo",
           "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
           "LINEWATCH_REDIS__URL": redis_url, "LINEWATCH_REDIS__KEY_PREFIX": prefix,
           "LINEWATCH_TOPICS__RESULTS": topics["results"], "LINEWATCH_TOPICS__ALERTS": topics["alerts"],
           "LINEWATCH_TOPICS__ALERT_DEAD_LETTERS": topics["alert_dead_letters"], "LINEWATCH_GROUP_ID": prefix,
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000", "LINEWATCH_BATCH_SIZE": "8",
           "LINEWATCH_ALERTMANAGER_URL": f"http://127.0.0.1:{am.port}", "LINEWATCH_ALERTMANAGER_RESEND_S": "3600",
           "LINEWATCH_WEBHOOK_URL": webhook.url, "LINEWATCH_WEBHOOK_SECRET": SECRET,
           "LINEWATCH_RULES__DEFAULT": rule.model_dump_json(), "LINEWATCH_RETRY__BACKOFF_S": "0.05"}
    records = [(topics["results"], r.camera_id.encode(), r.model_dump_json().encode(), []) for r in stream]
    acked: set[bytes] = set()
    log_path = tmp_path / "alerts.log"
    client = redis.Redis.from_url(redis_url)

    def am_pairs() -> list[str]:
        return [f"{a['labels']['alert_id']}:{'resolved' if 'endsAt' in a else 'firing'}"
                for r in am.accepted() for a in r["body"]]

    def caught_up() -> bool:
        for cam in range(CAMERAS):
            raw = client.get(f"{prefix}:alerts:state:cam-{cam}")
            if raw is None or json.loads(raw)["last_sequence"] != per_camera - 1:
                return False
        delivered = {r["event_id"] for r in webhook.accepted()}
        outbox = sum(client.llen(k) for k in client.scan_iter(match=f"{prefix}:alerts:outbox:*"))
        return outbox == 0 and delivered >= expected and set(am_pairs()) >= expected

    producer = _paced_producer(bootstrap, records, duration_s=kills * 7.0 + 3, acked=acked)
    try:
        for _ in range(kills):
            proc = spawn(["alerts", "--no-api"], env, log_path)
            time.sleep(rng.uniform(3.0, 7.0))  # start-up and group join take ~3 s; then a random moment
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        producer.join(300)
        final = spawn(["alerts", "--no-api"], env, log_path)
        try:
            wait_until(caught_up, 300, "every expected alert delivered")
        finally:
            final.send_signal(signal.SIGTERM)
            final.wait(30)
        hook_ids = Counter(r["event_id"] for r in webhook.accepted())
        am_ids = Counter(am_pairs())
        active = {a["labels"]["alert_id"] for a in httpx.get(f"{am_url}/api/v2/alerts").json()
                  if a["labels"].get("alertname") == "LinewatchDefect" and a["status"]["state"] == "active"}
    finally:
        webhook.close()
        am.close()
        am_proc.terminate()
        am_proc.wait(10)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    still_firing = {e.removesuffix(":firing") for e in expected if e.endswith(":firing")} - \
        {e.removesuffix(":resolved") for e in expected if e.endswith(":resolved")}
    figures = {"results_produced": len(acked), "kills": kills, "seed": seed, "expected_events": len(expected),
               "webhook_raw_deliveries": sum(hook_ids.values()), "webhook_unique": len(hook_ids),
               "webhook_duplicates_raw": sum(hook_ids.values()) - len(hook_ids), "webhook_duplicates_after_dedup": 0,
               "webhook_lost": len(expected - set(hook_ids)), "webhook_unexpected": len(set(hook_ids) - expected),
               "alertmanager_raw_posts": sum(am_ids.values()), "alertmanager_unique": len(am_ids),
               "alertmanager_duplicates_raw": sum(am_ids.values()) - len(am_ids),
               "alertmanager_lost": len(expected - set(am_ids)), "alertmanager_active_at_end": len(active),
               "expected_open_at_end": len(still_firing)}
    report("crash.alerts", figures)
    assert len(acked) == len(stream) and expected
    assert figures["webhook_lost"] == 0 and figures["webhook_unexpected"] == 0, log_path.read_text()[-3000:]
    assert figures["alertmanager_lost"] == 0 and set(am_ids) <= expected
    assert all(r["signed"] for r in webhook.received)
    assert active == still_firing  # Alertmanager's own view: the open alerts, and only those
