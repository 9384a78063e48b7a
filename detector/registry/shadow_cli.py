"""``linewatch models shadow VERSION --product P (--since 2h | --live [--duration 30m]) --out DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from linewatch.detector.registry.cli_common import add_database_option, duration, guarded, load, moment


def register_shadow(actions: Any) -> None:
    """Add ``shadow`` to the ``models`` actions."""
    p = actions.add_parser("shadow", help="score a candidate against the active version on replayed or live frames",
                           description="Replays the frames topic from --since to now (or, with --live, follows it "
                                       "from now on) with a separate consumer group, scores every frame with "
                                       "VERSION and with the product's active version, and writes report.json and "
                                       "report.html. Live rows also go to a shadow results topic; never verdicts, "
                                       "alerts or heatmaps.")
    p.add_argument("version", metavar="VERSION")
    p.add_argument("--product", required=True)
    window = p.add_mutually_exclusive_group(required=True)
    window.add_argument("--since", type=moment, help="replay from then: 90s, 30m, 2h, 7d or an ISO time")
    window.add_argument("--live", action="store_true", help="score frames as they arrive, until --duration, "
                                                            "--max-frames or Ctrl-C")
    p.add_argument("--duration", type=duration, help="live: stop after this long (90s, 30m, 2h)")
    p.add_argument("--max-frames", type=int, help="live: stop after scoring this many frames")
    p.add_argument("--results-topic", default=None, help="live: where each scored frame's row goes "
                                                         "(default results-shadow)")
    p.add_argument("--line", default="", help="compare with this line's active version and replay only its frames")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/shadow-VERSION)")
    p.add_argument("--top", type=int, default=8, help="disagreements shown with both heatmaps")
    p.add_argument("--max-rate", type=float, default=None,
                   help="frames per second at most (0 = unlimited; default: unlimited replay, 5 live, where frames "
                        "over it are skipped and counted)")
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
    if args.live:
        report = _live(settings, registry, args)
    else:
        max_rate = 0.0 if args.max_rate is None else args.max_rate
        options = ShadowOptions(candidate=args.version, product=args.product, since_ns=parse_since(args.since),
                                line=args.line, top=args.top, max_rate=max_rate, device=args.device)
        report = ShadowRun(settings, registry, options).run()
    out = args.out or Path("reports") / f"shadow-{report['versions']['candidate']['version']}"
    json_path, html_path = write_report(report, out)
    overall = report["overall"]
    rates = overall["alert_rate"]
    print(f"{report['frames_scored']} frames: alert rate candidate {_pct(rates['candidate'])}, active "
          f"{_pct(rates['active'])}, agreement {_pct(overall['agreement'])}; wrote {json_path} and {html_path}")
    return 0


def _live(settings: Any, registry: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Follow the line until --duration, --max-frames or the first SIGINT/SIGTERM (a second one exits at once)."""
    import time

    from linewatch.common.signals import stop_on_signals
    from linewatch.detector.registry.shadow import ShadowOptions
    from linewatch.detector.registry.shadow_live import (
        DEFAULT_LIVE_MAX_RATE,
        SHADOW_RESULTS_TOPIC,
        LiveOptions,
        LiveShadowRun,
    )

    max_rate = DEFAULT_LIVE_MAX_RATE if args.max_rate is None else args.max_rate
    options = ShadowOptions(candidate=args.version, product=args.product, since_ns=time.time_ns(), line=args.line,
                            top=args.top, max_rate=max_rate, device=args.device)
    live = LiveOptions(duration_s=args.duration, max_frames=args.max_frames,
                       results_topic=args.results_topic or SHADOW_RESULTS_TOPIC)
    with stop_on_signals() as stop:
        return LiveShadowRun(settings, registry, options, live, stop).run()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
