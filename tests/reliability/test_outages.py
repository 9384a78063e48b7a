"""Dependency outages mid-stream: Redis stopped, the webhook down or failing, the broker unreachable."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer
from helpers.faults import Receiver, TopicCollector, create_topics, report, size, start_proxied_broker, wait_until
from pydantic import SecretStr
from test_crash import _expected_events, _results_stream, result_pair

from linewatch.alerts.rules import Alert
from linewatch.alerts.service import run_alerts
from linewatch.alerts.settings import AlertsSettings, HttpSettings, RetrySettings, RuleConfig, RulesSettings
from linewatch.common import cache_keys
from linewatch.deploy.local import start_redis
from linewatch.detector.service import DetectorService, DetectorSettings
from linewatch.ingest.camera import Camera
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
SECRET = "outage-webhook-secret"


def _detector(bootstrap: str, redis_url: str, topics: dict[str, str], unique: str, model: Path) -> DetectorService:
    return DetectorService(DetectorSettings(
        kafka={"bootstrap_servers": bootstrap}, topics=topics,  # type: ignore[arg-type]
        redis={"url": redis_url, "key_prefix": f"lwr-{unique}", "socket_timeout_s": 0.5},  # type: ignore[arg-type]
        model=model, device="cpu", group_id=f"det-{unique}", session_timeout_ms=6000, metrics_port=None,
        max_batch_size=8, max_wait_ms=30, torch_threads=1))


def _frames_thread(bootstrap: str, topic: str, per_camera: int, fps: float, sent: set) -> threading.Thread:
    def run() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
        image = render_sample(3, size=64).image
        for seq in range(per_camera):
            for cam in ("cam-0", "cam-1"):
                f = encode_frame(image, camera_id=cam, line_id="line-1", sequence=seq, capture_ns=time.time_ns())
                producer.produce(topic, key=f.key, value=f.value, headers=f.headers,
                                 on_delivery=lambda e, _m, k=(cam, seq): e is None and sent.add(k))
            producer.poll(0)
            time.sleep(1 / fps)
        assert producer.flush(60) == 0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(600)
def test_redis_stopped_mid_stream_loses_no_result_and_recovers(bootstrap: str, unique: str, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    outage_s = size(5.0, 30.0)
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: 2 if role == "frames" else 1 for role, name in topics.items()})
    server = start_redis(tmp_path)
    url = f"redis://127.0.0.1:{server.port}/0"
    service = _detector(bootstrap, url, topics, unique, tiny_model)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    sent: set[tuple[str, int]] = set()
    fps = 5.0
    stream = _frames_thread(bootstrap, topics["frames"], int((outage_s + size(8, 15)) * fps), fps, sent)
    client = redis.Redis.from_url(url, socket_timeout=1)
    prefix = f"lwr-{unique}"
    try:
        wait_until(lambda: len(results) >= 10, 120, "results before the outage")
        server.stop()
        stopped = time.monotonic()
        time.sleep(outage_s)
        server = start_redis(tmp_path, port=server.port)  # back, empty (no persistence)
        back = time.monotonic()

        def heatmap_written() -> bool:  # Redis came back empty: any latest entry is a new write
            return bool(client.exists(cache_keys.latest_key(prefix, "cam-0")))

        wait_until(heatmap_written, 60, "heatmaps to be written again")
        recovery_s = time.monotonic() - back
        stream.join(120)
        wait_until(lambda: set(results.items) >= sent, 120, "every result")
    finally:
        service.stop_event.set()
        thread.join(60)
        results.close()
        server.stop()
    registry = service.metrics.registry
    figures = {"outage_s": round(back - stopped, 1), "frames_produced": len(sent), "results": len(results.items),
               "unique_results": len(set(results.items)), "lost": len(sent - set(results.items)),
               "heatmap_writes_skipped": registry.get_sample_value("linewatch_detector_heatmap_writes_skipped_total"),
               "redis_errors": registry.get_sample_value("linewatch_detector_redis_errors_total"),
               "heatmaps_again_after_s": round(recovery_s, 1), "detector_restarted": False}
    report("outage.redis", figures)
    assert figures["lost"] == 0 and (figures["heatmap_writes_skipped"] or 0) > 0
    assert not thread.is_alive()


@pytest.mark.timeout(600)
def test_webhook_down_then_failing_alerts_arrive_after_recovery(bootstrap: str, redis_url: str, unique: str,
                                                                 tmp_path: Path) -> None:
    """With the default retry policy (backoff 0.5 s doubling to 30 s, give up after 10 minutes) an outage is
    ridden out: every alert arrives after recovery and none is dead-lettered."""
    down_s, error_s = size(4.0, 15.0), size(4.0, 15.0)
    rule = RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=0.5)
    stream = _results_stream(random.Random(7), size(60, 200))
    expected = _expected_events(stream, rule)
    prefix = f"lwr-{unique}"
    settings = AlertsSettings(
        kafka={"bootstrap_servers": bootstrap},  # type: ignore[arg-type]
        topics={"results": f"results-{unique}", "alerts": f"alerts-{unique}",  # type: ignore[arg-type]
                "alert_dead_letters": f"adl-{unique}", "partitions": 2},
        redis={"url": redis_url, "key_prefix": prefix},  # type: ignore[arg-type]
        rules=RulesSettings(default=rule), http=HttpSettings(enabled=False),
        retry=RetrySettings(),  # the defaults, on purpose
        group_id=prefix, session_timeout_ms=6000, api_token="tSc0p_Pl-XeCTIXxWlI8N-cRYvJLGmuE7gx8FLFsftY",  # type: ignore[arg-type]
        webhook_url=None, publish_alerts_topic=False)
    webhook = Receiver(secret=SECRET)
    settings = settings.model_copy(update={"webhook_url": webhook.url,
                                           "webhook_secret": SecretStr(SECRET)})
    dead = TopicCollector(bootstrap, settings.topics.alert_dead_letters)
    stop = threading.Event()
    thread = threading.Thread(target=run_alerts, args=(settings, stop), daemon=True)
    thread.start()
    producer = Producer({"bootstrap.servers": bootstrap})
    create_topics(bootstrap, {settings.topics.results: 2})
    try:
        half = len(stream) // 2
        for r in stream[:half]:
            producer.produce(settings.topics.results, key=r.camera_id, value=r.model_dump_json())
        producer.flush(15)
        webhook.set_mode("down")
        time.sleep(down_s)
        webhook.set_mode("error")
        for r in stream[half:]:
            producer.produce(settings.topics.results, key=r.camera_id, value=r.model_dump_json())
        producer.flush(15)
        time.sleep(error_s)
        failed_before = len(webhook.received)
        webhook.set_mode("ok")
        wait_until(lambda: {r["event_id"] for r in webhook.accepted()} >= expected, 120, "every alert delivered")
    finally:
        stop.set()
        thread.join(30)
        webhook.close()
        dead.close()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    delivered = [r["event_id"] for r in webhook.accepted()]
    figures = {"webhook_down_s": down_s, "webhook_500_s": error_s, "expected_events": len(expected),
               "answered_500_during_outage": failed_before, "delivered_raw": len(delivered),
               "delivered_unique": len(set(delivered)), "lost": len(expected - set(delivered)),
               "dead_lettered": len(dead), "retry_policy": "defaults: backoff 0.5..30 s, give up after 600 s"}
    report("outage.webhook", figures)
    assert figures["lost"] == 0 and len(dead) == 0 and failed_before > 0
    assert all(Alert.model_validate(r["body"]["alert"]) for r in webhook.accepted())


@pytest.mark.timeout(900)
def test_broker_unreachable_clients_reconnect_without_restart(redis_url: str, unique: str, tiny_model: Path,
                                                              tmp_path: Path) -> None:
    cut_s, fps = size(6.0, 30.0), 4.0
    broker, proxy = start_proxied_broker(tmp_path)
    bootstrap = f"127.0.0.1:{proxy.port}"
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    create_topics(bootstrap, {name: 2 if role == "frames" else 1 for role, name in topics.items()})
    prefix = f"lwr-{unique}"
    service = _detector(bootstrap, redis_url, topics, unique, tiny_model)
    alerts = AlertsSettings(
        kafka={"bootstrap_servers": bootstrap}, topics={"results": topics["results"],  # type: ignore[arg-type]
                                                        "alerts": f"alerts-{unique}", "alert_dead_letters":
                                                        f"adl-{unique}", "partitions": 1},
        redis={"url": redis_url, "key_prefix": prefix}, http=HttpSettings(enabled=False),  # type: ignore[arg-type]
        group_id=f"alerts-{unique}", session_timeout_ms=6000, api_token="tSc0p_Pl-XeCTIXxWlI8N-cRYvJLGmuE7gx8FLFsftY")  # type: ignore[arg-type]
    stop, alerts_stop = threading.Event(), threading.Event()
    threads = [threading.Thread(target=service.run, daemon=True),
               threading.Thread(target=run_alerts, args=(alerts, alerts_stop), daemon=True)]
    cameras = [Camera(CameraSettings(camera_id=f"cam-{i}", source="synthetic:?size=64", fps=fps,  # type: ignore[call-arg]
                                     queue_policy="drop-oldest", state_dir=tmp_path / "state", create_topics=False,
                                     kafka={"bootstrap_servers": bootstrap}, topics={"frames": topics["frames"]}),
                      stop_event=stop) for i in range(2)]
    stats: list = []
    threads += [threading.Thread(target=lambda c=c: stats.append(c.run()), daemon=True) for c in cameras]
    for thread in threads:
        thread.start()
    results = TopicCollector(bootstrap, topics["results"], result_pair)
    client = redis.Redis.from_url(redis_url)
    try:
        wait_until(lambda: len(results) >= 8, 120, "results before the cut")
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(cut_s)
        during = len(results)
        proxy.restore()
        wait_until(lambda: len(results) >= during + 8, 180, "results after the broker came back")
        recovery_s = time.monotonic() - cut_at - cut_s
        time.sleep(3)
        stop.set()
        for thread in threads[2:]:
            thread.join(120)
        wanted = {(s.camera_id, seq) for s in stats for seq in range(s.first_sequence, s.last_sequence + 1)}
        wait_until(lambda: set(results.items) >= wanted, 180, "every sent frame's result")

        def alerts_caught_up() -> bool:
            for cam in ("cam-0", "cam-1"):
                raw = client.get(f"{prefix}:alerts:state:{cam}")
                last = max(seq for c, seq in wanted if c == cam)
                if raw is None or json.loads(raw)["last_sequence"] != last:
                    return False
            return True

        wait_until(alerts_caught_up, 120, "the alerts service to consume every result")
    finally:
        stop.set()
        alerts_stop.set()
        service.stop_event.set()
        for thread in threads:
            thread.join(60)
        results.close()
        proxy.close()
        broker.terminate()
        broker.wait(10)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)
    captured = sum(s.captured for s in stats)
    sent = sum(s.sent for s in stats)
    dropped = {k: sum(s.dropped.get(k, 0) for s in stats) for s in stats for k in s.dropped}
    figures = {"cut_s": cut_s, "fps_per_camera": fps, "cameras": len(stats), "captured": captured, "sent": sent,
               "dropped_by_policy": dropped, "delivery_errors": sum(s.delivery_errors for s in stats),
               "results_unique": len(set(results.items)), "lost_after_send": len(wanted - set(results.items)),
               "results_again_after_s": round(recovery_s, 1), "proxy_connections": proxy.connections,
               "restarts": 0}
    report("outage.broker", figures)
    assert figures["lost_after_send"] == 0 and figures["delivery_errors"] == 0
    assert captured == sent + sum(dropped.values())  # producer-side loss only as counted by the drop policy
    assert len(wanted) == sent
