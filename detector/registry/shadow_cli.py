"""``linewatch models shadow VERSION --product P --since 2h --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from linewatch.detector.registry.cli_common import add_database_option, guarded, load


def register_shadow(actions: Any) -> None:
    """Add ``shadow`` to the ``models`` actions."""
    p = actions.add_parser("shadow", help="score a candidate against the active version on replayed frames",
                           description="Replays the frames topic from --since to now with a separate consumer "
                                       "group, scores every frame with VERSION and with the product's active "
                                       "version, and writes report.json and report.html.")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--product", required=True)
    p.add_argument("--since", required=True, help="90s, 30m, 2h, 7d or an ISO time")
    p.add_argument("--line", default="", help="compare with this line's active version and replay only its frames")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/shadow-VERSION)")
    p.add_argument("--top", type=int, default=8, help="disagreements shown with both heatmaps")
    p.add_argument("--max-rate", type=float, default=0.0, help="frames per second at most (0 = unlimited)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu: leaves the GPU to the line)")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (default: LINEWATCH_KAFKA__...)")
    p.add_argument("--model-store", type=Path, help="model-file folder (default: LINEWATCH_REGISTRY__MODEL_STORE)")
    add_database_option(p)
    p.set_defaults(func=guarded(_shadow))


def _shadow(args: argparse.Namespace) -> int:
    from linewatch.detector.registry.models import open_registry
    from linewatch.detector.registry.shadow import ShadowOptions, ShadowRun, write_report
    from linewatch.detector.registry.times import parse_since

    settings = load(args)
    registry = open_registry(settings.registry.database_url, settings.registry.model_store)
    options = ShadowOptions(candidate=args.version, product=args.product, since_ns=parse_since(args.since),
                            line=args.line, top=args.top, max_rate=args.max_rate, device=args.device)
    report = ShadowRun(settings, registry, options).run()
    out = args.out or Path("reports") / f"shadow-{report['versions']['candidate']['version']}"
    json_path, html_path = write_report(report, out)
    overall = report["overall"]
    rates = overall["alert_rate"]
    print(f"{report['frames_scored']} frames: alert rate candidate {_pct(rates['candidate'])}, active "
          f"{_pct(rates['active'])}, agreement {_pct(overall['agreement'])}; wrote {json_path} and {html_path}")
    return 0


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
