"""``linewatch bench --model M [--backend B] [--batch N] [--seconds S] [--json]`` (measurement: detector/bench.py)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from linewatch.detector.backends.names import BACKENDS, PRECISIONS
from linewatch.detector.bench import FRAME_SIDE


def register_bench(subparsers: Any) -> None:
    """``linewatch bench --model M [--backend B] [--batch N] [--seconds S] [--json]``."""
    p = subparsers.add_parser("bench", help="frames/s and batch latency p50/p99 of the model path on this machine",
                              description="Frames/s and per-batch latency p50/p99 of the whole model path from uint8 "
                              "frames, in a worker thread with the detector's thread settings.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint, or a folder from `linewatch export`")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; bf16 (OpenVINO, CPUs with native bf16); int8 comes from an --int8 export folder")
    p.add_argument("--batch", type=int, default=8, help="frames per batch (8)")
    p.add_argument("--seconds", type=float, default=5.0, help="measuring time after warm-up (5)")
    p.add_argument("--frame-side", type=int, default=FRAME_SIDE, help="side of the square uint8 input frames (256)")
    p.add_argument("--frame-width", type=int, default=0,
                   help="width of the frames, for long parts (default: --frame-side, square frames)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads, as the detector's torch_threads setting (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from linewatch.detector.backends.loader import load_model
    from linewatch.detector.bench import measure

    try:
        model = load_model(args.model, args.backend, args.device, precision=args.precision,
                           threads=args.threads or None)
        result = measure(model, args.batch, args.seconds, threads=args.threads, frame_side=args.frame_side,
                         frame_width=args.frame_width)
    except (ValueError, FileNotFoundError) as exc:  # BackendError, CheckpointError, DeviceError, BenchError
        print(f"linewatch bench: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.backend} {result.precision} batch {result.batch} on {result.device} "
              f"({result.threads} threads, {result.frame_side}px frames -> {result.image_size}px): "
              f"{result.frames_per_s:.1f} frames/s, batch latency p50 {result.p50_ms:.1f} ms, "
              f"p99 {result.p99_ms:.1f} ms over {result.batches} batches")
    return 0
