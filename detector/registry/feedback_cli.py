"""``linewatch dataset export --feedback --product P --out DIR``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from linewatch.detector.registry.cli_common import add_database_option, guarded, load


def register_dataset(subparsers: Any) -> None:
    """Add ``dataset`` and its ``export`` action."""
    parser = subparsers.add_parser("dataset", help="build training folders from the line (operator feedback)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("export", help="write operator-marked frames as an MVTec-layout folder",
                           description="False alarms go to train/good, real defects to test/<type> (heatmaps "
                                       "beside them under heatmaps/). Frames are read back from the frames topic.")
    p.add_argument("--feedback", action="store_true", required=True, help="export operator feedback (the only "
                                                                           "source for now)")
    p.add_argument("--product", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    add_database_option(p)
    p.set_defaults(func=guarded(_export))


def _export(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.db import Database
    from linewatch.detector.registry.feedback import FrameFetcher, export_feedback

    settings = load(args)
    fetcher = FrameFetcher(settings.kafka, settings.topics.frames)
    try:
        summary = export_feedback(Database(settings.registry.database_url), fetcher, product=args.product,
                                  out=args.out)
    finally:
        fetcher.close()
    print(f"wrote {summary.good} good and {summary.defects} defect frames ({summary.heatmaps} heatmaps) to "
          f"{args.out}; skipped {len(summary.skipped)} (see feedback_manifest.json)")
    for skipped in summary.skipped:
        print(f"  skipped {skipped['camera_id']}/{skipped['sequence']}: {skipped['reason']}", file=sys.stderr)
    return 0
