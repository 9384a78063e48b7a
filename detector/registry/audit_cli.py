"""``linewatch audit run|export|show|prune``."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from linewatch.detector.registry.cli_common import add_database_option, guarded, load, moment, overrides


def register_audit(subparsers: Any) -> None:
    """Add ``audit`` and its actions."""
    parser = subparsers.add_parser("audit", help="audit trail: which model judged each part, and why",
                                   description="One row per scored frame in the registry database, written by "
                                               "`linewatch audit run` from the results topic.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("run", help="consume results (and alerts) into the audit table")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    p.add_argument("--group", help="consumer group (default: LINEWATCH_REGISTRY__AUDIT_GROUP_ID)")
    p.add_argument("--until-end", action="store_true", help="stop at the end offsets seen at start (backfill)")
    add_database_option(p)
    p.set_defaults(func=guarded(_run))

    p = actions.add_parser("export", help="audit rows as CSV")
    p.add_argument("--out", type=Path, help="CSV file (default: standard output)")
    p.add_argument("--camera")
    p.add_argument("--since", type=moment, help="90s, 30m, 2h, 7d or an ISO time")
    p.add_argument("--until", type=moment, help="same forms as --since")
    add_database_option(p)
    p.set_defaults(func=guarded(_export))

    p = actions.add_parser("show", help="which model judged one part and why (JSON)")
    p.add_argument("--camera", required=True)
    p.add_argument("--sequence", type=int, required=True)
    add_database_option(p)
    p.set_defaults(func=guarded(_show))

    p = actions.add_parser("prune", help="delete rows older than LINEWATCH_REGISTRY__AUDIT_RETENTION_DAYS")
    add_database_option(p)
    p.set_defaults(func=guarded(_prune))


def _database(args: argparse.Namespace) -> Any:
    from linewatch.detector.registry.db import Database

    return Database(load(args).registry.database_url)


def _run(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import run_service
    from linewatch.detector.registry.settings import RegistrySettings

    return run_service(RegistrySettings, overrides(args), lambda settings, stop: _consume(settings, stop, args))


def _consume(settings: Any, stop: threading.Event, args: argparse.Namespace) -> int:
    from linewatch.detector.registry.audit import AuditConsumer
    from linewatch.detector.registry.db import Database

    consumer = AuditConsumer(settings, Database(settings.registry.database_url), group_id=args.group)
    consumer.run(stop, until_end=args.until_end)
    print(f"audit: {consumer.written} rows written, {consumer.skipped} records skipped", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.audit import export_csv
    from linewatch.detector.registry.times import parse_since

    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until) if args.until else None
    db = _database(args)
    if args.out is None:
        count = export_csv(db, sys.stdout, camera=args.camera, since_ns=since, until_ns=until)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as handle:
            count = export_csv(db, handle, camera=args.camera, since_ns=since, until_ns=until)
        print(f"wrote {count} rows to {args.out}", file=sys.stderr)
    return 0


def _show(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.audit import explain

    rows = explain(_database(args), args.camera, args.sequence)
    if not rows:
        print(f"linewatch audit: no audit row for camera {args.camera} sequence {args.sequence}", file=sys.stderr)
        return 1
    print(json.dumps(rows, indent=2, default=str))
    return 0


def _prune(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.audit import AuditWriter

    settings = load(args)
    from linewatch.detector.registry.db import Database

    pruned = AuditWriter(Database(settings.registry.database_url)).prune(
        settings.registry.audit_retention_days * 86400)
    print(f"pruned {pruned} audit rows older than {settings.registry.audit_retention_days:g} days")
    return 0
