"""Compose wiring of `verdicts`, `camera-health` and their Mosquitto, checked against the code and, for
Mosquitto, by running the compose start-up script and configuration with the Debian mosquitto."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from deploy_helpers import DEPLOY, TEST_SECRETS, compose_env, load_compose
from deploy_tools import run_tool

from linewatch.deploy.cli import build_parser
from linewatch.deploy.local import free_port, wait_for_port
from linewatch.plant.settings import MqttSettings

MOSQUITTO_DIR = DEPLOY / "compose" / "mosquitto"
PREFIX = MqttSettings().topic_prefix  # the service's default; compose does not change it


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def test_verdicts_publish_to_the_bundled_broker_as_its_publishing_user() -> None:
    verdicts, mosquitto = services()["verdicts"], services()["mosquitto"]
    env = verdicts["environment"]
    assert env["LINEWATCH_MQTT__HOST"] == "mosquitto" and str(env["LINEWATCH_MQTT__PORT"]) == "1883"
    assert verdicts["depends_on"]["mosquitto"] == {"condition": "service_healthy"}
    assert env["LINEWATCH_MQTT__PASSWORD"] == TEST_SECRETS["MQTT_PASSWORD"]
    assert "LINEWATCH_MQTT__TOPIC_PREFIX" not in env, "the ACL file grants the default prefix only"
    script = mosquitto["command"][0]
    # The publishing user's password file line takes the secret the verdicts service is given.
    assert f"{env['LINEWATCH_MQTT__USERNAME']}:%s" in script and "/run/secrets/mqtt_password" in script
    assert [s for s in mosquitto["secrets"]] == ["mqtt_password", "mqtt_plc_password"]
    acl = (MOSQUITTO_DIR / "acl").read_text()
    assert f"user {env['LINEWATCH_MQTT__USERNAME']}\ntopic readwrite {PREFIX}/#" in acl
    assert f"user plc\ntopic read {PREFIX}/#" in acl


def test_camera_health_reads_the_detectors_checkpoint_and_posts_to_alertmanager() -> None:
    health, detector = services()["camera-health"], services()["detector"]
    args = build_parser().parse_args(health["command"])
    assert args.alertmanager_url == "http://alertmanager:9093" and "alertmanager" in health["depends_on"]
    assert args.reference_checkpoint == [detector["environment"]["LINEWATCH_MODEL"]]
    assert any(v.endswith(":/models:ro") for v in health["volumes"])
    assert health["depends_on"]["redis"] == {"condition": "service_healthy"}  # suspect marking lives in Redis


@pytest.mark.integration
def test_readmes_plant_broker_override_is_valid_compose(tmp_path: Path) -> None:
    readme = (DEPLOY / "README.md").read_text()
    section = readme[readme.index("## Verdicts to the plant"):]
    override = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert override, "the README's compose.override.yaml example"
    shutil.copytree(DEPLOY / "compose", tmp_path / "compose")
    (tmp_path / "compose" / "compose.override.yaml").write_text(override.group(1))
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in compose_env().items()))
    result = run_tool(["docker-compose", "-f", "compose.yaml", "-f", "compose.override.yaml", "--env-file",
                       str(env_file), "config", "--format", "json"], cwd=tmp_path / "compose")
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)["services"]["verdicts"]
    assert verdicts["environment"]["LINEWATCH_MQTT__HOST"] != "mosquitto"
    assert "mosquitto" not in verdicts["depends_on"], "--scale mosquitto=0 would still start it"


# --- the bundled Mosquitto, run for real --------------------------------------------------------------


class Broker:
    """The compose mosquitto service's start-up script and configuration on local free ports."""

    def __init__(self, folder: Path, passwords: dict[str, str]) -> None:
        self.port, self.probe_port = free_port(), free_port()
        self.passwords = passwords
        secrets_dir, run_dir, data_dir = folder / "secrets", folder / "run", folder / "data"
        for path in (secrets_dir, data_dir):
            path.mkdir()
        (secrets_dir / "mqtt_password").write_text(passwords["linewatch"])
        (secrets_dir / "mqtt_plc_password").write_text(passwords["plc"])
        config = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
        config = (config.replace("/tmp/mosquitto/", f"{run_dir}/").replace("/mosquitto/config/", f"{MOSQUITTO_DIR}/")
                  .replace("/mosquitto/data/", f"{data_dir}/")
                  .replace("listener 1883\n", f"listener {self.port} 127.0.0.1\n")
                  .replace("listener 1880 127.0.0.1\n", f"listener {self.probe_port} 127.0.0.1\n"))
        config += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # run as the test's user: no privilege drop
        (folder / "mosquitto.conf").write_text(config)
        script = (services()["mosquitto"]["command"][0].replace("/run/secrets/", f"{secrets_dir}/")
                  .replace("/tmp/mosquitto", str(run_dir))
                  .replace("/mosquitto/config/mosquitto.conf", str(folder / "mosquitto.conf"))
                  .replace("chown -R mosquitto:mosquitto", f"chown -R {os.getuid()}:{os.getgid()}"))
        self.log = (folder / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, 15.0, self.proc)
        self.password_file = (run_dir / "passwd").read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("needs the Debian package mosquitto")
    running = Broker(tmp_path, {"linewatch": "pub-" + TEST_SECRETS["MQTT_PASSWORD"],
                                "plc": "plc-" + TEST_SECRETS["MQTT_PLC_PASSWORD"]})
    yield running
    running.stop()


class Client:
    """A paho client that records what it receives and the outcome of its connection."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.connect_reason: Any = None
        self.connected, self.subscribed, self.got = threading.Event(), threading.Event(), threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{free_port()}")
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connect_reason = reason
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append((msg.topic, msg.payload))
        self.got.set()

    def accepted(self) -> bool:
        assert self.connected.wait(10), "no CONNACK"
        return not self.connect_reason.is_failure

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_bundled_mosquitto_lets_only_verdicts_publish_and_plcs_read(broker: Broker) -> None:
    assert broker.passwords["linewatch"] not in broker.password_file, "mosquitto_passwd -U hashed nothing"
    publisher = Client(broker.port, "linewatch", broker.passwords["linewatch"])
    plc = Client(broker.port, "plc", broker.passwords["plc"])
    anonymous = Client(broker.port)
    wrong = Client(broker.port, "plc", "not-the-password")
    try:
        assert publisher.accepted() and plc.accepted()
        assert not anonymous.accepted() and not wrong.accepted()
        plc.subscribe(f"{PREFIX}/#")
        # A PLC's publish is refused by the ACL (MQTT 3.1.1 drops it silently), so the marker that
        # follows it from the verdicts user is the first message the subscriber sees.
        plc.publish(f"{PREFIX}/line-1/cam-1", b'{"verdict": "pass", "forged": true}')
        publisher.publish(f"{PREFIX}/line-1/cam-1", b'{"verdict": "reject"}')
        assert plc.got.wait(10), "the verdicts user's message never arrived"
        assert plc.received[0] == (f"{PREFIX}/line-1/cam-1", b'{"verdict": "reject"}')
    finally:
        for client in (publisher, plc, anonymous, wrong):
            client.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_probe_listener_answers_the_healthcheck_but_shows_no_verdict(broker: Broker) -> None:
    health = services()["mosquitto"]["healthcheck"]["test"]
    assert health[0] == "CMD" and health[health.index("-p") + 1] == "1880"
    probe = [part.replace("1880", str(broker.probe_port)) for part in health[1:]]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.strip().startswith("mosquitto version"), result.stderr
    publisher = Client(broker.port, "linewatch", broker.passwords["linewatch"])
    snooper = Client(broker.probe_port)
    try:
        assert publisher.accepted() and snooper.accepted()
        snooper.subscribe(f"{PREFIX}/#")
        publisher.publish(f"{PREFIX}/line-1/cam-1", b'{"verdict": "pass"}')
        # The broker sends in order: a verdict it let through would arrive before this retained message.
        snooper.subscribed.clear()
        snooper.subscribe("$SYS/broker/version")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(t.startswith("$SYS") for t, _ in snooper.received):
            snooper.got.wait(0.2)
        assert [t for t, _ in snooper.received] == ["$SYS/broker/version"], snooper.received
    finally:
        publisher.close()
        snooper.close()
