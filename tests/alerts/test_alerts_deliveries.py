"""Deliveries against real HTTP servers: signed webhook, transient and permanent failures, Grafana annotations,
dead letters."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import standardwebhooks
from alerts_helpers import WEBHOOK_SECRET, Webhook, frame
from confluent_kafka import Consumer, Producer, TopicPartition

from linewatch.alerts.deliveries import attempt
from linewatch.alerts.deliveries.grafana import GrafanaChannel
from linewatch.alerts.deliveries.webhook import WebhookChannel
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.rules import Alert, AlertEvent, CameraState, step
from linewatch.alerts.service import AlertsService, ensure_topics
from linewatch.alerts.settings import AlertsSettings, RetrySettings, RuleConfig


def fired_and_resolved() -> list[AlertEvent]:
    rule = RuleConfig(k=2, n=3, resolve_after=2, cooldown_s=0)
    state, events = CameraState(camera_id="cam-7"), []
    for seq, score in enumerate([0.6, 0.97, 0.2, 0.1]):
        state, new = step(state, frame("cam-7", seq, score, line="line-3", heatmap=f"hm:{seq}"), rule)
        events.extend(new)
    return events


def sample(metrics: AlertsMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_webhook_is_signed_and_a_server_error_is_worth_retrying(webhook: Webhook) -> None:
    """One send at a time, as the outbox makes them (its retry schedule is tested in test_alerts_outbox)."""
    metrics = AlertsMetrics()
    channel = WebhookChannel(webhook.url, WEBHOOK_SECRET, public_base_url="http://ops.example:8081", timeout_s=2)
    webhook.fail_next = 1
    event = fired_and_resolved()[0]
    assert attempt(channel, event, metrics)[0] == "transient"
    assert attempt(channel, event, metrics) == ("delivered", "")
    assert [r["accepted"] for r in webhook.received] == [False, True]
    assert all(r["signed"] for r in webhook.received)
    got = webhook.received[-1]
    raw = json.dumps(got["body"], sort_keys=True, separators=(",", ":")).encode()
    # An independent implementation of Standard Webhooks verifies the signature (id + timestamp + body).
    assert standardwebhooks.Webhook(WEBHOOK_SECRET).verify(raw, got["headers"]) == got["body"]
    assert got["headers"]["webhook-id"] == event.event_id
    assert got["headers"]["X-Linewatch-Event-Id"] == event.event_id == got["body"]["event_id"]
    assert got["body"]["alert"]["severity"] == "critical"
    assert got["body"]["links"]["heatmap_url"].startswith("http://ops.example:8081/api/alerts/")
    assert sample(metrics, "linewatch_alerts_deliveries_total", channel="webhook", outcome="failure") == 1
    assert sample(metrics, "linewatch_alerts_deliveries_total", channel="webhook", outcome="success") == 1


def test_webhook_with_wrong_secret_fails_permanently(webhook: Webhook) -> None:
    metrics = AlertsMetrics()
    channel = WebhookChannel(webhook.url, "not-the-secret", public_base_url="http://x", timeout_s=2)
    outcome, error = attempt(channel, fired_and_resolved()[0], metrics)
    assert outcome == "permanent" and "HTTP 401" in error
    assert len(webhook.received) == 1 and not webhook.received[0]["signed"]


def test_grafana_region_annotation_payload(recorder: dict[str, Any]) -> None:
    channel = GrafanaChannel(recorder["url"], "glsa_token_abc", public_base_url="http://ops:8081",
                             dashboard_uid="linewatch-overview", timeout_s=2)
    assert channel.kinds == ("resolved", "silent")
    recorder["statuses"] = [503]
    resolved = fired_and_resolved()[1]
    assert attempt(channel, resolved, AlertsMetrics())[0] == "transient"
    assert attempt(channel, resolved, AlertsMetrics())[0] == "delivered"
    assert len(recorder["requests"]) == 2
    request = recorder["requests"][-1]
    assert request["path"] == "/api/annotations"
    assert request["headers"]["Authorization"] == "Bearer glsa_token_abc"
    body, alert = request["body"], resolved.alert
    assert alert.end_ns is not None
    assert body["time"] == alert.start_ns // 10**6 and body["timeEnd"] == alert.end_ns // 10**6 > body["time"]
    assert body["tags"] == ["linewatch", "line:line-3", "camera:cam-7", "severity:critical"]
    assert body["dashboardUID"] == "linewatch-overview" and alert.alert_id in body["text"]
    recorder["statuses"] = [400]
    assert attempt(channel, resolved, AlertsMetrics())[0] == "permanent"  # a 400 is not worth retrying
    assert len(recorder["requests"]) == 3


def test_undeliverable_alert_goes_to_dead_letter_topic_and_offset_is_committed(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET, publish_alerts_topic=False)
    webhook.fail_next = 10**6
    service = AlertsService(settings, stop_event=threading.Event())
    ensure_topics(settings, [settings.topics.results, settings.topics.alert_dead_letters])
    producer = Producer({"bootstrap.servers": bootstrap})
    for seq in range(3):
        producer.produce(settings.topics.results, key="cam-7",
                         value=frame("cam-7", seq, 0.9, line="line-3").model_dump_json())
    producer.produce(settings.topics.results, key="cam-7", value=b"{not json")
    assert producer.flush(15) == 0

    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    dead = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dl-{settings.group_id}",
                     "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    dead.subscribe([settings.topics.alert_dead_letters])
    records: list[Any] = []
    deadline = time.monotonic() + 60
    while len(records) < 2 and time.monotonic() < deadline:
        msg = dead.poll(0.5)
        if msg is not None and not msg.error():
            records.append(msg)
    dead.close()
    time.sleep(1.0)  # let the batch's offset commit land
    service.stop_event.set()
    thread.join(30)
    by_kind = {dict(m.headers()).get("dl-channel", b"input").decode(): m for m in records}
    assert set(by_kind) == {"webhook", "input"}
    alert_record = json.loads(by_kind["webhook"].value())
    assert Alert.model_validate(alert_record["event"]["alert"]).camera_id == "cam-7"
    assert b"HTTP 503" in dict(by_kind["webhook"].headers())["dl-error"]
    assert by_kind["input"].value() == b"{not json"
    assert dict(by_kind["input"].headers())["dl-error-class"] == b"invalid"
    assert len(webhook.received) == settings.retry.attempts
    client = redis.Redis.from_url(settings.redis.url)
    assert not client.llen(service.store.outbox_key(settings.topics.results, 0)) + \
        client.llen(service.store.outbox_key(settings.topics.results, 1))
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.group_id})
    committed = check.committed([TopicPartition(settings.topics.results, p) for p in (0, 1)], timeout=10)
    check.close()
    assert sum(max(tp.offset, 0) for tp in committed) == 4


def test_webhook_outage_holds_neither_the_consumer_nor_other_channels_and_delivers_after_recovery(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Webhook answers 503 for a while: the alerts topic still gets every event at once, later frames are still
    consumed, offsets stay behind the undelivered entries; after recovery everything arrives and commits."""
    settings = make_settings(webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET, publish_alerts_topic=True,
                             retry=RetrySettings(backoff_s=0.05, max_backoff_s=0.5))
    assert settings.retry.attempts == 0 and settings.retry.give_up_after_s == 600
    webhook.fail_next = 10**6
    ensure_topics(settings, [settings.topics.results, settings.topics.alerts, settings.topics.alert_dead_letters])
    producer = Producer({"bootstrap.servers": bootstrap})
    scores = [0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1]  # fires at 2, resolves at 7
    for seq, score in enumerate(scores):
        producer.produce(settings.topics.results, key="cam-7", value=frame("cam-7", seq, score).model_dump_json())
    assert producer.flush(15) == 0
    service = AlertsService(settings, stop_event=threading.Event())
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    topic = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{settings.group_id}",
                      "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    topic.subscribe([settings.topics.alerts])
    published: list[str] = []
    client = redis.Redis.from_url(settings.redis.url)

    def last_sequence() -> int:
        raw = client.get(service.store.state_key("cam-7"))
        return -1 if raw is None else int(json.loads(raw)["last_sequence"])

    def committed() -> int:
        check = Consumer({"bootstrap.servers": bootstrap, "group.id": settings.group_id})
        offsets = check.committed([TopicPartition(settings.topics.results, p) for p in (0, 1)], timeout=10)
        check.close()
        return sum(max(tp.offset, 0) for tp in offsets)

    try:
        deadline = time.monotonic() + 60
        while len(published) < 2 and time.monotonic() < deadline:
            msg = topic.poll(0.5)
            if msg is not None and not msg.error():
                published.append(json.loads(msg.value() or b"{}")["kind"])
        assert published == ["firing", "resolved"]  # the healthy channel was not held up
        assert webhook.fail_next > 0 and len(webhook.received) >= 1
        for seq in range(len(scores), len(scores) + 5):  # the consumer keeps consuming during the outage
            producer.produce(settings.topics.results, key="cam-7", value=frame("cam-7", seq, 0.1).model_dump_json())
        assert producer.flush(15) == 0
        deadline = time.monotonic() + 30
        while last_sequence() < len(scores) + 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last_sequence() == len(scores) + 4
        assert committed() < len(scores)  # not past the batch whose webhook entries are undelivered
        failed_tries = len(webhook.received)
        webhook.fail_next = 0
        deadline = time.monotonic() + 30
        while (len(webhook.bodies()) < 2 or committed() < len(scores) + 5) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        service.stop_event.set()
        thread.join(30)
        topic.close()
    assert [b["kind"] for b in webhook.bodies()] == ["firing", "resolved"]
    assert failed_tries >= 2  # it was retried during the outage, with backoff
    assert committed() == len(scores) + 5
    assert sample(service.metrics, "linewatch_alerts_deliveries_total", channel="webhook", outcome="dead_letter") == 0
