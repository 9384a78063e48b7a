"""``linewatch verdicts``: per-part verdicts to MQTT and OPC UA."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``verdicts`` to the ``linewatch`` parser."""
    parser = subparsers.add_parser(
        "verdicts", help="publish each frame's pass/reject verdict to MQTT and OPC UA (reject gates, PLCs)",
        description="Consume detector results and publish one verdict per frame, in order per camera, to MQTT "
                    "and/or a PLC's OPC UA nodes (and optionally an OPC UA server of our own). A verdict later "
                    "than its camera's deadline is flagged late and gets the late policy's verdict. Everything "
                    "else comes from LINEWATCH_* variables (see plant/README.md).")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    parser.add_argument("--mqtt-host", help="MQTT broker host (default: LINEWATCH_MQTT__HOST or 127.0.0.1)")
    parser.add_argument("--mqtt-port", type=int, help="MQTT broker port (default: LINEWATCH_MQTT__PORT or 1883)")
    parser.add_argument("--plc-endpoint", help="OPC UA endpoint of the PLC, e.g. opc.tcp://plc:4840")
    parser.add_argument("--serve-opcua", metavar="ENDPOINT",
                        help="also serve verdicts on this OPC UA endpoint, e.g. opc.tcp://0.0.0.0:4841/linewatch/")
    parser.add_argument("--deadline-ms", type=float, help="default per-camera deadline, capture to verdict")
    parser.add_argument("--late-policy", choices=["reject", "pass", "as_scored"], help="verdict of a late part")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default: LINEWATCH_METRICS_PORT or 9110)")
    parser.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> Any:
    """The environment's settings with the command-line options applied."""
    from linewatch.common.settings import load_settings
    from linewatch.plant.settings import VerdictsSettings

    base = load_settings(VerdictsSettings)
    mqtt = base.mqtt.model_copy(update=_given({"host": args.mqtt_host, "port": args.mqtt_port}))
    opcua = base.opcua.model_copy(update=_given({"plc_endpoint": args.plc_endpoint}))
    if args.serve_opcua:
        opcua = opcua.model_copy(update={"serve": True, "server_endpoint": args.serve_opcua})
    deadlines = base.deadlines.model_copy(update=_given({"default_ms": args.deadline_ms,
                                                         "late_policy": args.late_policy}))
    updates: dict[str, Any] = {"mqtt": mqtt, "opcua": opcua, "deadlines": deadlines,
                               **_given({"metrics_port": args.metrics_port})}
    if args.bootstrap_servers:
        updates["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    return base.model_copy(update=updates)


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _run(args: argparse.Namespace) -> int:
    from linewatch.plant.service import run_verdicts

    settings = settings_from_args(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_verdicts(settings, stop)
    return 0
