"""Every dashboard panel and recording rule returns data from a real Prometheus scraping the real services.

A short stream on the local broker: two cameras sending synthetic parts (half defective) and one
camera whose size guard rejects every frame (camera drops), a detector with a tiny model, the
alerts service delivering to a real Alertmanager (started with the committed config), the camera-health
service (so the dashboard's camera-health row is checked against the metrics it really exports), one
garbage record (a dead letter). Prometheus runs the committed prometheus.yml and rules with 1 s intervals.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_helpers import DEPLOY
from stream_helpers import (
    ALERTMANAGER,
    API_TOKEN,
    PROMETHEUS,
    Running,
    create_topics,
    produce_garbage,
    prometheus_config,
    query,
    start_alertmanager,
    wait_http,
)

from linewatch.deploy.dashboards import load_dashboards
from linewatch.deploy.local import free_port

HEALTH_JOB = "linewatch-camera-health"
pytestmark = pytest.mark.skipif(not (Path(PROMETHEUS).exists() and Path(ALERTMANAGER).exists()),
                                reason="needs the Debian packages prometheus and prometheus-alertmanager")


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every dashboard target, Grafana variables set to 'All'."""
    found = []
    for dashboard in load_dashboards():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):  # rows have none
                found.append((f"{dashboard['uid']}/{panel['title']}", re.sub(r"\$(line|camera)\b", ".*",
                                                                            target["expr"])))
    return found


def recording_rules() -> list[str]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "recording.yml").read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"]]


def test_promtool_accepts_config_and_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    rules = sorted(str(p) for p in (DEPLOY / "prometheus" / "rules").glob("*.yml"))
    checked = subprocess.run([promtool, "check", "rules", *rules], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert config.returncode == 0, config.stdout + config.stderr


def start_line(running: Running, bootstrap: str, redis_url: str, unique: str, model: Path, tmp: Path,
               alertmanager: str) -> None:
    """Detector, alerts service and three cameras in threads, each serving its real /metrics."""
    from linewatch.alerts.metrics import AlertsMetrics
    from linewatch.alerts.service import run_alerts
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.detector.service import DetectorSettings, run_detector
    from linewatch.ingest.camera import run_camera
    from linewatch.ingest.metrics import CameraMetrics, serve_metrics
    from linewatch.ingest.settings import CameraSettings

    topics = {"frames": f"frames-{unique}", "results": f"results-{unique}", "breaches": f"breaches-{unique}",
              "dead_letters": f"dl-{unique}", "alerts": f"alerts-{unique}", "alert_dead_letters": f"adl-{unique}"}
    create_topics(bootstrap, topics)
    kafka = {"bootstrap_servers": bootstrap}
    redis = {"url": redis_url, "key_prefix": f"lwdeploy-{unique}"}
    running.ports.update(detector=free_port(), alerts=free_port(), prometheus=free_port())
    detector = DetectorSettings(kafka=kafka, topics=topics, redis=redis, model=model, device="cpu",  # type: ignore[arg-type]
                                group_id=f"det-{unique}", session_timeout_ms=6000, metrics_host="127.0.0.1",
                                metrics_port=running.ports["detector"], max_batch_size=8, max_wait_ms=30,
                                statistics_interval_ms=1000, torch_threads=1)
    running.thread("detector", run_detector, detector, running.stop)
    alerts = AlertsSettings(kafka=kafka, topics=topics, redis=redis, group_id=f"alerts-{unique}",  # type: ignore[arg-type]
                            session_timeout_ms=6000, api_token=API_TOKEN, alertmanager_url=alertmanager,
                            rules={"default": {"k": 1, "n": 1, "min_score": 0.0, "resolve_after": 1,
                                               "cooldown_s": 0}},
                            http={"host": "127.0.0.1", "port": running.ports["alerts"], "metrics_public": True},
                            retry={"attempts": 2, "backoff_s": 0.1})
    running.thread("alerts", run_alerts, alerts, running.stop, AlertsMetrics())
    start_health(running, kafka, topics, redis, unique)
    metrics = CameraMetrics()
    running.ports["camera"] = serve_metrics(free_port(), metrics.registry, addr="127.0.0.1")
    cameras = [("cam-a", "line-1", {}), ("cam-b", "line-2", {}),
               ("cam-x", "line-2", {"max_message_bytes": 1024, "oversize_policy": "reject"})]
    for camera_id, line_id, extra in cameras:
        settings = CameraSettings(camera_id=camera_id, line_id=line_id, fps=8, kafka=kafka, topics=topics,  # type: ignore[arg-type]
                                  source="synthetic:?defect_probability=0.5&size=64", create_topics=False,
                                  state_dir=tmp / "state", **extra)
        running.thread(camera_id, run_camera, settings, stop_event=running.stop, metrics=metrics)
    produce_garbage(bootstrap, topics["frames"])


def start_health(running: Running, kafka: dict[str, Any], topics: dict[str, str], redis: dict[str, str],
                 unique: str) -> None:
    """``linewatch camera-health`` on the same topics, short windows so that every gauge is set within seconds."""
    from linewatch.health.metrics import HealthMetrics
    from linewatch.health.service import run_health
    from linewatch.health.settings import HealthSettings

    running.ports["health"] = free_port()
    settings = HealthSettings(kafka=kafka, topics=topics, redis=redis, group_id=f"health-{unique}",  # type: ignore[arg-type]
                              health_topic=f"health-{unique}", start_from="earliest", metrics_host="127.0.0.1",
                              metrics_port=running.ports["health"], baseline_ttl_s=60,  # no stored baseline outlives it
                              checks={"default": {"baseline_frames": 5, "drift_window": 5}})  # type: ignore[arg-type]
    running.thread("camera-health", run_health, settings, running.stop, HealthMetrics())


def start_prometheus_with_health(running: Running, tmp: Path) -> str:
    """The committed config (as the stream helpers adapt it) with the camera-health job on this test's port."""
    path = prometheus_config(tmp, running.ports)
    config = yaml.safe_load(path.read_text())
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] != HEALTH_JOB] + [
        {"job_name": HEALTH_JOB, "static_configs": [{"targets": [f"127.0.0.1:{running.ports['health']}"]}]}]
    path.write_text(yaml.safe_dump(config))
    port, log = running.ports["prometheus"], tmp / "prometheus.log"
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    running.processes.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/-/ready", proc, log)
    return url


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a finite value."""
    return any(math.isfinite(float(series["value"][1])) for series in result)


@pytest.mark.timeout(240)
def test_every_panel_and_recording_rule_returns_data(bootstrap: str, redis_url: str, unique: str,
                                                     deploy_model: Path, tmp_path: Path) -> None:
    expressions = panel_queries() + [(f"recording rule {name}", name) for name in recording_rules()]
    assert len(expressions) >= 20
    from linewatch.health.metrics import HealthMetrics

    health_metrics = {m.name for m in HealthMetrics().registry.collect()}
    assert sum(any(name in expr for name in health_metrics) for _, expr in expressions) >= 8  # the health row
    running = Running()
    try:
        alertmanager = start_alertmanager(running, tmp_path)
        start_line(running, bootstrap, redis_url, unique, deploy_model, tmp_path, alertmanager)
        prometheus = start_prometheus_with_health(running, tmp_path)
        deadline = time.monotonic() + 120
        missing = expressions
        while missing and time.monotonic() < deadline:
            time.sleep(2)
            missing = [(title, expr) for title, expr in missing if not has_data(query(prometheus, expr))]
        assert not missing, "no data for:\n" + "\n".join(f"{title}: {expr}" for title, expr in missing)
        # Grafana's variable queries: label_values(metric, label) over the same metric.
        for label in ("line", "camera"):
            answer = httpx.get(f"{prometheus}/api/v1/label/{label}/values",
                               params={"match[]": "linewatch_detector_frames_processed_total"}, timeout=10).json()
            assert len(answer["data"]) >= 2, (label, answer)
        # Every rule (recording and alerting) evaluates without error; all scrape targets are up.
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= len(recording_rules()) + 5
        assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
        assert {s["metric"]["job"] for s in query(prometheus, "up == 1")} == {
            "linewatch-detector", "linewatch-alerts", "linewatch-camera", HEALTH_JOB, "prometheus"}
    finally:
        running.close()
    assert not [t.name for t in running.threads if t.is_alive()], "a service did not stop on request"
