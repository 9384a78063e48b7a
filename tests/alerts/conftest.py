"""Fixtures of the alerts tests: a real Alertmanager, a webhook receiver, settings per test."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from alerts_helpers import API_TOKEN, WEBHOOK_SECRET, Webhook

from linewatch.alerts.deliveries.webhook import verify
from linewatch.alerts.settings import AlertsSettings, HttpSettings, RetrySettings, RuleConfig, RulesSettings
from linewatch.common.redis_settings import RedisSettings
from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.deploy.local import free_port

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Alertmanager on a free port (no clustering); yields its base URL."""
    if not Path(ALERTMANAGER).exists():
        pytest.skip(f"{ALERTMANAGER} missing (Debian package prometheus-alertmanager)")
    tmp = tmp_path_factory.mktemp("alertmanager")
    config = tmp / "alertmanager.yml"
    config.write_text("route:\n  receiver: blackhole\n  group_wait: 1s\nreceivers:\n  - name: blackhole\n")
    port = free_port()
    log = (tmp / "alertmanager.log").open("wb")
    proc = subprocess.Popen([ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("alertmanager did not start:\n" + (tmp / "alertmanager.log").read_text())
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """Webhook receiver on a free port; rejects bad signatures with 401."""
    port = free_port()
    hook = Webhook(url=f"http://127.0.0.1:{port}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            signed = verify(WEBHOOK_SECRET, raw, dict(self.headers))
            with hook.lock:
                failing = hook.fail_next > 0
                hook.fail_next -= 1 if failing else 0
                status = 401 if not signed else hook.status_when_failing if failing else 200
                hook.received.append({"body": json.loads(raw), "signed": signed, "accepted": status == 200,
                                      "headers": dict(self.headers)})
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_settings(bootstrap: str, redis_url: str, unique: str) -> Iterator[Callable[..., AlertsSettings]]:
    """Settings on unique topics and Redis prefix; Redis keys are removed afterwards."""
    prefix = f"lwtest-{unique}"

    def build(**overrides: Any) -> AlertsSettings:
        values: dict[str, Any] = {
            "kafka": KafkaSettings(bootstrap_servers=bootstrap),
            "topics": TopicSettings(results=f"results-{unique}", alerts=f"alerts-{unique}",
                                    alert_dead_letters=f"alert-dl-{unique}", partitions=2, replication_factor=1),
            "redis": RedisSettings(url=redis_url, key_prefix=prefix),
            "rules": RulesSettings(default=RuleConfig(k=3, n=5, resolve_after=5, cooldown_s=0.5)),
            "retry": RetrySettings(attempts=3, backoff_s=0.05, max_backoff_s=0.2),
            "http": HttpSettings(enabled=False),
            "group_id": f"alerts-{unique}", "session_timeout_ms": 6000, "api_token": API_TOKEN,
            "alertmanager_resend_s": 3600.0,
        }
        values.update(overrides)
        return AlertsSettings(**values)

    yield build
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def recorder() -> Iterator[dict[str, Any]]:
    """A real HTTP server recording every request; answers with ``statuses`` in turn, then 200."""
    port = free_port()
    state: dict[str, Any] = {"url": f"http://127.0.0.1:{port}", "requests": [], "statuses": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state["requests"].append({"path": self.path, "headers": dict(self.headers), "body": json.loads(raw)})
            status = state["statuses"].pop(0) if state["statuses"] else 200
            payload = json.dumps({"id": len(state["requests"]), "message": "Annotation added"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()
