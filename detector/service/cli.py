"""``linewatch detect``: run one streaming detector until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any

from linewatch.detector.model.vocabulary import Backend

# argparse dest -> the DetectorSettings field it overrides
FLAGS = {"bootstrap_servers": "kafka.bootstrap_servers", "redis_url": "redis.url", "frames_topic": "topics.frames",
         "max_batch": "max_batch_size",
         **{name: name for name in ("model", "max_wait_ms", "device", "backend", "group_id", "metrics_port",
                                    "decode_mode", "decode_workers", "torch_threads")}}


def _detect(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import Overrides, run_service
    from linewatch.detector.service import DetectorSettings, run_detector

    # The first signal drains the batch in flight, commits and exits; a second kills at once (still safe:
    # only acknowledged frames were committed). RuntimeError: the service failed while running (logged).
    return run_service(DetectorSettings, Overrides.from_args(args, FLAGS), run_detector, fatal=(RuntimeError,))


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
    parser.add_argument("--backend", choices=Backend.values(),
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
