"""deploy/compose and deploy/docker agree with the real CLI, the settings classes and each other."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import (
    COMPOSE,
    DEPLOY,
    IMAGE_ENV,
    TEST_SECRETS,
    compose_env,
    env_example,
    image_is_pinned,
    linewatch_services,
    load_compose,
)
from deploy_tools import load_compose_model

from linewatch.common.settings import TopicSettings
from linewatch.common.topics import all_topic_names
from linewatch.deploy.cli import build_parser
from linewatch.deploy.settings_doc import COMMAND_SETTINGS, is_known, settings_classes
from linewatch.detector.service.settings import DetectorSettings
from linewatch.health.settings import HealthSettings

# Where each long-running service answers its container health probe.
HEALTH_PATHS = {"detect": "/healthz", "alerts": "/health", "camera": "/metrics", "verdicts": "/metrics",
                "camera-health": "/metrics"}


def settings_under_env(cls: type, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    """Build ``cls`` from exactly ``env`` (no other LINEWATCH_ variable, no .env file)."""
    for name in list(os.environ):
        if name.startswith("LINEWATCH_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(tmp_path)
    return cls()


def test_compose_parses_and_every_image_is_pinned() -> None:
    compose = load_compose()
    services = compose["services"]
    assert {"kafka", "topics", "redis", "prometheus", "alertmanager", "grafana", "detector", "detector-gpu",
            "alerts", "camera-sim", "verdicts", "camera-health", "mosquitto"} <= set(services)
    for name, svc in services.items():
        assert image_is_pinned(svc["image"]), f"{name}: image {svc['image']!r} is not pinned to a tag"
    assert not image_is_pinned("redis") and not image_is_pinned("redis:latest")  # the check itself can fail


def test_kafka_runs_kraft_without_zookeeper() -> None:
    compose = load_compose()
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "CONTROLLER" in kafka["environment"]["KAFKA_CONTROLLER_LISTENER_NAMES"]
    text = COMPOSE.read_text().lower()
    assert "zookeeper" not in text


@pytest.mark.parametrize("service", ["detector", "detector-gpu", "alerts", "camera-sim", "verdicts", "camera-health"])
def test_service_command_env_and_health_match_the_code(service: str, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    svc = linewatch_services(load_compose())[service]
    args = build_parser().parse_args(svc["command"])  # the real parser: exits (fails) on a bad flag
    cls = settings_classes()[COMMAND_SETTINGS[args.command]]
    env = {k: str(v) for k, v in svc["environment"].items()}
    unknown = [name for name in env if name.startswith("LINEWATCH_") and name not in IMAGE_ENV
               and not is_known(cls, name)]
    assert not unknown, f"{service}: no {cls.__name__} field for {unknown}"
    settings = settings_under_env(cls, {k: v for k, v in env.items() if k not in IMAGE_ENV}, monkeypatch, tmp_path)
    assert settings.kafka.bootstrap_servers == "kafka:9092"  # type: ignore[attr-defined]
    # The health probe hits the port the command serves on, at the path the service answers.
    url = env["LINEWATCH_HEALTHCHECK_URL"]
    port = args.port if args.command == "alerts" else args.metrics_port
    assert url == f"http://127.0.0.1:{port}{HEALTH_PATHS[args.command]}"
    if args.command == "detect":
        assert settings.model.as_posix() == "/models/stfpm.safetensors"  # type: ignore[attr-defined]
        assert any(v.endswith(":/models:ro") for v in svc["volumes"])


def test_gpu_detector_reserves_a_gpu_and_joins_the_same_group() -> None:
    services = load_compose()["services"]
    gpu = services["detector-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert gpu["environment"]["LINEWATCH_GROUP_ID"] == services["detector"]["environment"]["LINEWATCH_GROUP_ID"]
    assert gpu["build"]["target"] == "detector-cuda" and gpu["image"].endswith("-detector-cuda")


def test_every_required_variable_is_in_env_example() -> None:
    env = compose_env()
    load_compose(env)  # raises on a ${VAR:?} missing from .env.example
    missing = {name: None for name in re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()) if name not in env}
    assert not missing, f"document these in .env.example: {sorted(missing)}"
    with pytest.raises(AssertionError, match="REDIS_PASSWORD"):
        load_compose({k: v for k, v in env.items() if k != "REDIS_PASSWORD"})
    # No secret value is shipped: with .env.example as is, compose refuses to start.
    assert all(env_example()[name] == "" for name in TEST_SECRETS)
    with pytest.raises(AssertionError, match="compose requires"):
        load_compose(env_example())


def _topic_configs() -> dict[str, dict[str, str]]:
    script = (DEPLOY / "compose" / "create-topics.sh").read_text().replace("\\\n", " ")
    topics = {}
    for line in script.splitlines():
        match = re.match(r"^topic (\S+) \S+ (.*)$", line.strip())
        if match:
            pairs = re.findall(r"([a-z.]+)=(\$\(\([^)]*\)\)|\S+)", match.group(2))
            topics[match.group(1)] = dict(pairs)
    return topics


def test_topic_job_creates_every_topic_with_frame_sized_limits() -> None:
    compose = load_compose()
    topics = _topic_configs()
    health_topic = HealthSettings.model_fields["health_topic"].default
    assert sorted(topics) == sorted([*all_topic_names(TopicSettings()), health_topic])
    frames = topics["frames"]
    assert frames["compression.type"] == "uncompressed"  # JPEG does not compress
    env = env_example()
    topic_max = int(env["FRAMES_MAX_MESSAGE_BYTES"])
    assert frames["max.message.bytes"] == '"$FRAMES_MAX_MESSAGE_BYTES"'
    assert str(compose["services"]["topics"]["environment"]["FRAMES_MAX_MESSAGE_BYTES"]) == str(topic_max)
    assert int(frames["retention.ms"].strip('"').replace("$FRAMES_RETENTION_MS", env["FRAMES_RETENTION_MS"])) > 0
    guard = int(compose["services"]["camera-sim"]["environment"]["LINEWATCH_MAX_MESSAGE_BYTES"])
    # The camera's guard counts the value; headers and batch framing need the rest of the room.
    assert guard + 16 * 1024 <= topic_max
    assert DetectorSettings.model_fields["fetch_max_bytes"].default >= topic_max
    assert int(compose["services"]["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"]) >= topic_max
    assert compose["services"]["camera-sim"]["environment"]["LINEWATCH_CREATE_TOPICS"] == "false"


def test_dockerfile_is_non_root_with_healthcheck_and_pinned_base() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stage_names = set(re.findall(r"^FROM \S+ AS (\S+)", text, re.M))  # FROM a stage reuses it, no new image
    bases = [args.get(m.strip("${}"), m) for m in re.findall(r"^FROM (\S+)", text, re.M) if m not in stage_names]
    assert bases and all(image_is_pinned(image) for image in bases), bases
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    assert "HEALTHCHECK" in text and "linewatch-healthcheck" in text
    assert re.search(r'^ENTRYPOINT \["tini", "--", "linewatch"\]', text, re.M)


def test_healthcheck_script_reports_the_detector_probe() -> None:
    from prometheus_client import CollectorRegistry

    from linewatch.detector.service.health import HealthServer, HealthState

    state = HealthState(stall_after_s=60)
    server = HealthServer(state, CollectorRegistry(), "127.0.0.1", 0).start()
    script = [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")]
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert subprocess.run([*script, url], capture_output=True, timeout=20).returncode == 0
        state.stall_after_s = -1  # the loop now counts as stalled: /healthz answers 503
        failed = subprocess.run([*script, url], capture_output=True, text=True, timeout=20)
        assert failed.returncode == 1 and "503" in failed.stderr
    finally:
        server.stop()
    closed = subprocess.run([*script, url], capture_output=True, text=True, timeout=20)
    assert closed.returncode == 1


# --- finding 11: nothing reachable from outside by default, no password in argv, bounded logs/memory ---

@pytest.mark.integration
@pytest.mark.parametrize("service", ["redis", "state-redis", "grafana", "prometheus", "alertmanager", "alerts", "kafka",
                                     "detector", "detector-gpu", "camera-sim", "topics", "verdicts",
                                     "camera-health", "mosquitto"])
def test_compose_service_is_bounded_and_keeps_secrets_out_of_argv(service: str, deploy_checks: Path) -> None:
    model = load_compose_model(deploy_checks)  # `docker-compose ... config --format json`, gpu profile on
    svc = model["services"][service]
    for port in svc.get("ports", []):
        assert port.get("host_ip") == "127.0.0.1", f"{service} publishes {port} on every interface"
    assert svc["logging"]["driver"] == "json-file" and svc["logging"]["options"]["max-size"], service
    assert int(svc["logging"]["options"]["max-file"]) >= 1
    assert int(svc["mem_limit"]) > 0, f"{service} has no memory limit"
    argv = " ".join(str(part) for key in ("command", "entrypoint") for part in (svc.get(key) or []))
    health = " ".join(svc.get("healthcheck", {}).get("test", []))
    readme_values = dict(re.findall(r"(\w+)=(ci-only-[\w-]+)", (DEPLOY / "README.md").read_text()))
    assert readme_values, "README's check block exports the CI secrets"
    for value in readme_values.values():  # the values the check block ran compose with
        assert value not in argv and value not in health, f"{service}: a secret is on the command line"
    assert "--web.enable-lifecycle" not in argv
    if service in ("redis", "state-redis"):
        secret = service.replace("-", "_") + "_password"
        assert "REDISCLI_AUTH" not in (svc.get("environment") or {}) and f"/run/secrets/{secret}" in argv
        assert [s["source"] for s in svc["secrets"]] == [secret]
    if service == "grafana":
        assert "GF_SECURITY_ADMIN_PASSWORD" not in svc["environment"]
        assert svc["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
