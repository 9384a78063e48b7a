"""Operator API: bearer auth on every route but health, cameras and heatmaps from Redis, alerts, ack."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from alerts_helpers import API_TOKEN, DANA_TOKEN, hot_spot, png, seed_redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from linewatch.alerts.api import create_app
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.settings import AlertsSettings
from linewatch.common import cache_keys

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture
def api(make_settings: Callable[..., AlertsSettings]) -> tuple[TestClient, AlertsSettings, str]:
    settings = make_settings(api_users={"dana": SecretStr(DANA_TOKEN)})
    client = settings.redis.client()
    alert_id = seed_redis(client, settings.redis.key_prefix)
    return TestClient(create_app(settings, AlertsMetrics(), client)), settings, alert_id


def test_every_route_but_health_needs_the_token(api: tuple[TestClient, AlertsSettings, str]) -> None:
    http, _, alert_id = api
    routes = [r for r in http.app.routes if isinstance(r, APIRoute) and r.path not in ("/health", "/livez", "/")]
    assert len(routes) >= 9
    for route in routes:
        path = route.path.format(alert_id=alert_id, camera_id="cam-7", sequence=2)
        for method in route.methods:
            for headers in ({}, {"Authorization": "Bearer wrong-token-x"}, {"Authorization": f"Basic {API_TOKEN}"},
                            {"Authorization": API_TOKEN}):
                response = http.request(method, path, headers=headers, json={"note": "x"})
                assert response.status_code == 401, (method, path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
            expected = 422 if path == "/api/feedback" else 200  # past the token: {"note"} is not a feedback body
            assert http.request(method, path, headers=AUTH, json={"note": "x"}).status_code == expected, path
    assert http.get("/health").json() == {"status": "ok", "redis": True}
    assert http.get("/").status_code == 200 and "app.js" in http.get("/").text


def test_cameras_and_heatmaps_come_from_redis(api: tuple[TestClient, AlertsSettings, str]) -> None:
    http, _, alert_id = api
    [camera] = http.get("/api/cameras", headers=AUTH).json()
    assert (camera["camera_id"], camera["line_id"], camera["sequence"]) == ("cam-7", "line-3", 3)
    assert camera["anomalous"] is True
    assert camera["normalised_score"] == 0.7
    image = http.get(camera["overlay_url"], headers=AUTH)  # rendered on request from the stored map and frame
    assert image.headers["content-type"] == "image/png"
    x, y, size = hot_spot(image.content)
    assert size == (64, 48) and abs(x - 40) <= 3 and abs(y - 20) <= 3
    assert http.get("/api/cameras/cam-7/frames/99/overlay.png", headers=AUTH).status_code == 404
    detail = http.get(f"/api/alerts/{alert_id}", headers=AUTH).json()
    assert detail["alert"]["worst_sequence"] == 2 and detail["alert"]["state"] == "firing"
    assert [f["sequence"] for f in detail["frames"]] == [0, 1, 2, 3]
    assert [f["worst"] for f in detail["frames"]] == [False, False, True, False]
    x, y, _ = hot_spot(http.get(detail["heatmap_url"], headers=AUTH).content)
    assert abs(x - 30) <= 3 and abs(y - 20) <= 3
    assert http.get("/api/alerts/nope", headers=AUTH).status_code == 404


def test_an_overlay_is_rendered_once_then_served_from_its_short_lived_cache(
        api: tuple[TestClient, AlertsSettings, str]) -> None:
    http, settings, _ = api
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    heatmap = cache_keys.heatmap_key(prefix, "cam-7", 1)
    first = http.get("/api/cameras/cam-7/frames/1/overlay.png", headers=AUTH).content
    cached = cache_keys.overlay_cache_key(heatmap)
    assert 0 < client.ttl(cached) <= cache_keys.OVERLAY_CACHE_TTL_S
    # A second request does not render: it returns what the cache holds, even if the map changed since.
    client.hset(heatmap, cache_keys.FIELD_MAP, b"not a png")
    assert http.get("/api/cameras/cam-7/frames/1/overlay.png", headers=AUTH).content == first
    # A new frame under the same key (a camera that restarted its sequence numbers) is drawn afresh.
    client.hset(heatmap, cache_keys.FIELD_CAPTURE_NS, 1)
    response = http.get("/api/cameras/cam-7/frames/1/overlay.png", headers=AUTH)
    assert response.status_code == 422 and "16-bit" in response.json()["detail"]
    # A hash from a detector that rendered overlays itself is served as stored.
    client.hset(heatmap, cache_keys.FIELD_OVERLAY, png(hot=(5, 5)))
    assert http.get("/api/cameras/cam-7/frames/1/overlay.png", headers=AUTH).content == png(hot=(5, 5))


def test_alert_list_history_and_acknowledgement(api: tuple[TestClient, AlertsSettings, str]) -> None:
    http, _, alert_id = api
    assert [a["alert_id"] for a in http.get("/api/alerts?state=firing", headers=AUTH).json()] == [alert_id]
    assert http.get("/api/alerts?state=resolved", headers=AUTH).json() == []
    assert http.get("/api/alerts?line=line-9", headers=AUTH).json() == []
    dana = {"Authorization": f"Bearer {DANA_TOKEN}"}
    acked = http.post(f"/api/alerts/{alert_id}/ack", headers=dana, json={"note": "scrap bin 4"}).json()
    assert acked["ack"]["by"] == "dana" and acked["ack"]["note"] == "scrap bin 4"
    again = http.post(f"/api/alerts/{alert_id}/ack", headers=AUTH, json={"note": "seen too"}).json()
    assert again["ack"] == acked["ack"]  # append-only: the first acknowledgement stays
    assert [(a["by"], a["note"]) for a in again["acks"]] == [("dana", "scrap bin 4"), ("operator", "seen too")]
    assert [a["alert_id"] for a in http.get("/api/alerts?state=acknowledged", headers=AUTH).json()] == [alert_id]
    history = http.get("/api/history?camera=cam-7", headers=AUTH).json()
    assert [(h["kind"], h["by"]) for h in history] == [("acknowledged", "operator"), ("acknowledged", "dana"),
                                                       ("firing", "")]
    assert [h["kind"] for h in http.get("/api/history?kind=firing&line=line-3", headers=AUTH).json()] == ["firing"]
    fired_ns = history[-1]["at_ns"]
    assert http.get(f"/api/history?kind=firing&until_ns={fired_ns - 1}", headers=AUTH).json() == []
    assert http.post("/api/alerts/nope/ack", headers=AUTH, json={}).status_code == 404
    metrics = http.get("/metrics", headers=AUTH).text
    assert "linewatch_alerts_firing" in metrics and "linewatch_alerts_deliveries_total" in metrics


def test_camera_health_lists_failing_checks_and_survives_a_damaged_record(
        api: tuple[TestClient, AlertsSettings, str]) -> None:
    from linewatch.health.state import health_key, heartbeat_key, index_key

    http, settings, _ = api
    client, prefix = settings.redis.client(), settings.redis.key_prefix
    # The camera-health service is not reporting: no failing check proves nothing.
    assert http.get("/api/camera-health", headers=AUTH).json() == {"monitored": False, "cameras": [
        {"camera_id": "cam-7", "line_id": "", "health": "unknown", "healthy": False, "checks": []}]}
    client.set(heartbeat_key(prefix), 1, ex=60)  # now it is
    client.hset(health_key(prefix, "cam-7"), mapping={
        "focus": '{"detail": "focus 0.1 < 0.25", "value": 0.1, "threshold": 0.25, "since_ns": 20, "line_id": "l-3"}',
        "exposure": '{"detail": "dark", "since_ns": 10}', "frozen": "not json", "drift": '{"since_ns": "soon"}'})
    client.zadd(index_key(prefix), {"cam-9": 1})  # known to the health service only, healthy again since
    cameras = http.get("/api/camera-health", headers=AUTH).json()["cameras"]
    assert [(c["camera_id"], c["health"], c["healthy"], c["line_id"]) for c in cameras] == [
        ("cam-7", "unhealthy", False, "l-3"), ("cam-9", "healthy", True, "")]
    checks = [(c["check"], c["since_ns"], c["detail"]) for c in cameras[0]["checks"]]
    assert checks == [("drift", 0, ""), ("frozen", 0, "unreadable health record"), ("exposure", 10, "dark"),
                      ("focus", 20, "focus 0.1 < 0.25")]
