"""``linewatch detect``: run one streaming detector until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.bootstrap_servers:
        values["kafka"] = {"bootstrap_servers": args.bootstrap_servers}
    if args.redis_url:
        values["redis"] = {"url": args.redis_url}
    if args.frames_topic:
        values["topics"] = {"frames": args.frames_topic}
    renames = {"max_batch": "max_batch_size"}
    for name in ("model", "max_batch", "max_wait_ms", "device", "backend", "group_id", "metrics_port", "decode_mode",
                 "decode_workers", "torch_threads"):
        value = getattr(args, name, None)
        if value is not None:
            values[renames.get(name, name)] = value
    return values


def _detect(args: argparse.Namespace) -> int:
    from linewatch.common.settings import load_settings
    from linewatch.detector.model.checkpoint import CheckpointError
    from linewatch.detector.model.device import DeviceError
    from linewatch.detector.service import DetectorSettings, run_detector

    settings = load_settings(DetectorSettings, **_overrides(args))
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # First signal: drain the batch in flight, commit, exit. The default handler is restored,
        # so a second Ctrl-C kills at once (still safe: only acknowledged frames were committed).
        def on_signal(signum: int, _frame: object) -> None:
            log.info("signal %d: draining and stopping", signum)
            stop.set()
            signal.signal(signum, signal.SIG_DFL)

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
    try:
        run_detector(settings, stop)
    except (CheckpointError, DeviceError, ValueError) as exc:
        print(f"linewatch detect: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"linewatch detect: {exc}", file=sys.stderr)
        return 1
    return 0


def register_detect(subparsers: Any) -> None:
    """Add the ``detect`` subcommand."""
    parser = subparsers.add_parser(
        "detect", help="score frames from Kafka in micro-batches; write results, breaches, heatmaps",
        description="Consume the frames topic as a consumer group member, run the STFPM model in micro-batches "
                    "and produce results, breaches and dead letters; heatmaps go to Redis. Every setting can "
                    "also come from LINEWATCH_* environment variables (see detector/service/settings.py).")
    parser.add_argument("--model", help="checkpoint (.safetensors) from `linewatch train`")
    parser.add_argument("--max-batch", type=int, help="a batch closes at this many frames (default 16)")
    parser.add_argument("--max-wait-ms", type=float, help="...or this long after its first frame (default 20)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--backend", choices=["auto", "torch", "onnxruntime", "openvino"],
                        help="model runtime (default auto: the fastest measured on this machine)")
    parser.add_argument("--decode-mode", choices=["cpu", "gpu", "auto"], help="where JPEG decoding runs")
    parser.add_argument("--decode-workers", type=int, help="decode threads (default 2)")
    parser.add_argument("--torch-threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--group-id", help="consumer group (default linewatch-detector)")
    parser.add_argument("--metrics-port", type=int, help="port of /metrics, /healthz, /readyz (default 9108)")
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (env LINEWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--redis-url", help="Redis URL of the heatmap cache (env LINEWATCH_REDIS__URL)")
    parser.add_argument("--frames-topic", help="topic to consume (default frames)")
    parser.set_defaults(func=_detect)
