"""Measure the verdict hop on this machine: result produced -> verdict received over MQTT / written to a PLC.

``python tests/verdicts/verdict_timing.py --cameras 2 --fps 10 --seconds 20`` starts a local broker
(Tansu), a mosquitto on a free port and an asyncua 'PLC', runs ``VerdictsService`` in-process, produces
results stamped with capture time = produce time, and prints latency percentiles of: MQTT receipt at a
subscriber, the PLC's write callback, and the service's own capture-to-publish figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from confluent_kafka import Producer

from linewatch.common.settings import KafkaSettings, TopicSettings
from linewatch.common.topics import ensure_topics
from linewatch.deploy.local import free_port, start_local_stack, wait_for_port
from linewatch.detector.events import FrameResult, Latency
from linewatch.plant.aio import LoopThread
from linewatch.plant.service import VerdictsService
from linewatch.plant.settings import MqttSettings, OpcUaSettings, VerdictsSettings


def _percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    p = np.percentile(values, [50, 95, 99])
    return f"n={len(values)} p50 {p[0]:.1f} p95 {p[1]:.1f} p99 {p[2]:.1f} max {max(values):.1f} ms"


async def _plc(loop_server: Server, endpoint: str, cameras: list[str],
               received: list[tuple[int, str, int]]) -> None:
    await loop_server.init()
    loop_server.set_endpoint(endpoint)
    ns = await loop_server.register_namespace("urn:timing:plc")
    gate = await loop_server.nodes.objects.add_object(ua.NodeId(ua.String("Gate"), ua.Int16(ns)), "Gate")
    for camera in cameras:
        for name, vtype in (("Reject", ua.VariantType.Boolean), ("Sequence", ua.VariantType.Int32)):
            node = await gate.add_variable(ua.NodeId(ua.String(f"Gate.{camera}.{name}"), ua.Int16(ns)),
                                           f"{camera}.{name}", ua.get_default_value(vtype), vtype)
            await node.set_writable()

    def on_write(event: Any, _dispatcher: Any) -> None:
        now = time.time_ns()
        for write in event.request_params.NodesToWrite:
            node = str(write.NodeId.Identifier)
            if node.endswith(".Sequence"):
                received.append((now, node.split(".")[1], int(write.Value.Value.Value)))

    loop_server.subscribe_server_callback(CallbackType.PostWrite, on_write)
    await loop_server.start()


def _warm_up(producer: Producer, topic: str, received: list[tuple[int, dict[str, Any]]]) -> None:
    """Send one result and wait for its verdict (the consumer group has joined, every connection is up)."""
    body = FrameResult(camera_id="warm-up", line_id="line-1", sequence=0, capture_ns=time.time_ns(), image_score=0.1,
                       normalised_score=0.1, anomalous=False, threshold=1.0, model_version="timing", heatmap_key=None,
                       latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0, end_to_end_ms=0))
    producer.produce(topic, key=b"warm-up", value=body.model_dump_json().encode())
    producer.flush(30)
    deadline = time.monotonic() + 300
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    if not received:
        raise SystemExit("no verdict within 300 s of the warm-up result")


def main(argv: list[str] | None = None) -> None:
    """Run the measurement and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--fps", type=float, default=10.0, help="results per second per camera")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fetch-wait-ms", type=int, default=None, help="librdkafka fetch.wait.max.ms of the service")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="lw-verdict-timing-"))
    stack = start_local_stack(workdir / "stack")
    mqtt_port = free_port()
    mosquitto = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(mqtt_port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cameras = [f"cam-{i}" for i in range(args.cameras)]
    plc_loop = LoopThread("timing-plc")
    plc_writes: list[tuple[int, str, int]] = []
    plc_endpoint = f"opc.tcp://127.0.0.1:{free_port()}/plc/"
    plc_server = Server()
    try:
        wait_for_port("127.0.0.1", mqtt_port, 15, mosquitto)
        plc_loop.call(_plc(plc_server, plc_endpoint, [*cameras, "warm-up"], plc_writes), 60)
        _measure(args, stack.bootstrap_servers, mqtt_port, plc_endpoint, cameras, plc_writes)
    finally:
        plc_loop.call(plc_server.stop(), 30)
        plc_loop.stop()
        mosquitto.terminate()
        stack.stop()


def _measure(args: argparse.Namespace, bootstrap: str, mqtt_port: int, plc_endpoint: str, cameras: list[str],
             plc_writes: list[tuple[int, str, int]]) -> None:
    options = {} if args.fetch_wait_ms is None else {"fetch.wait.max.ms": str(args.fetch_wait_ms)}
    kafka = KafkaSettings(bootstrap_servers=bootstrap, client_options=options)
    settings = VerdictsSettings(
        kafka=kafka, topics=TopicSettings(results="results-timing", partitions=2),
        mqtt=MqttSettings(port=mqtt_port, topic_prefix="timing"),
        opcua=OpcUaSettings(plc_endpoint=plc_endpoint, plc_node_template={
            "reject": "ns=2;s=Gate.{camera}.Reject", "sequence": "ns=2;s=Gate.{camera}.Sequence"}),
        start_from="earliest", metrics_port=None)
    ensure_topics(settings.kafka, [settings.topics.results], 2)
    received: list[tuple[int, dict[str, Any]]] = []
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscriber.on_message = lambda _c, _u, m: received.append((time.time_ns(), json.loads(m.payload)))
    subscriber.connect("127.0.0.1", mqtt_port)
    subscriber.subscribe("timing/+/+", qos=1)  # not timing/status: its payload is not JSON
    subscriber.loop_start()
    service = VerdictsService(settings)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    producer = Producer({**settings.kafka.client_config(), "linger.ms": 0})
    _warm_up(producer, settings.topics.results, received)  # the clock starts once verdicts flow
    received.clear()
    plc_writes.clear()
    sent_ns: dict[tuple[str, int], int] = {}
    period, total = 1.0 / args.fps, int(args.seconds * args.fps)
    start = time.monotonic()
    for seq in range(total):
        time.sleep(max(0.0, start + seq * period - time.monotonic()))
        for camera in cameras:
            now = time.time_ns()
            sent_ns[(camera, seq)] = now
            body = FrameResult(camera_id=camera, line_id="line-1", sequence=seq, capture_ns=now, image_score=0.1,
                               normalised_score=0.1, anomalous=False, threshold=1.0, model_version="timing",
                               heatmap_key=None, latency=Latency(queue_ms=0, decode_ms=0, inference_ms=0,
                                                                 end_to_end_ms=0))
            producer.produce(settings.topics.results, key=camera.encode(), value=body.model_dump_json().encode())
        producer.poll(0)
    producer.flush(30)
    deadline = time.monotonic() + 30
    while len(received) < total * len(cameras) and time.monotonic() < deadline:
        time.sleep(0.1)
    service.stop_event.set()
    thread.join(30)
    subscriber.loop_stop()
    mqtt_ms = [(at - sent_ns[(v["camera_id"], v["sequence"])]) / 1e6 for at, v in received]
    published_ms = [v["latency_ms"] for _, v in received]
    plc_ms = [(at - sent_ns[(camera, seq)]) / 1e6 for at, camera, seq in plc_writes]
    print(f"cameras {len(cameras)} x {args.fps} results/s for {args.seconds} s, fetch.wait.max.ms "
          f"{args.fetch_wait_ms if args.fetch_wait_ms is not None else 'service default'}")
    print(f"result produced -> verdict published (service's latency_ms): {_percentiles(published_ms)}")
    print(f"result produced -> MQTT subscriber receipt:                 {_percentiles(mqtt_ms)}")
    print(f"result produced -> PLC write applied (server callback):    {_percentiles(plc_ms)}")


if __name__ == "__main__":
    main()
