"""``linewatch camera-health``: camera-health checks as their own alert kind."""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``camera-health`` to the ``linewatch`` parser."""
    parser = subparsers.add_parser(
        "camera-health", help="watch every camera for frozen streams, exposure, focus, silence and score drift",
        description="Read the frames topic (downscaled decode) and the results topic, run the camera-health "
                    "checks and publish alerts of kind camera_health to the camera-health topic, Prometheus and "
                    "(optionally) Alertmanager. Thresholds come from LINEWATCH_CHECKS__* (health/README.md).")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    parser.add_argument("--alertmanager-url", help="Alertmanager base URL, e.g. http://127.0.0.1:9093")
    parser.add_argument("--reference-checkpoint", action="append", default=None, metavar="PATH",
                        help="model checkpoint whose calibration is the drift reference (repeatable)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default: LINEWATCH_METRICS_PORT or 9111)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from linewatch.common.settings import load_settings
    from linewatch.health.service import run_health
    from linewatch.health.settings import HealthSettings

    base = load_settings(HealthSettings)
    updates: dict[str, Any] = {}
    if args.bootstrap_servers:
        updates["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    if args.alertmanager_url:
        updates["alertmanager_url"] = args.alertmanager_url
    if args.reference_checkpoint:
        updates["reference_checkpoints"] = [*base.reference_checkpoints, *args.reference_checkpoint]
    if args.metrics_port is not None:
        updates["metrics_port"] = args.metrics_port
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_health(base.model_copy(update=updates), stop)
    return 0
