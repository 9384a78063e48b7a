"""Operator side of hostile input: keys that expire, alert state beyond heatmap eviction, strong tokens, no secret in
logs or dead letters, security headers, acks by token identity, encoded ids, escaped annotations, replay-proof
webhook signatures. Real broker, Redis servers, HTTP servers and the `linewatch alerts` process."""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import standardwebhooks
from alerts_helpers import API_TOKEN, DANA_TOKEN, WEBHOOK_SECRET, Webhook, frame, seed_redis
from hostile_helpers import produce_raw, read_all, redis_server, result_record, running, wait_until
from pydantic import ValidationError

from linewatch.alerts.api import SECURITY_HEADERS, start_server
from linewatch.alerts.deliveries import attempt
from linewatch.alerts.deliveries.grafana import GrafanaChannel
from linewatch.alerts.deliveries.webhook import WebhookChannel
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.rules import CameraState, step
from linewatch.alerts.settings import AlertsSettings, HttpSettings, RuleConfig
from linewatch.common import cache_keys
from linewatch.common.redis_settings import RedisSettings
from linewatch.deploy.local import free_port

pytestmark = pytest.mark.integration
HIT, CLEAN = 0.9, 0.1
PER_CAMERA = ("state", "alert", "acks")


def test_per_camera_alert_keys_expire_and_alert_state_survives_heatmap_eviction(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, tmp_path: Path, webhook: Webhook) -> None:
    """Before: alerts:state and open alert records had no TTL, and lived in the heatmap Redis where
    ``volatile-ttl`` pressure evicted them. Now every per-camera key expires and the state has its own server."""
    with redis_server(tmp_path / "heat", "--maxmemory", "3mb", "--maxmemory-policy", "volatile-ttl") as heat, \
            redis_server(tmp_path / "state", "--maxmemory-policy", "noeviction") as state_url:
        base = make_settings()
        settings = make_settings(redis=RedisSettings(url=heat, key_prefix=base.redis.key_prefix),
                                 state_redis=RedisSettings(url=state_url, key_prefix=base.redis.key_prefix),
                                 state_ttl_s=600, silent_after_s=300, webhook_url=webhook.url,
                                 webhook_secret=WEBHOOK_SECRET)
        cameras = [f"cam-t{i}" for i in range(20)]
        produce_raw(bootstrap, settings.topics.results,
                    [result_record(frame(c, i, HIT)) for c in cameras for i in range(3)])
        with running(settings):
            wait_until(lambda: len(webhook.bodies()) == 20, 60, "20 alerts")
            heat_client = redis.Redis.from_url(heat)
            for i in range(400):  # heatmap pressure: 8 KB entries with TTLs, far beyond maxmemory
                heat_client.set(f"{base.redis.key_prefix}:hm:x:{i}", b"h" * 8192, ex=60 + i)
            assert heat_client.info("stats")["evicted_keys"] > 0
        state = redis.Redis.from_url(state_url)
        keys = [k.decode() for k in state.scan_iter(match=f"{base.redis.key_prefix}:alerts:*")]
        per_camera = [k for k in keys if k.split(":")[2] in PER_CAMERA]
        assert len([k for k in per_camera if ":state:" in k]) == 20 and len(per_camera) >= 40
        ttls = {k: state.ttl(k) for k in per_camera}
        assert all(0 < ttl <= 600 for ttl in ttls.values()), {k: t for k, t in ttls.items() if not 0 < t <= 600}
        assert len(state.smembers(f"{base.redis.key_prefix}:alerts:open")) == 20  # nothing evicted
        assert not list(heat_client.scan_iter(match=f"{base.redis.key_prefix}:alerts:*"))  # none in the heat server


def test_weak_or_placeholder_tokens_are_refused_at_start_up(unique: str) -> None:
    """Before: '{"dana": "", "eve": "x"}' started and 'Authorization: Bearer ' authenticated as dana."""
    for users in ({"dana": ""}, {"eve": "x"}, {"ops": "change-me-operator-api-token-0123456789abcdef"},
                  {"ops": "a" * 64}, {"ops": API_TOKEN}):
        with pytest.raises(ValidationError):
            AlertsSettings(api_token=API_TOKEN, api_users=users)  # type: ignore[arg-type]
    for token in ("", "change-me-operator-api-token", "deploy-test-token-123", "Vq3-Rk8sWm2_Lp9x"):
        with pytest.raises(ValidationError):
            AlertsSettings(api_token=token)  # type: ignore[arg-type]
    assert AlertsSettings(api_token=API_TOKEN, api_users={"dana": DANA_TOKEN})  # type: ignore[arg-type, dict-item]
    env = {**os.environ, "LINEWATCH_API_TOKEN": "change-me-operator-api-token",
           "LINEWATCH_API_USERS": '{"dana": ""}'}
    proc = subprocess.run([sys.executable, "-m", "linewatch.deploy.cli", "alerts", "--no-api"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "placeholder" in proc.stderr and "change-me-operator" not in proc.stderr


def test_empty_bearer_is_refused_over_http(make_settings: Callable[..., AlertsSettings]) -> None:
    port = free_port()
    settings = make_settings(http=HttpSettings(host="127.0.0.1", port=port), api_users={"dana": DANA_TOKEN})
    server = start_server(settings, AlertsMetrics())
    try:
        for value in ("Bearer ", "Bearer", "Bearer  ", ""):  # http.client sends them as given (httpx refuses)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/api/whoami", headers={"Authorization": value})
            assert connection.getresponse().status == 401, repr(value)
            connection.close()
        who = httpx.get(f"http://127.0.0.1:{port}/api/whoami", headers={"Authorization": f"Bearer {DANA_TOKEN}"})
        assert who.json() == {"identity": "dana"}
    finally:
        server.stop()


def test_webhook_url_secrets_never_reach_logs_errors_or_dead_letters(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook,
        caplog: pytest.LogCaptureFixture) -> None:
    """Before: httpx logged the URL at INFO, and errors and the dl-error header carried user:password and ?token=."""
    caplog.set_level(logging.DEBUG)
    password, token = "pw-Hq82nXs", "tok-Zr51kLq"
    url = webhook.url.replace("http://", f"http://ops:{password}@") + f"?token={token}"
    settings = make_settings(webhook_url=url, webhook_secret=WEBHOOK_SECRET, publish_alerts_topic=False)
    webhook.fail_next, webhook.status_when_failing = 1, 503  # one transient failure (logged), then ...
    produce_raw(bootstrap, settings.topics.results, [result_record(frame("cam-u", i, HIT)) for i in range(3)])
    with running(settings):
        wait_until(lambda: len(webhook.received) >= 2, 60, "two attempts")
    webhook.fail_next, webhook.status_when_failing = 1, 400  # ... and a permanent one, dead-lettered
    produce_raw(bootstrap, settings.topics.results,
                [result_record(frame("cam-u", i, CLEAN)) for i in range(3, 9)])
    with running(settings):
        dead = read_all(bootstrap, settings.topics.alert_dead_letters, 1)
    error = dict(dead[0].headers())["dl-error"].decode()
    assert "HTTP 400" in error and "***" in error
    printed = caplog.text + error + repr(settings) + str(settings.model_dump())
    assert password not in printed and token not in printed
    assert "HTTP Request" not in caplog.text  # httpx's INFO request log (with the full URL) is off


def test_operator_page_sends_security_headers_and_metrics_need_the_token(
        make_settings: Callable[..., AlertsSettings]) -> None:
    """Before: no CSP or X-Frame-Options on the page."""
    port = free_port()
    settings = make_settings(http=HttpSettings(host="127.0.0.1", port=port))
    assert settings.http.metrics_public is False and settings.http.host == "127.0.0.1"
    server = start_server(settings, AlertsMetrics())
    base = f"http://127.0.0.1:{port}"
    try:
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        for path, headers in (("/", {}), ("/static/app.js", {}), ("/api/alerts", auth), ("/api/alerts", {})):
            response = httpx.get(base + path, headers=headers)
            for name, value in SECURITY_HEADERS.items():
                assert response.headers.get(name) == value, (path, name)
        csp = SECURITY_HEADERS["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in httpx.get(base + "/").text  # no inline script the policy would block
        assert httpx.get(base + "/metrics").status_code == 401
    finally:
        server.stop()


def test_acknowledgements_record_the_token_identity_and_are_append_only(
        make_settings: Callable[..., AlertsSettings]) -> None:
    """Before: any token could record "by": "plant-manager", and a later ack overwrote the earlier one."""
    port = free_port()
    settings = make_settings(http=HttpSettings(host="127.0.0.1", port=port), api_users={"dana": DANA_TOKEN})
    alert_id = seed_redis(settings.redis.client(), settings.redis.key_prefix)
    server = start_server(settings, AlertsMetrics())
    url = f"http://127.0.0.1:{port}/api/alerts/{alert_id}/ack"
    dana, operator = {"Authorization": f"Bearer {DANA_TOKEN}"}, {"Authorization": f"Bearer {API_TOKEN}"}
    try:
        forged = httpx.post(url, headers=dana, json={"who": "plant-manager", "note": "not me"})
        assert forged.status_code == 422
        first = httpx.post(url, headers=dana, json={"note": "bin 4"}).json()
        second = httpx.post(url, headers=operator, json={"note": "seen"}).json()
    finally:
        server.stop()
    assert first["ack"]["by"] == "dana" and second["ack"] == first["ack"]
    assert [(a["by"], a["note"]) for a in second["acks"]] == [("dana", "bin 4"), ("operator", "seen")]
    client = settings.redis.client()
    assert client.ttl(f"{settings.redis.key_prefix}:alerts:acks:{alert_id}") > 0


def test_camera_ids_are_url_encoded_and_ids_breaking_the_rule_never_become_alerts(
        make_settings: Callable[..., AlertsSettings], bootstrap: str, webhook: Webhook) -> None:
    """Before: ids with '/' (accepted by the old detector) broke the page's URLs; overlay_url was not encoded."""
    port = free_port()
    settings = make_settings(http=HttpSettings(host="127.0.0.1", port=port), webhook_url=webhook.url,
                             webhook_secret=WEBHOOK_SECRET)
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    legacy = "plant1/cam2?x=<b>"  # a key the old detector could have written
    client.sadd(cache_keys.cameras_key(prefix), legacy)
    client.hset(cache_keys.latest_key(prefix, legacy), mapping={"sequence": 3, "heatmap_key": "k", "line_id": "l"})
    for key in (cache_keys.latest_key(prefix, legacy),):
        client.expire(key, 300)
    server = start_server(settings, AlertsMetrics())
    try:
        cameras = httpx.get(f"http://127.0.0.1:{port}/api/cameras",
                            headers={"Authorization": f"Bearer {API_TOKEN}"}).json()
    finally:
        server.stop()
    [camera] = [c for c in cameras if c["camera_id"] == legacy]
    assert camera["overlay_url"] == "/api/cameras/plant1%2Fcam2%3Fx%3D%3Cb%3E/frames/3/overlay.png"
    produce_raw(bootstrap, settings.topics.results, [result_record(frame("plant1/cam2", i, HIT)) for i in range(3)])
    with running(settings):
        dead = read_all(bootstrap, settings.topics.alert_dead_letters, 3)
    assert {dict(d.headers())["dl-error-class"] for d in dead} == {b"bad_camera_id"}
    assert webhook.received == []


def test_grafana_annotation_html_escapes_ids(recorder: dict[str, Any]) -> None:
    """Before: the annotation text was HTML built from unescaped ids."""
    rule = RuleConfig(k=1, n=1, resolve_after=1, cooldown_s=0)
    line = '<img src=x onerror="alert(1)">'
    state, events = CameraState(camera_id="cam-g"), []
    for seq, score in enumerate([HIT, CLEAN]):
        state, new = step(state, frame("cam-g", seq, score, line=line), rule)
        events.extend(new)
    channel = GrafanaChannel(recorder["url"], "glsa_token_abc", public_base_url="http://ops:8081", timeout_s=2)
    assert attempt(channel, events[-1], AlertsMetrics())[0] == "delivered"
    text = recorder["requests"][-1]["body"]["text"]
    assert "<img" not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert text.count("<a href=") == 1


def test_webhook_signature_binds_id_and_time_so_replays_are_refused(webhook: Webhook) -> None:
    """Before: the signature covered the body only, so a captured request could be replayed at any time."""
    rule = RuleConfig(k=1, n=1, resolve_after=1, cooldown_s=0)
    _, events = step(CameraState(camera_id="cam-w"), frame("cam-w", 0, HIT), rule)
    channel = WebhookChannel(webhook.url, WEBHOOK_SECRET, public_base_url="http://ops", timeout_s=2)
    assert attempt(channel, events[0], AlertsMetrics())[0] == "delivered"
    got = webhook.received[-1]
    raw = json.dumps(got["body"], sort_keys=True, separators=(",", ":")).encode()
    receiver = standardwebhooks.Webhook(WEBHOOK_SECRET)
    assert receiver.verify(raw, got["headers"])["event_id"] == events[0].event_id
    headers = {k.lower(): v for k, v in got["headers"].items()}
    old = {**headers, "webhook-timestamp": str(int(time.time()) - 3600)}  # the same request an hour later
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        receiver.verify(raw, old)
    other = {**headers, "webhook-id": "another-event"}  # the signature does not carry over to another id
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        receiver.verify(raw, other)
