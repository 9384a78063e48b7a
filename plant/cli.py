"""``linewatch verdicts``: per-part verdicts to MQTT and OPC UA."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from linewatch.common.service_runner import Overrides


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


# argparse dest -> the VerdictsSettings field it overrides
FLAGS = {"bootstrap_servers": "kafka.bootstrap_servers", "mqtt_host": "mqtt.host", "mqtt_port": "mqtt.port",
         "plc_endpoint": "opcua.plc_endpoint", "deadline_ms": "deadlines.default_ms",
         "late_policy": "deadlines.late_policy", "metrics_port": "metrics_port"}


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    """The command-line options as :class:`~linewatch.common.service_runner.Overrides` of VerdictsSettings."""
    from linewatch.common.service_runner import Overrides

    overrides = Overrides.from_args(args, FLAGS)
    if args.serve_opcua:
        overrides.set("opcua.serve", True, "--serve-opcua")
        overrides.set("opcua.server_endpoint", args.serve_opcua, "--serve-opcua")
    return overrides


def settings_from_args(args: argparse.Namespace) -> Any:
    """The environment's settings with the command-line options applied (validated together)."""
    from linewatch.plant.settings import VerdictsSettings

    return overrides_from_args(args).load(VerdictsSettings)


def _run(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import run_service
    from linewatch.plant.service import run_verdicts
    from linewatch.plant.settings import VerdictsSettings

    return run_service(VerdictsSettings, overrides_from_args(args), run_verdicts)
