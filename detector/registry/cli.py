"""``linewatch models ...``, ``linewatch audit ...`` and ``linewatch dataset export --feedback``.

Handlers import their modules lazily (torch, Kafka) and turn expected failures (unknown version,
bad checkpoint, broker unreachable) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from linewatch.detector.registry.cli_common import Handler, add_database_option, guarded, load


def register(subparsers: Any) -> None:
    """Add ``models``, ``audit`` and ``dataset`` to the ``linewatch`` parser."""
    from linewatch.detector.registry.audit_cli import register_audit
    from linewatch.detector.registry.feedback_cli import register_dataset

    register_models(subparsers)
    register_audit(subparsers)
    register_dataset(subparsers)


def register_models(subparsers: Any) -> None:
    """``linewatch models register|list|show|promote|rollback|shadow``."""
    parser = subparsers.add_parser("models", help="model registry: register, promote, roll back, shadow-score",
                                   description="Versions are checkpoint digests (the model_version in results). "
                                               "Promotions are an append-only history per product and line.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("register", help="verify a checkpoint, store a copy and record it")
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("--product", required=True)
    p.add_argument("--notes", default="")
    p.add_argument("--by", help="who registers it (default: the OS user)")
    p.add_argument("--metrics", type=Path, help="metrics.json of `linewatch evaluate` (default: one beside MODEL "
                                                "naming this version)")
    p.add_argument("--trained-on", type=Path, help="data set folder from `dataset export --feedback`: records "
                                                   "which operator feedback the version learnt from")
    _common(p, _register)

    p = actions.add_parser("list", help="registered versions, newest first")
    p.add_argument("--product")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    _common(p, _list)

    p = actions.add_parser("show", help="everything recorded about a version (JSON)")
    p.add_argument("version", metavar="VERSION")
    _common(p, _show)

    p = actions.add_parser("promote", help="make VERSION the active model of a product (and line)")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--product", required=True)
    p.add_argument("--line", default="", help="only this line (default: every line of the product)")
    p.add_argument("--by")
    p.add_argument("--note", default="")
    p.add_argument("--force", action="store_true", help="promote a version registered for another product")
    _common(p, _promote)

    p = actions.add_parser("rollback", help="re-activate the version active before the latest promotion")
    p.add_argument("--product", required=True)
    p.add_argument("--line", default="")
    p.add_argument("--by")
    p.add_argument("--note", default="")
    _common(p, _rollback)

    p = actions.add_parser("history", help="promotion history of a product (and line), oldest first")
    p.add_argument("--product", required=True)
    p.add_argument("--line", default="")
    _common(p, _history)

    from linewatch.detector.registry.shadow_cli import register_shadow

    register_shadow(actions)

    from linewatch.detector.registry.migrate_cli import register_migrate

    register_migrate(actions)


def _common(parser: argparse.ArgumentParser, handler: Handler) -> None:
    add_database_option(parser)
    parser.add_argument("--model-store", type=Path, help="model-file folder (default: LINEWATCH_REGISTRY__MODEL_STORE)")
    parser.set_defaults(func=guarded(handler))


def open_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~.models.Registry` the arguments and environment name."""
    from linewatch.detector.registry.models import open_registry

    settings = load(args)
    return open_registry(settings.registry.database_url, settings.registry.model_store)


def _register(args: argparse.Namespace) -> int:
    record = open_from_args(args).register(args.model, product=args.product, notes=args.notes, by=args.by,
                                           metrics=args.metrics, trained_on=args.trained_on)
    print(f"registered {record.version} for product {record.product} "
          f"(image threshold {record.image_threshold:.5g}{', with metrics' if record.metrics else ''})")
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = open_from_args(args)
    records = registry.versions(args.product)
    if args.json:
        for record in records:
            print(json.dumps(describe(record)))
        return 0
    print(f"{'VERSION':12}  {'PRODUCT':16}  {'BACKBONE':18}  {'SIZE':>4}  {'THRESHOLD':>9}  {'AUROC':>6}  "
          f"{'REGISTERED':20}  BY")
    for record in records:
        auroc = (record.metrics or {}).get("image_auroc")
        print(f"{record.version:12}  {record.product[:16]:16}  {record.backbone[:18]:18}  {record.image_size:>4}  "
              f"{record.image_threshold:>9.4g}  {'-' if auroc is None else f'{auroc:.3f}':>6}  "
              f"{record.registered_at:%Y-%m-%d %H:%M:%S}  {record.registered_by}")
    return 0


def describe(record: Any) -> dict[str, Any]:
    """A registered version as plain JSON."""
    return {"version": record.version, "sha256": record.sha256, "product": record.product,
            "backbone": record.backbone, "image_size": record.image_size,
            "image_threshold": record.image_threshold, "pixel_threshold": record.pixel_threshold,
            "tensor_sha256": record.tensor_sha256, "metadata_sha256": record.metadata_sha256,
            "calibration": record.calibration, "training": record.training, "metrics": record.metrics,
            "feedback_ids": record.feedback_ids, "notes": record.notes, "registered_by": record.registered_by,
            "registered_at": record.registered_at.isoformat(), "store_path": record.store_path,
            "size_bytes": record.size_bytes}


def _show(args: argparse.Namespace) -> int:
    registry = open_from_args(args)
    record = registry.get(args.version)
    promotions = [{"product": p.product, "line": p.line or "*", "action": p.action, "by": p.by,
                   "at": p.at.isoformat(), "note": p.note}
                  for p in registry.history(record.product) if p.version == record.version]
    print(json.dumps({**describe(record), "promotions": promotions}, indent=2, default=str))
    return 0


def _promote(args: argparse.Namespace) -> int:
    entry = open_from_args(args).promote(args.version, product=args.product, line=args.line, by=args.by,
                                         note=args.note, force=args.force)
    print(f"promoted {entry.version} for product {entry.product} on {entry.line or 'every line'} (by {entry.by})")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    entry = open_from_args(args).rollback(product=args.product, line=args.line, by=args.by, note=args.note)
    print(f"rolled back product {entry.product} on {entry.line or 'every line'}: {entry.version} is active again")
    return 0


def _history(args: argparse.Namespace) -> int:
    for entry in open_from_args(args).history(args.product, args.line):
        print(f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.action:8}  {entry.version}  {entry.by}  {entry.note}")
    return 0
