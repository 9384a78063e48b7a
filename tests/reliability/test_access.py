"""Access: the operator API over real HTTP refuses missing/wrong tokens, records who acknowledged,
secrets never reach logs or /metrics, and SASL/TLS/AUTH options reach the client configurations."""

from __future__ import annotations

import logging
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from confluent_kafka import Producer
from fastapi.routing import APIRoute
from helpers.faults import Receiver, create_topics, report, wait_until
from test_crash import _results_stream
from test_outages import _detector

from linewatch.alerts.api import create_app
from linewatch.alerts.metrics import AlertsMetrics
from linewatch.alerts.service import run_alerts
from linewatch.alerts.settings import AlertsSettings
from linewatch.deploy.local import free_port, redis_server_binary
from linewatch.detector.service import DetectorSettings
from linewatch.ingest.metrics import CameraMetrics
from linewatch.ingest.producer import FrameProducer
from linewatch.ingest.settings import CameraSettings

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
SECRETS = {"api": "Zq81xvB3_kLm9PqRt2WsYh6JdNc4Fg7Ue0IoKa5VbX1", "user": "Pk27aaM8_nQx3RtVw5ZyLb9HcDf2Gj6Kp0Ts4Ue7Wi1",
           "webhook": "hook-secret-Wm44pe",
           "sasl": "sasl-pass-Jr90kd", "redis": "redis-pass-Tn63bc", "key": "ssl-key-pass-Hf12yu"}


@pytest.fixture
def secured_redis(tmp_path: Path) -> Any:
    """A throwaway redis-server that requires a password (AUTH)."""
    import subprocess

    from linewatch.deploy.local import wait_for_port

    port = free_port()
    proc = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--requirepass", SECRETS["redis"], "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 15, proc)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.mark.timeout(600)
def test_api_refuses_without_token_and_no_secret_leaks(bootstrap: str, secured_redis: str, unique: str,
                                                       tiny_model: Path, caplog: pytest.LogCaptureFixture,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    kafka = {"bootstrap_servers": bootstrap, "sasl_username": "svc", "sasl_password": SECRETS["sasl"],
             "ssl_key_password": SECRETS["key"]}
    redis_cfg = {"url": secured_redis, "password": SECRETS["redis"], "key_prefix": f"lwr-{unique}"}
    webhook = Receiver()  # answers 500 for a while: error paths log too
    webhook.set_mode("error")
    port = free_port()
    settings = AlertsSettings(
        kafka=kafka, redis=redis_cfg,  # type: ignore[arg-type]
        topics={"results": f"results-{unique}", "alerts": f"alerts-{unique}",  # type: ignore[arg-type]
                "alert_dead_letters": f"adl-{unique}", "partitions": 1},
        http={"host": "127.0.0.1", "port": port, "public_base_url": f"http://127.0.0.1:{port}"},  # type: ignore[arg-type]
        retry={"attempts": 3, "backoff_s": 0.05, "max_backoff_s": 0.1},  # type: ignore[arg-type]
        api_token=SECRETS["api"], api_users={"dana": SECRETS["user"]},  # type: ignore[arg-type]
        webhook_url=webhook.url, webhook_secret=SECRETS["webhook"], group_id=f"alerts-{unique}",  # type: ignore[arg-type]
        session_timeout_ms=6000)
    create_topics(bootstrap, {settings.topics.results: 1})
    producer = Producer({"bootstrap.servers": bootstrap})
    for r in _results_stream(random.Random(3), 40)[:80]:
        producer.produce(settings.topics.results, key=r.camera_id, value=r.model_dump_json())
    assert producer.flush(15) == 0
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters")}
    detector = _detector(bootstrap, secured_redis, topics, unique, tiny_model)
    detector.settings = DetectorSettings(**{**detector.settings.model_dump(), "kafka": kafka, "redis": redis_cfg,
                                            "metrics_port": 0, "metrics_host": "127.0.0.1"})
    stop = threading.Event()
    threads = [threading.Thread(target=run_alerts, args=(settings, stop), daemon=True),
               threading.Thread(target=detector.run, daemon=True)]
    for thread in threads:
        thread.start()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {SECRETS['api']}"}
    try:
        wait_until(lambda: _up(base), 60, "the operator API")
        wait_until(lambda: len(webhook.received) >= 3, 60, "failing webhook deliveries")
        webhook.set_mode("ok")
        alert_id = None

        def fired() -> bool:
            nonlocal alert_id
            alerts = httpx.get(f"{base}/api/alerts", headers=auth).json()
            alert_id = alerts[0]["alert_id"] if alerts else None
            return alert_id is not None

        wait_until(fired, 60, "an alert")
        routes = [r for r in create_app(settings, AlertsMetrics(), redis.Redis()).routes
                  if isinstance(r, APIRoute) and r.path not in ("/health", "/livez", "/")]
        refused = 0
        for route in routes:
            path = route.path.format(alert_id=alert_id, camera_id="cam-0", sequence=1)
            for method in route.methods:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {SECRETS['api']}x"},
                                {"Authorization": SECRETS["api"]}):
                    response = httpx.request(method, base + path, headers=headers, json={})
                    assert response.status_code == 401, (method, path, headers)
                    refused += 1
        assert httpx.get(f"{base}/health").status_code == 200
        acked = httpx.post(f"{base}/api/alerts/{alert_id}/ack", json={"note": "seen"},
                           headers={"Authorization": f"Bearer {SECRETS['user']}"}).json()
        assert acked["ack"]["by"] == "dana"
        wait_until(lambda: detector.health_port is not None, 60, "the detector's metrics port")
        exposed = httpx.get(f"{base}/metrics", headers=auth).text + \
            httpx.get(f"http://127.0.0.1:{detector.health_port}/metrics").text
        time.sleep(2)
    finally:
        stop.set()
        detector.stop_event.set()
        for thread in threads:
            thread.join(60)
        webhook.close()
    out, err = capfd.readouterr()
    logs = caplog.text + out + err + exposed + repr(settings) + repr(detector.settings)
    leaks = sorted(name for name, secret in SECRETS.items() if secret in logs)
    figures = {"routes_checked": len(routes), "refusals": refused, "ack_by": acked["ack"]["by"],
               "log_and_metrics_chars_scanned": len(logs), "secrets_leaked": leaks}
    report("access.api_and_secrets", figures)
    assert len(routes) >= 9 and not leaks


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_sasl_tls_and_redis_auth_options_reach_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"LINEWATCH_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "LINEWATCH_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
           "LINEWATCH_KAFKA__SASL_USERNAME": "svc", "LINEWATCH_KAFKA__SASL_PASSWORD": SECRETS["sasl"],
           "LINEWATCH_KAFKA__SSL_CA_LOCATION": "/etc/ca.pem", "LINEWATCH_KAFKA__SSL_KEY_PASSWORD": SECRETS["key"],
           "LINEWATCH_REDIS__URL": "redis://cache:6380/2", "LINEWATCH_REDIS__USERNAME": "lw",
           "LINEWATCH_REDIS__PASSWORD": SECRETS["redis"], "LINEWATCH_REDIS__SSL": "true",
           "LINEWATCH_REDIS__SSL_CA_CERTS": "/etc/redis-ca.pem", "LINEWATCH_API_TOKEN": SECRETS["api"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    wanted = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "svc",
              "sasl.password": SECRETS["sasl"], "ssl.ca.location": "/etc/ca.pem", "ssl.key.password": SECRETS["key"]}
    detector = DetectorSettings()
    configs = {"detector_consumer": detector.consumer_config(), "detector_producer": detector.producer_config()}
    seen: list[dict[str, Any]] = []
    import confluent_kafka

    class Recording:  # records the configuration a client is built with, builds nothing
        def __init__(self, config: dict[str, Any]) -> None:
            seen.append(config)

    monkeypatch.setattr("linewatch.ingest.producer.Producer", Recording)
    FrameProducer(CameraSettings().kafka, "frames", CameraMetrics())
    configs["camera_producer"] = seen.pop()
    monkeypatch.setattr("linewatch.alerts.service.Producer", Recording)
    monkeypatch.setattr("linewatch.alerts.service.Consumer", Recording)
    from linewatch.alerts.service import AlertsService

    AlertsService(AlertsSettings())
    configs["alerts_producer"], configs["alerts_consumer"] = seen[-2], seen[-1]
    assert confluent_kafka.Producer is not Recording
    for name, config in configs.items():
        assert {k: config.get(k) for k in wanted} == wanted, name
    for client in (detector.redis.client(), AlertsSettings().redis.client()):
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["password"], kwargs["username"], kwargs["port"], kwargs["db"]) == (SECRETS["redis"], "lw",
                                                                                          6380, 2)
        assert kwargs["ssl_ca_certs"] == "/etc/redis-ca.pem"
        assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    for text in (repr(detector), str(detector.model_dump()), repr(AlertsSettings())):
        assert not any(secret in text for secret in SECRETS.values())
    report("access.client_configs", {"clients_checked": len(configs) + 2, "options_per_kafka_client": len(wanted)})
