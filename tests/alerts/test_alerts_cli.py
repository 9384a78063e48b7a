"""``linewatch alerts`` runs consumer and API in one process and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from alerts_helpers import API_TOKEN

from linewatch.deploy.local import free_port


def test_cli_serves_health_and_metrics_then_stops_on_sigterm(bootstrap: str, redis_url: str, unique: str) -> None:
    port = free_port()
    env = {**os.environ, "LINEWATCH_API_TOKEN": API_TOKEN, "LINEWATCH_TOPICS__RESULTS": f"results-{unique}",
           "LINEWATCH_TOPICS__ALERTS": f"alerts-{unique}", "LINEWATCH_TOPICS__ALERT_DEAD_LETTERS": f"adl-{unique}",
           "LINEWATCH_GROUP_ID": f"cli-{unique}", "LINEWATCH_REDIS__KEY_PREFIX": f"lwtest-{unique}",
           "LINEWATCH_SESSION_TIMEOUT_MS": "6000"}
    proc = subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli", "alerts", "--port", str(port),
                             "--bootstrap-servers", bootstrap, "--redis-url", redis_url],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()  # type: ignore[union-attr]
                time.sleep(0.2)
        assert health.json() == {"status": "ok", "redis": True}
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {API_TOKEN}"})
        assert "linewatch_alerts_fired_total" in metrics.text
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
