"""``linewatch camera-health``: camera-health checks as their own alert kind."""

from __future__ import annotations

import argparse
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


# argparse dest -> the HealthSettings field it overrides
FLAGS = {"bootstrap_servers": "kafka.bootstrap_servers", "alertmanager_url": "alertmanager_url",
         "metrics_port": "metrics_port"}


def _run(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import Overrides, run_service
    from linewatch.common.settings import load_settings
    from linewatch.health.service import run_health
    from linewatch.health.settings import HealthSettings

    overrides = Overrides.from_args(args, FLAGS)
    if args.reference_checkpoint:  # added to those of the environment, not instead of them
        from_env = load_settings(HealthSettings).reference_checkpoints
        overrides.set("reference_checkpoints", [*from_env, *args.reference_checkpoint], "--reference-checkpoint")
    return run_service(HealthSettings, overrides, run_health)
