"""Subcommands of ``linewatch`` that belong to the alerts package."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the ``linewatch`` parser."""
    parser = subparsers.add_parser(
        "alerts", help="run the alerts service: rules, deliveries and the operator web page",
        description="Consume detector results, fire and resolve alerts, deliver them (Alertmanager, webhook, "
                    "Grafana) and serve the operator API and page. Everything else comes from LINEWATCH_* "
                    "variables (LINEWATCH_API_TOKEN is required).")
    parser.add_argument("--host", help="address of the operator API (default: LINEWATCH_HTTP__HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port of the operator API (default: LINEWATCH_HTTP__PORT or 8081)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    parser.add_argument("--redis-url", help="Redis URL (default: LINEWATCH_REDIS__URL)")
    parser.add_argument("--alertmanager-url", help="Alertmanager base URL, e.g. http://127.0.0.1:9093")
    parser.add_argument("--no-api", action="store_true", help="consume and deliver only; no HTTP server")
    parser.set_defaults(func=_run)


# argparse dest -> the AlertsSettings field it overrides
FLAGS = {"host": "http.host", "port": "http.port", "bootstrap_servers": "kafka.bootstrap_servers",
         "redis_url": "redis.url", "alertmanager_url": "alertmanager_url"}


def _run(args: argparse.Namespace) -> int:
    from linewatch.alerts.service import run_alerts
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.common.service_runner import Overrides, run_service

    overrides = Overrides.from_args(args, FLAGS)
    if args.no_api:
        overrides.set("http.enabled", False, "--no-api")
    return run_service(AlertsSettings, overrides, run_alerts)
