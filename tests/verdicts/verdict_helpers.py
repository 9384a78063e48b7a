"""Real services for the verdicts tests: a Mosquitto of our own, an asyncua 'PLC', an MQTT recorder."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from asyncua import Server, ua
from asyncua.common.callback import CallbackType

from linewatch.deploy.local import free_port
from linewatch.detector.events import FrameResult, Latency
from linewatch.plant.aio import LoopThread


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


class MqttRecorder:
    """Subscribes to a topic filter and keeps every message (topic, JSON body) in arrival order."""

    def __init__(self, port: int, topic_filter: str, client_id: str | None = None) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        durable = client_id is not None  # a durable session keeps its subscription across reconnects
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"recorder-{free_port()}",
                                  clean_session=not durable)
        self.client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "recorder did not subscribe"

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body: Any = json.loads(msg.payload)
        except ValueError:
            body = msg.payload.decode(errors="replace")
        with self.lock:
            self.messages.append((msg.topic, body))

    def verdicts(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, body in self.messages if isinstance(body, dict)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


PLC_FIELDS = {"verdict": ("Verdict", ua.VariantType.String), "reject": ("Reject", ua.VariantType.Boolean),
              "late": ("Late", ua.VariantType.Boolean), "score": ("Score", ua.VariantType.Float),
              "sequence": ("Sequence", ua.VariantType.Int32)}


class FakePlc:
    """A real asyncua server standing in for a PLC: writable ``Gate.<camera>.<Field>`` nodes in ns=2,
    and a record of every write request in the order the server applied them."""

    def __init__(self, cameras: list[str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/plc/"
        self.loop = LoopThread("fake-plc")
        self.server = Server()
        self.writes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.loop.call(self._start(cameras), 60)

    async def _start(self, cameras: list[str]) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        ns = await self.server.register_namespace("urn:test:plc")
        assert ns == 2
        gate = await self.server.nodes.objects.add_object(ua.NodeId("Gate", ns), "Gate")
        for camera in cameras:
            for browse, vtype in PLC_FIELDS.values():
                initial = ua.Variant(ua.get_default_value(vtype), vtype)
                var = await gate.add_variable(ua.NodeId(f"Gate.{camera}.{browse}", ns), f"{camera}.{browse}",
                                              initial.Value, vtype)
                await var.set_writable()
        self.server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        await self.server.start()

    def _on_write(self, event: Any, _dispatcher: Any) -> None:
        request = {str(w.NodeId.Identifier): w.Value.Value.Value for w in event.request_params.NodesToWrite}
        if not any(node.startswith("Gate.") for node in request):
            return  # the server's own status updates also pass through this callback
        with self.lock:
            self.writes.append(request)

    def template(self) -> dict[str, str]:
        """Node template for the verdicts settings (every PLC field)."""
        return {name: f"ns=2;s=Gate.{{camera}}.{browse}" for name, (browse, _) in PLC_FIELDS.items()}

    def recorded(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.writes)

    def stop(self) -> None:
        self.loop.call(self.server.stop(), 30)
        self.loop.stop()


def result(camera: str, sequence: int, score: float, *, capture_ns: int, line: str = "line-1",
           extra: dict[str, Any] | None = None) -> bytes:
    """A results-topic record value (JSON) for one frame."""
    body = FrameResult(camera_id=camera, line_id=line, sequence=sequence, capture_ns=capture_ns,
                       image_score=score * 2, normalised_score=score, anomalous=score >= 0.5, threshold=1.0,
                       model_version="m-test", heatmap_key=None,
                       latency=Latency(queue_ms=1, decode_ms=1, inference_ms=1, end_to_end_ms=3)).model_dump()
    body.update(extra or {})
    return json.dumps(body).encode()
