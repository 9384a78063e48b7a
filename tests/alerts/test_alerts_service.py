"""End to end on the real broker, Redis, Alertmanager and a webhook receiver, with a restart mid-stream."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import redis
from alerts_helpers import FRAME_NS, WEBHOOK_SECRET, Webhook, frame
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.alerts.history import AlertHistory
from linewatch.alerts.service import run_alerts
from linewatch.alerts.settings import AlertsSettings
from linewatch.detector.events import FrameResult

CLEAN, HIT = 0.1, 0.9


def stream(camera: str, line: str, scores: list[float], start_ns: int) -> list[FrameResult]:
    return [frame(camera, i, s, line=line, heatmap=f"hm:{camera}:{i}", capture_ns=start_ns + i * FRAME_NS)
            for i, s in enumerate(scores)]


def produce(bootstrap: str, topic: str, results: list[FrameResult]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for result in results:
        producer.produce(topic, key=result.camera_id, value=result.model_dump_json())
    assert producer.flush(15) == 0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def processed(settings: AlertsSettings, last: dict[str, int]) -> Callable[[], bool]:
    """True once every camera's saved state reached its last sequence and no delivery is pending."""
    client = redis.Redis.from_url(settings.redis.url)
    base = f"{settings.redis.key_prefix}:alerts"

    def check() -> bool:
        for camera, sequence in last.items():
            raw = client.get(f"{base}:state:{camera}")
            if raw is None or f'"last_sequence":{sequence},' not in raw.decode():
                return False
        return not any(client.llen(k) for k in client.scan_iter(match=f"{base}:outbox:*"))

    return check


def am_alerts(url: str, alert_ids: set[str]) -> list[dict]:
    return [a for a in httpx.get(f"{url}/api/v2/alerts").json() if a["labels"].get("alert_id") in alert_ids]


def test_stream_gives_exactly_the_expected_alerts_across_a_restart(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, alertmanager: str, webhook: Webhook) -> None:
    settings = make_settings(alertmanager_url=alertmanager, webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET)
    topic = settings.topics.results
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(15)
    start = time.time_ns() - 120 * 10**9
    # cam-a: an alert (fires at frame 12, resolves at 19), then a second one that is still open at the end.
    a = stream("cam-a", "line-1", [CLEAN] * 10 + [HIT, 0.7, 0.95, HIT] + [CLEAN] * 6 + [CLEAN] * 10
               + [HIT, CLEAN, HIT, HIT, 0.6, CLEAN], start)
    # cam-b: two breaches in five (no alert), then an alert that resolves after the restart.
    b = stream("cam-b", "line-2", [CLEAN] * 5 + [HIT, CLEAN, CLEAN, HIT] + [CLEAN] * 4 + [HIT] * 3 + [CLEAN] * 8,
               start)
    cut_a, cut_b = 22, 14  # cam-a's first alert has resolved, cam-b's has not fired yet

    produce(bootstrap, topic, a[:cut_a] + b[:cut_b])
    stop = threading.Event()
    first = threading.Thread(target=run_alerts, args=(settings, stop), daemon=True)
    first.start()
    wait_until(processed(settings, {"cam-a": cut_a - 1, "cam-b": cut_b - 1}), 60, "first half")
    stop.set()
    first.join(30)
    assert not first.is_alive()
    first_id = f"cam-a-10-{(start + 10 * FRAME_NS) // 10**6}"
    assert sorted(body["event_id"] for body in webhook.bodies()) == [f"{first_id}:firing", f"{first_id}:resolved"]

    # The rest, plus a redelivery of frames already processed; a new consumer group re-reads the
    # whole topic from offset 0: the worst case of a crash before any offset commit.
    produce(bootstrap, topic, a[cut_a:] + b[cut_b:] + a[8:16] + b[:6])
    restarted = settings.model_copy(update={"group_id": settings.group_id + "-restarted"})
    stop2 = threading.Event()
    second = threading.Thread(target=run_alerts, args=(restarted, stop2), daemon=True)
    second.start()
    try:
        wait_until(processed(settings, {"cam-a": len(a) - 1, "cam-b": len(b) - 1}), 60, "second half")
    finally:
        stop2.set()
        second.join(30)

    events = Counter(body["event_id"] for body in webhook.bodies())
    assert all(count == 1 for count in events.values()), events
    got = sorted((b["alert"]["camera_id"], b["alert"]["start_sequence"], b["kind"]) for b in webhook.bodies())
    assert got == [("cam-a", 10, "firing"), ("cam-a", 10, "resolved"), ("cam-a", 30, "firing"),
                   ("cam-b", 13, "firing"), ("cam-b", 13, "resolved")]
    assert all(r["signed"] for r in webhook.received)
    bodies = {(b["alert"]["camera_id"], b["alert"]["start_sequence"], b["kind"]): b for b in webhook.bodies()}
    first_alert = bodies[("cam-a", 10, "resolved")]["alert"]
    assert (first_alert["peak_score"], first_alert["worst_sequence"], first_alert["frame_count"]) == (0.95, 12, 4)
    assert first_alert["worst_heatmap_key"] == "hm:cam-a:12" and first_alert["severity"] == "critical"
    assert first_alert["end_sequence"] == 18

    # Alertmanager: only cam-a's second alert is still active; the resolved ones were received as resolved.
    ids = {b["alert"]["alert_id"] for b in webhook.bodies()}
    active = am_alerts(alertmanager, ids)
    assert [(x["labels"]["camera"], x["labels"]["line"], x["status"]["state"]) for x in active] == \
        [("cam-a", "line-1", "active")]
    assert active[0]["labels"]["severity"] == "critical" and "heatmap_url" in active[0]["annotations"]
    resolved = sum(float(line.split()[-1]) for line in httpx.get(f"{alertmanager}/metrics").text.splitlines()
                   if line.startswith("alertmanager_alerts_received_total") and 'status="resolved"' in line)
    assert resolved >= 2

    # History: five transitions, queryable by camera, line and kind.
    history = AlertHistory(redis.Redis.from_url(settings.redis.url), settings.redis.key_prefix)
    assert len(history.query()) == 5
    assert [e.kind for e in history.query(camera_id="cam-b")] == ["resolved", "firing"]
    assert {e.camera_id for e in history.query(kind="firing", line_id="line-1")} == {"cam-a"}
    assert [x.camera_id for x in history.list_alerts(state="firing")] == ["cam-a"]
