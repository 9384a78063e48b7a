"""Subcommands of ``linewatch`` that belong to the alerts package."""

from __future__ import annotations

import argparse
import signal
import threading
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


def _run(args: argparse.Namespace) -> int:
    from linewatch.alerts.service import run_alerts
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.common.settings import load_settings

    base = load_settings(AlertsSettings)
    http = base.http.model_copy(update={key: value for key, value in
                                        {"host": args.host, "port": args.port}.items() if value is not None})
    if args.no_api:
        http.enabled = False
    updates: dict[str, Any] = {"http": http}
    if args.bootstrap_servers:
        updates["kafka"] = base.kafka.model_copy(update={"bootstrap_servers": args.bootstrap_servers})
    if args.redis_url:
        updates["redis"] = base.redis.model_copy(update={"url": args.redis_url})
    if args.alertmanager_url:
        updates["alertmanager_url"] = args.alertmanager_url
    settings = base.model_copy(update=updates)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_alerts(settings, stop)
    return 0
