"""``linewatch bench --model M [--backend B] [--batch N] [--seconds S] [--json]``.

The measurement itself is detector/evaluation/bench.py.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from linewatch.detector.evaluation.bench import FRAME_SIDE
from linewatch.detector.model.vocabulary import Backend, Precision


def register_bench(subparsers: Any) -> None:
    """``linewatch bench --model M [--backend B] [--batch N] [--seconds S] [--json]``."""
    p = subparsers.add_parser("bench", help="frames/s and batch latency p50/p99 of the model path on this machine",
                              description="Frames/s and per-batch latency p50/p99 of the whole model path from uint8 "
                              "frames, in a worker thread with the detector's thread settings.")
    p.add_argument("--model", type=Path, required=True, help="checkpoint, or a folder from `linewatch export`")
    p.add_argument("--backend", choices=Backend.values(), default=Backend.AUTO.value)
    p.add_argument("--precision", choices=Precision.values(), default=None,
                   help="fp32; bf16 (OpenVINO, CPUs with native bf16); int8 comes from an --int8 export folder "
                        "(default: fp32, or as the detector does with --backend auto, bf16 too where the CPU has "
                        "it natively and the model has bf16 thresholds)")
    p.add_argument("--batch", type=_positive_int, default=8, help="frames per batch (8)")
    p.add_argument("--seconds", type=_positive_float, default=5.0, help="measuring time after warm-up (5)")
    p.add_argument("--frame-side", type=int, default=FRAME_SIDE, help="side of the square uint8 input frames (256)")
    p.add_argument("--frame-width", type=int, default=0,
                   help="width of the frames, for long parts (default: --frame-side, square frames)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads, as the detector's torch_threads setting (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_bench)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _bench(args: argparse.Namespace) -> int:
    from linewatch.detector.evaluation.bench import measure
    from linewatch.detector.model.backends.loader import load_model

    model = load_model(args.model, args.backend, args.device, precision=args.precision, threads=args.threads or None)
    result = measure(model, args.batch, args.seconds, threads=args.threads, frame_side=args.frame_side,
                     frame_width=args.frame_width)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.backend} {result.precision} batch {result.batch} on {result.device} "
              f"({result.threads} threads, {result.frame_side}px frames -> {result.image_size}px): "
              f"{result.frames_per_s:.1f} frames/s, batch latency p50 {result.p50_ms:.1f} ms, "
              f"p99 {result.p99_ms:.1f} ms over {result.batches} batches")
    return 0
