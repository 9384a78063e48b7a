"""Changeover from the line: the PLC flips the product mid-stream, over a real Mosquitto or a real OPC UA server.

A real camera follows the product source and publishes to the real broker; a real detector follows the registry
(SQLite), where brackets and gears each have a promoted model. The PLC announces the changeover with its own
timestamp (MQTT JSON ``since_ns``; OPC UA SourceTimestamp) set between two frames' capture times. Three frames
captured before that time reach the camera's publisher only after the changeover was heard (the frames in flight
at the switch, as in a camera's buffer): they must still go to the old product's model. Every frame must be scored
once, by the model promoted for the product in force at its capture time, not at its publishing or processing time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from asyncua import Server, ua
from helpers.mosquitto import Mosquitto
from registry_helpers import create_topics, delete_test_keys
from test_registry_e2e import _read, _settings, _wait_for

from linewatch.deploy.local import free_port
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.store import FolderStore
from linewatch.detector.service import DetectorService
from linewatch.ingest.camera import Camera
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.sources import CapturedFrame, Source
from linewatch.ingest.synthetic import render_sample
from linewatch.plant.aio import LoopThread

pytestmark = pytest.mark.integration

FRAMES = 12
SWITCH_AFTER = 5  # frames 0..5 are captured before the PLC's changeover time, 6.. after it
IN_FLIGHT_FROM = 3  # frames 3..5: captured before the changeover, handed over after it was heard
STEP_NS = 20_000_000  # capture times 20 ms apart


class GatedSource(Source):
    """Recorded frames with fixed capture times; holds frames from ``IN_FLIGHT_FROM`` on until ``gate`` opens
    (the test opens it once the camera has heard the changeover)."""

    def __init__(self, base_ns: int, gate: threading.Event) -> None:
        self.base_ns, self.gate, self.index = base_ns, gate, 0

    @property
    def description(self) -> str:
        return "gated test frames"

    def open(self) -> None:
        self.index = 0

    def read(self) -> CapturedFrame | None:
        if self.index >= FRAMES:
            return None
        if self.index == IN_FLIGHT_FROM and not self.gate.wait(60):
            raise AssertionError("the changeover was never heard")
        i, self.index = self.index, self.index + 1
        return CapturedFrame(render_sample(i, size=64).image, capture_ns=self.base_ns + i * STEP_NS,
                             source_id=f"frame-{i}")


class MqttPlc:
    """The line's PLC over MQTT: the product as a retained JSON message with the changeover time."""

    def __init__(self, port: int, topic: str) -> None:
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plc-{topic}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def set_product(self, product: str, since_ns: int) -> None:
        self.client.publish(self.topic, json.dumps({"product": product, "since_ns": since_ns}), qos=1,
                            retain=True).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class OpcUaPlc:
    """The line's PLC as a real asyncua server with one string node, written with a source timestamp."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}/plc/"
        self.loop = LoopThread("product-plc")
        self.server = Server()
        self.loop.call(self._start(), 60)

    async def _start(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        ns = await self.server.register_namespace("urn:test:line")
        line = await self.server.nodes.objects.add_object(ua.NodeId("Line1", ns), "Line1")
        self.node = await line.add_variable(ua.NodeId("Line1.Product", ns), "Product", "", ua.VariantType.String)
        await self.server.start()

    def set_product(self, product: str, since_ns: int) -> None:
        stamp = datetime.fromtimestamp(since_ns / 1e9, UTC)
        value = ua.DataValue(ua.Variant(product, ua.VariantType.String), SourceTimestamp=stamp)
        self.loop.call(self.node.write_value(value), 30)

    def close(self) -> None:
        self.loop.call(self.server.stop(), 30)
        self.loop.stop()


@pytest.fixture(params=["mqtt", "opcua"])
def plc(request: pytest.FixtureRequest, tmp_path: Path, unique: str
        ) -> Iterator[tuple[str, Callable[[str, int], None]]]:
    """(product source string for the camera, set_product(product, since_ns)) of a real PLC endpoint."""
    if request.param == "mqtt":
        broker = Mosquitto(tmp_path / "mosquitto.log").start()
        topic = f"plant/line-1/product-{unique}"
        mqtt_plc = MqttPlc(broker.port, topic)
        yield f"mqtt://127.0.0.1:{broker.port}/{topic}", mqtt_plc.set_product
        mqtt_plc.close()
        broker.stop()
    else:
        opcua_plc = OpcUaPlc()
        yield f"{opcua_plc.endpoint}#ns=2;s=Line1.Product", opcua_plc.set_product
        opcua_plc.close()


def test_every_frame_is_scored_by_the_model_of_the_product_in_force_at_its_capture_time(
        plc: tuple[str, Callable[[str, int], None]], bootstrap: str, redis_url: str, unique: str, tmp_path: Path,
        model_a: Path, model_b: Path) -> None:
    source, set_product = plc
    topics = {role: f"{role}-{unique}" for role in ("frames", "results", "breaches", "dead_letters", "alerts")}
    create_topics(bootstrap, list(topics.values()), partitions=1)
    database_url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = Registry(Database(database_url), FolderStore(tmp_path / "store"))
    bracket = registry.register(model_a, product="bracket").version
    gear = registry.register(model_b, product="gear").version
    registry.promote(bracket, product="bracket", by="qe")
    registry.promote(gear, product="gear", by="qe")

    base_ns = time.time_ns()
    # between frames 5 and 6, on a whole microsecond: OPC UA times carry microseconds (MQTT's since_ns is exact)
    switch_ns = (base_ns + SWITCH_AFTER * STEP_NS + STEP_NS // 2) // 1000 * 1000
    set_product("bracket", base_ns - 10 * STEP_NS)  # what the line made before the test's frames

    service = DetectorService(_settings(bootstrap, redis_url, topics, unique, database_url, tmp_path / "store",
                                        model_a))
    detector = threading.Thread(target=service.run, daemon=True)
    detector.start()
    gate = threading.Event()
    camera = Camera(CameraSettings(camera_id="cam-1", line_id="line-1", product="hinge", product_source=source,
                                   encoding="png", state_dir=tmp_path / "state", queue_size=FRAMES,
                                   kafka={"bootstrap_servers": bootstrap}, topics={"frames": topics["frames"]}),
                    GatedSource(base_ns, gate))
    try:
        assert service.ready_event.wait(60), "detector never joined its group"
        stats: list = []
        publishing = threading.Thread(target=lambda: stats.append(camera.run()), daemon=True)
        publishing.start()
        _wait_for(lambda: camera.products.product_at(base_ns) == "bracket", 30, "the camera to hear the product")
        set_product("gear", switch_ns)
        _wait_for(lambda: camera.products.product_at(switch_ns) == "gear", 30, "the camera to hear the changeover")
        gate.set()
        publishing.join(60)
        results = [json.loads(m.value()) for m in
                   _read(bootstrap, topics["results"], lambda m: len(m) >= FRAMES)]
    finally:
        gate.set()
        service.stop_event.set()
        detector.join(60)
        delete_test_keys(redis_url, f"lwt-{unique}")

    assert stats and stats[0].sent == FRAMES and stats[0].late_stamped == 0
    by_frame = {r["source_id"]: r for r in results}
    assert len(results) == len(by_frame) == FRAMES, "each frame scored exactly once"
    for i in range(FRAMES):
        r = by_frame[f"frame-{i}"]
        product, version = ("bracket", bracket) if i <= SWITCH_AFTER else ("gear", gear)
        assert (r["product"], r["model_version"]) == (product, version), (i, r["product"], r["model_version"])
        assert r["capture_ns"] == base_ns + i * STEP_NS
