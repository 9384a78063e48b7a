"""``linewatch verdicts`` against real services: Tansu broker, Mosquitto, an asyncua PLC and our own server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asyncua import Client
from confluent_kafka import Producer
from helpers.mosquitto import Mosquitto
from verdict_helpers import FakePlc, MqttRecorder, result, wait_until

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import free_port
from linewatch.plant.aio import LoopThread
from linewatch.plant.metrics import VerdictsMetrics
from linewatch.plant.mqtt import SinkError
from linewatch.plant.opcua import PlcWriter
from linewatch.plant.service import VerdictsService
from linewatch.plant.settings import DeadlineSettings, MqttSettings, OpcUaSettings, VerdictsSettings
from linewatch.plant.verdict import Verdict, decide, parse_result

pytestmark = pytest.mark.integration

LATE_MS = 120_000  # capture time this far back: past any deadline below, whatever the machine's load
DEADLINE_MS = 30_000.0  # generous, so that an on-time frame is never late on a loaded machine


@pytest.fixture
def settings(bootstrap: str, unique: str, mosquitto: Mosquitto, plc: FakePlc) -> VerdictsSettings:
    return VerdictsSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap),
        topics=TopicSettings(results=f"results-{unique}", partitions=2),
        mqtt=MqttSettings(port=mosquitto.port, topic_prefix=f"lw-{unique}", client_id=f"verdicts-{unique}"),
        opcua=OpcUaSettings(plc_endpoint=plc.endpoint, plc_node_template=plc.template(), serve=True,
                            server_endpoint=f"opc.tcp://127.0.0.1:{free_port()}/linewatch/"),
        deadlines=DeadlineSettings(default_ms=DEADLINE_MS, late_policy="reject"),
        group_id=f"verdicts-{unique}", start_from="earliest", metrics_port=None)


@pytest.fixture
def running(settings: VerdictsSettings) -> Iterator[tuple[VerdictsService, VerdictsMetrics]]:
    metrics = VerdictsMetrics()
    service = VerdictsService(settings, metrics)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    yield service, metrics
    service.stop_event.set()
    thread.join(30)
    assert not thread.is_alive()


def produce(settings: VerdictsSettings, records: list[tuple[str, bytes]]) -> None:
    ensure_topics(settings.kafka, [settings.topics.results], settings.topics.partitions)
    producer = Producer(settings.kafka.client_config())
    for key, value in records:
        producer.produce(settings.topics.results, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def stream(camera: str, count: int, late: set[int], anomalous: set[int]) -> list[tuple[str, bytes]]:
    """``count`` frames of one camera; the ``late`` ones were captured long ago."""
    now = time.time_ns()
    return [(camera, result(camera, seq, 0.9 if seq in anomalous else 0.1,
                            capture_ns=now - (LATE_MS * 1_000_000 if seq in late else 0),
                            extra={"product": "widget-7"} if camera == "cam-a" else None))
            for seq in range(count)]


def interleave(*streams: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    return [record for group in zip(*streams, strict=True) for record in group]


def read_served(endpoint: str, camera: str, namespace_uri: str) -> dict[str, Any]:
    """Latest verdict of one camera as an OPC UA client of our server sees it."""
    async def read() -> dict[str, Any]:
        async with Client(endpoint, timeout=10) as client:
            ns = await client.get_namespace_index(namespace_uri)
            names = ("Sequence", "Verdict", "Reject", "Late", "Product")
            nodes = [client.get_node(f"ns={ns};s={camera}.{name}") for name in names]
            return dict(zip(names, await client.read_values(nodes), strict=True))

    loop = LoopThread("reader")
    try:
        return loop.call(read(), 30)
    finally:
        loop.stop()


def test_every_frame_reaches_mqtt_and_the_plc_in_order_with_late_ones_rejected(
        settings: VerdictsSettings, running: tuple[VerdictsService, VerdictsMetrics], mosquitto: Mosquitto,
        plc: FakePlc) -> None:
    _service, metrics = running
    recorder = MqttRecorder(mosquitto.port, f"{settings.mqtt.topic_prefix}/#")
    try:
        count, late, anomalous = 40, {5, 17, 30}, {3, 17, 22}
        produce(settings, interleave(stream("cam-a", count, late, anomalous), stream("cam-b", count, late, anomalous)))
        wait_until(lambda: len(recorder.verdicts()) >= 2 * count, 60, "every verdict on MQTT")
        wait_until(lambda: len(plc.recorded()) >= 2 * count, 30, "every verdict written to the PLC")
        verdicts = recorder.verdicts()
        served = read_served(settings.opcua.server_endpoint, "cam-a", settings.opcua.namespace_uri)
    finally:
        recorder.close()

    for camera in ("cam-a", "cam-b"):
        mine = [v for v in verdicts if v["camera_id"] == camera]
        assert [v["sequence"] for v in mine] == list(range(count)), "in order, each frame once"
        assert {v["sequence"] for v in mine if v["late"]} == late
        expected = {seq: "reject" if seq in late | anomalous else "pass" for seq in range(count)}
        assert {v["sequence"]: v["verdict"] for v in mine} == expected
        assert all(v["scored_verdict"] == ("reject" if v["sequence"] in anomalous else "pass") for v in mine)
        assert all(v["model_version"] == "m-test" and v["latency_ms"] >= 0 for v in mine)
        assert metrics.value("linewatch_verdicts_late_total", line="line-1", camera=camera) == len(late)
        writes = [w for w in plc.recorded() if f"Gate.{camera}.Sequence" in w]
        assert [w[f"Gate.{camera}.Sequence"] for w in writes] == list(range(count))
        assert [w[f"Gate.{camera}.Reject"] for w in writes] == [expected[s] == "reject" for s in range(count)]
        assert [w[f"Gate.{camera}.Late"] for w in writes] == [s in late for s in range(count)]
    assert {v["product"] for v in verdicts if v["camera_id"] == "cam-a"} == {"widget-7"}
    assert {v["product"] for v in verdicts if v["camera_id"] == "cam-b"} == {None}
    topics = {topic for topic, body in recorder.messages if isinstance(body, dict)}
    assert topics == {f"{settings.mqtt.topic_prefix}/line-1/cam-a", f"{settings.mqtt.topic_prefix}/line-1/cam-b"}
    assert served == {"Sequence": count - 1, "Verdict": "pass", "Reject": False, "Late": False,
                      "Product": "widget-7"}


def test_verdicts_survive_an_mqtt_broker_restart(settings: VerdictsSettings,
                                                 running: tuple[VerdictsService, VerdictsMetrics],
                                                 mosquitto: Mosquitto) -> None:
    _service, metrics = running
    durable = f"recorder-{settings.group_id}"
    recorder = MqttRecorder(mosquitto.port, f"{settings.mqtt.topic_prefix}/+/+", durable)
    produce(settings, stream("cam-a", 10, set(), set()))
    wait_until(lambda: len(recorder.verdicts()) >= 10, 60, "the first verdicts")
    recorder.close()
    mosquitto.stop()
    produce(settings, [("cam-a", result("cam-a", seq, 0.1, capture_ns=time.time_ns())) for seq in range(10, 20)])
    wait_until(lambda: metrics.value("linewatch_verdicts_sink_errors_total", sink="mqtt") > 0, 60,
               "the service to notice the broker is gone")
    mosquitto.start()  # same port; the recorder's session and subscription come back from persistence
    recorder = MqttRecorder(mosquitto.port, f"{settings.mqtt.topic_prefix}/+/+", durable)
    try:
        wait_until(lambda: {v["sequence"] for v in recorder.verdicts()} >= set(range(10, 20)), 90,
                   "the verdicts held back during the outage")
        received = [v["sequence"] for v in recorder.verdicts()]
    finally:
        recorder.close()
    first_seen = list(dict.fromkeys(received))
    assert first_seen == sorted(first_seen), "a subscriber keeping first sightings sees them in order"


def test_a_plc_outage_holds_verdicts_back_and_late_ones_fail_safe(bootstrap: str, unique: str) -> None:
    plc = FakePlc(["cam-a"])
    settings = VerdictsSettings(
        kafka=KafkaSettings(bootstrap_servers=bootstrap), topics=TopicSettings(results=f"results-{unique}"),
        mqtt=MqttSettings(enabled=False),
        opcua=OpcUaSettings(plc_endpoint=plc.endpoint, plc_node_template=plc.template(), timeout_s=2.0),
        deadlines=DeadlineSettings(default_ms=1000.0, late_policy="reject"), retry_backoff_s=0.5,
        group_id=f"verdicts-{unique}", start_from="earliest", metrics_port=None)
    metrics = VerdictsMetrics()
    service = VerdictsService(settings, metrics)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    try:
        produce(settings, [("cam-a", result("cam-a", 0, 0.1, capture_ns=time.time_ns()))])
        wait_until(lambda: len(plc.recorded()) == 1, 60, "the first verdict at the PLC")
        plc.stop()
        produce(settings, [("cam-a", result("cam-a", seq, 0.1, capture_ns=time.time_ns())) for seq in (1, 2)])
        # each failed try is a refused connection, then 0.5 s back-off: 4 failures outlast the 1 s deadline
        wait_until(lambda: metrics.value("linewatch_verdicts_sink_errors_total", sink="opcua_plc") >= 4, 60,
                   "the service to retry past the deadline")
        plc = FakePlc(["cam-a"], port=plc.port)  # the PLC comes back on the same endpoint
        wait_until(lambda: len(plc.recorded()) >= 2, 60, "the held-back verdicts at the PLC")
    finally:
        service.stop_event.set()
        thread.join(30)
        plc.stop()
    held_back = plc.recorded()
    assert [w["Gate.cam-a.Sequence"] for w in held_back] == [1, 2]
    assert all(w["Gate.cam-a.Late"] and w["Gate.cam-a.Reject"] for w in held_back), "late parts are rejected"
    assert metrics.value("linewatch_verdicts_late_total", line="line-1", camera="cam-a") >= 2


def test_a_plc_without_the_configured_node_is_named_in_the_error() -> None:
    plc = FakePlc(["cam-a"])  # no nodes for cam-b: a configuration fault, not an outage
    loop = LoopThread("plc-writer")
    writer = PlcWriter(OpcUaSettings(plc_endpoint=plc.endpoint, plc_node_template=plc.template(), timeout_s=5.0),
                       loop)
    try:
        writer.send(verdict_of(result("cam-a", 0, 0.1, capture_ns=time.time_ns())))
        with pytest.raises(SinkError, match=r"ns=2;s=Gate\.cam-b\.\w+.*BadNodeIdUnknown"):
            writer.send(verdict_of(result("cam-b", 0, 0.1, capture_ns=time.time_ns())))
    finally:
        writer.close()
        loop.stop()
        plc.stop()
    assert [w["Gate.cam-a.Sequence"] for w in plc.recorded()] == [0]


def verdict_of(raw: bytes) -> Verdict:
    parsed, body = parse_result(raw)
    return decide(parsed, body, now_ns=time.time_ns(), deadline_ms=DEADLINE_MS, late_policy="reject")
