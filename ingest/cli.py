"""Subcommands of ``linewatch`` that belong to the ingest package: ``camera``, ``cameras``, ``topics``."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

SOURCE_HELP = ("device index (0), rtsp:// or http(s):// URL, video file, folder or DIR/*.png, "
               "folder:DIR[?glob=*.png], replay:PATH[?split=test&shuffle=1], "
               "synthetic:[?defect_probability=0.2&size=256&count=N]")


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}")
    return int(width), int(height)


def _port(text: str) -> int:
    """A TCP port number, for flags that do not go through a settings class."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, got {text!r}")
    return int(text)


def _kafka_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (env LINEWATCH_KAFKA__BOOTSTRAP_SERVERS)")
    parser.add_argument("--partitions", type=int, help="partitions for topics created here (default 8)")


# argparse dest -> the CameraSettings field it overrides
CAMERA_FLAGS = {"bootstrap_servers": "kafka.bootstrap_servers", "topic": "topics.frames",
                "partitions": "topics.partitions", "loop": "loop",
                **{name: name for name in ("camera_id", "line_id", "product", "product_source", "source", "fps",
                                           "resize", "encoding", "jpeg_quality", "queue_size", "queue_policy",
                                           "max_message_bytes", "oversize_policy", "state_dir", "metrics_port")}}


def _camera(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import Overrides, run_service
    from linewatch.ingest.settings import CameraSettings

    return run_service(CameraSettings, Overrides.from_args(args, CAMERA_FLAGS),
                       lambda settings, stop: _run_camera(settings, stop, args.max_frames))


def _run_camera(settings: Any, stop: threading.Event, max_frames: int | None) -> int:
    from linewatch.ingest.camera import run_camera
    from linewatch.ingest.metrics import CameraMetrics, serve_metrics
    from linewatch.ingest.sources import open_source

    source = open_source(settings.source)  # SourceSpecError: a bad --source, exit 2
    metrics = CameraMetrics()
    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, metrics.registry)
    # the camera flushes what it holds before returning
    stats = run_camera(settings, source, max_frames=max_frames, stop_event=stop, metrics=metrics)
    print(f"camera {stats.camera_id}: captured {stats.captured}, sent {stats.sent}, dropped {stats.dropped_total}, "
          f"delivery errors {stats.delivery_errors}")
    return 0 if stats.delivery_errors == 0 else 1


def _cameras(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import Overrides, run_until_signalled
    from linewatch.ingest.fleet import load_fleet

    overrides = Overrides.from_args(args, {dest: CAMERA_FLAGS[dest] for dest in ("bootstrap_servers", "partitions")})
    cameras, port = load_fleet(args.config, overrides.nested())  # FleetConfigError: exit 2
    port = args.metrics_port if args.metrics_port is not None else port
    return run_until_signalled(lambda stop: _run_fleet(cameras, port, stop, args.max_frames))


def _run_fleet(cameras: list[Any], port: int | None, stop: threading.Event, max_frames: int | None) -> int:
    from linewatch.ingest.fleet import run_fleet
    from linewatch.ingest.metrics import CameraMetrics, serve_metrics

    metrics = CameraMetrics()
    if port is not None:
        serve_metrics(port, metrics.registry)
    results = run_fleet(cameras, metrics=metrics, stop_event=stop, max_frames=max_frames)
    for settings, stats in zip(cameras, results, strict=True):
        if stats is None:
            print(f"camera {settings.camera_id}: FAILED (see log)")
        else:
            print(f"camera {stats.camera_id}: captured {stats.captured}, sent {stats.sent}, "
                  f"dropped {stats.dropped_total}, delivery errors {stats.delivery_errors}")
    return 0 if all(s is not None and s.delivery_errors == 0 for s in results) else 1


def _topics(args: argparse.Namespace) -> int:
    from linewatch.common.service_runner import Overrides
    from linewatch.common.topics import all_topic_names, ensure_topics
    from linewatch.ingest.settings import CameraSettings

    overrides = Overrides.from_args(args, {dest: CAMERA_FLAGS[dest] for dest in ("bootstrap_servers", "partitions")})
    settings = overrides.load(CameraSettings)
    replication = args.replication_factor or settings.topics.replication_factor
    # TopicError (a BrokerError) ends the command with its one line
    outcome = ensure_topics(settings.kafka, all_topic_names(settings.topics), settings.topics.partitions, replication)
    for name, state in outcome.items():
        print(f"{name}: {state}")
    return 0


def register(subparsers: Any) -> None:
    """Add this package's subcommands to the ``linewatch`` parser."""
    camera = subparsers.add_parser("camera", help="publish one camera's frames to Kafka")
    camera.add_argument("--source", help=f"SOURCE: {SOURCE_HELP}")
    camera.add_argument("--camera-id", help="camera id (message key), e.g. cam-1")
    camera.add_argument("--line-id", help="production line id")
    camera.add_argument("--product", help="product the line makes (lw-product); the fallback of --product-source")
    camera.add_argument("--product-source", help="follow the PLC's product: mqtt://host[:port]/TOPIC or "
                                                 "opc.tcp://host:port#NODE_ID (ingest/README.md)")
    camera.add_argument("--fps", type=float, help="frame rate cap")
    camera.add_argument("--resize", type=_size, help="WIDTHxHEIGHT to resize to before encoding")
    camera.add_argument("--encoding", choices=["jpeg", "png", "raw"])
    camera.add_argument("--jpeg-quality", type=int)
    camera.add_argument("--loop", action="store_true", help="restart files/folders/replays at their end")
    camera.add_argument("--queue-size", type=int)
    camera.add_argument("--queue-policy", choices=["auto", "drop-oldest", "block"])
    camera.add_argument("--max-message-bytes", type=int, help="size guard (below the broker's limit)")
    camera.add_argument("--oversize-policy", choices=["resize", "reject"])
    camera.add_argument("--state-dir", help="folder for the per-camera sequence state")
    camera.add_argument("--topic", help="frames topic name")
    camera.add_argument("--metrics-port", type=int, help="serve /metrics on this port")
    camera.add_argument("--max-frames", type=int, help="stop after this many captured frames")
    _kafka_flags(camera)
    camera.set_defaults(func=_camera)

    cameras = subparsers.add_parser("cameras", help="run several cameras from one YAML file")
    cameras.add_argument("--config", required=True, help="YAML file (see ingest/fleet.py and ingest/README.md)")
    cameras.add_argument("--metrics-port", type=_port, help="serve /metrics on this port (overrides the file)")
    cameras.add_argument("--max-frames", type=int, help="stop each camera after this many frames")
    _kafka_flags(cameras)
    cameras.set_defaults(func=_cameras)

    topics = subparsers.add_parser("topics", help="create the line's missing Kafka topics")
    topics.add_argument("--replication-factor", type=int)
    _kafka_flags(topics)
    topics.set_defaults(func=_topics)
