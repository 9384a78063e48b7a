"""MQTT sink: one JSON message per verdict on ``<prefix>/<line>/<camera>``, QoS 1 by default.

Verdict messages are never retained: a gate controller that (re)subscribes must not act on an old
part's verdict. ``<prefix>/status`` is retained: ``online`` while the service runs, ``offline`` when it
stops, and the broker publishes ``offline`` itself (last will) when the service dies, so the PLC can
fall back to rejecting parts.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
import time

import paho.mqtt.client as mqtt

from linewatch.errors import BrokerError
from linewatch.plant.settings import MqttSettings
from linewatch.plant.verdict import Verdict

log = logging.getLogger(__name__)

_TOPIC_UNSAFE = str.maketrans({"/": "_", "+": "_", "#": "_", "\0": "_"})


class SinkError(BrokerError, RuntimeError):
    """A sink did not take a verdict; the batch is retried."""


def topic_level(name: str) -> str:
    """``name`` made safe as one MQTT topic level (no separators or wildcards)."""
    return name.translate(_TOPIC_UNSAFE) or "_"


def verdict_topic(prefix: str, line_id: str, camera_id: str) -> str:
    """The topic a camera's verdicts go to."""
    return f"{prefix}/{topic_level(line_id)}/{topic_level(camera_id)}"


class MqttSink:
    """Publishes verdicts; ``flush`` waits until the broker acknowledged every message sent so far.

    A batch that is not acknowledged is sent again, so a subscriber can see a sequence twice after a
    broker outage (at least once); it keeps the first and ignores sequences at or below the last seen.
    """

    name = "mqtt"

    def __init__(self, settings: MqttSettings, connect_timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.status_topic = f"{settings.topic_prefix}/status"
        self.pending: list[mqtt.MQTTMessageInfo] = []
        self.connected = threading.Event()
        self.closing = False
        client_id = settings.client_id or f"linewatch-verdicts-{socket.gethostname()}-{os.getpid()}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else None
            self.client.username_pw_set(settings.username, password)
        if settings.tls:
            self.client.tls_set(ca_certs=settings.tls_ca_file, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.will_set(self.status_topic, b"offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 5)
        self.client.connect_async(settings.host, settings.port, keepalive=settings.keepalive_s)
        self.client.loop_start()
        if not self.connected.wait(connect_timeout_s):
            log.warning("MQTT broker %s:%d not reachable yet; verdicts queue until it is",
                        settings.host, settings.port)

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object, reason: object,
                    _props: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("MQTT connection refused: %s", reason)
            return
        self.connected.set()
        client.publish(self.status_topic, b"online", qos=1, retain=True)
        log.info("MQTT connected to %s:%d", self.settings.host, self.settings.port)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: object, _flags: object, reason: object,
                       _props: object) -> None:
        self.connected.clear()
        if not self.closing:
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def send(self, verdict: Verdict) -> None:
        """Queue one verdict (returns at once)."""
        if not self.connected.wait(self.settings.ack_timeout_s):
            raise SinkError(f"MQTT broker {self.settings.host}:{self.settings.port} is not connected")
        topic = verdict_topic(self.settings.topic_prefix, verdict.line_id, verdict.camera_id)
        info = self.client.publish(topic, verdict.model_dump_json().encode(), qos=self.settings.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise SinkError(f"MQTT publish to {topic} failed: {mqtt.error_string(info.rc)}")
        self.pending.append(info)

    def flush(self) -> None:
        """Wait for the broker's acknowledgements of everything sent; raises SinkError on timeout."""
        deadline = time.monotonic() + self.settings.ack_timeout_s
        pending, self.pending = self.pending, []
        for info in pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _acknowledged(info, remaining):
                raise SinkError(f"MQTT broker did not acknowledge within {self.settings.ack_timeout_s} s")

    def close(self) -> None:
        """Publish ``offline`` and disconnect."""
        self.closing = True
        if self.connected.is_set():
            self.client.publish(self.status_topic, b"offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()


def _acknowledged(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):  # paho: queue full / not connected and not queued
        return False
    return info.is_published()
