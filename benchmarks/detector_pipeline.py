"""Detector pipeline benchmark: bare model vs broker -> detector -> results + Redis, and micro-batching.

Usage (CPU, a few minutes)::

    nice -n 10 .venv/bin/python benchmarks/detector_pipeline.py --batch 8 --duration 12 \
        --loads 1,2,4,8,16 --out benchmarks/results/detector_pipeline.json

Model: the default architecture (efficientnet_lite0 at 256 px), a checkpoint from
``train_synthetic_model(image_size=256, epochs=1)`` (weights barely trained; speed only).
Frames: synthetic 256x256 parts as JPEG, produced on a local Tansu broker.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from deploy.local import start_local_stack
from detector.events import FrameResult
from detector.service import DetectorService, DetectorSettings
from ingest.synthetic import render_sample
from ingest.wire import EncodedFrame, encode_frame, meta_to_headers

FPS = 5.0
WARMUP_S = 3.0


def _model(path: Path) -> Path:
    from detector.train import train_synthetic_model

    if not path.exists():
        train_synthetic_model(path, epochs=1, image_size=256, n_images=16)
    return path


def bare_throughput(model_path: Path, batch: int, seconds: float) -> float:
    """Frames/s of ``AnomalyModel.predict`` on ready uint8 batches (no decode, no Kafka).

    Runs in a worker thread like the service's inference thread: on this oversubscribed 2-core
    machine the main thread ran 4x slower (OpenMP threads spinning against other processes).
    """
    box: list[float] = []
    thread = threading.Thread(target=lambda: box.append(_bare(model_path, batch, seconds)))
    thread.start()
    thread.join()
    return box[0]


def _bare(model_path: Path, batch: int, seconds: float) -> float:
    import torch

    from detector.inference import AnomalyModel

    model = AnomalyModel.load(model_path, device="auto")
    torch.set_num_threads(2)
    frames = np.stack([render_sample(i, size=256).image for i in range(batch)])
    model.predict(frames)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(frames)
        done += batch
    return done / (time.perf_counter() - start)


class Run:
    """One detector on fresh topics of the shared local stack."""

    def __init__(self, stack: Any, model: Path, batch: int, wait_ms: float, tag: str) -> None:
        self.topics = {name: f"bench-{tag}-{name}" for name in ("frames", "results", "breaches", "dead_letters")}
        admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
        for future in admin.create_topics([NewTopic(t, num_partitions=8 if r == "frames" else 1,
                                                    replication_factor=1) for r, t in self.topics.items()]).values():
            future.result(15)
        self.settings = DetectorSettings.model_validate({
            "kafka": {"bootstrap_servers": stack.bootstrap_servers}, "topics": self.topics,
            "redis": {"url": stack.redis_url, "key_prefix": f"bench-{tag}"}, "model": model, "device": "auto",
            "group_id": f"bench-{tag}", "max_batch_size": batch, "max_wait_ms": wait_ms, "session_timeout_ms": 6000,
            "metrics_port": None, "decode_workers": 2, "torch_threads": 2})
        self.producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 2})
        self.service = DetectorService(self.settings)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.results = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"read-{tag}",
                                 "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        self.results.subscribe([self.topics["results"]])

    def start(self) -> None:
        self.thread.start()
        if not self.service.ready_event.wait(120):
            raise RuntimeError("detector did not join the group")

    def produce(self, jpegs: list[EncodedFrame], camera: int, seq: int) -> None:
        frame = jpegs[(seq + camera) % len(jpegs)]
        meta = replace(frame.meta, camera_id=f"cam-{camera}", sequence=seq, capture_ns=time.time_ns())
        self.producer.produce(self.topics["frames"], key=meta.camera_id.encode(), value=frame.value,
                              headers=cast(Any, meta_to_headers(meta)))
        self.producer.poll(0)

    def collect(self, count: int, timeout_s: float) -> list[FrameResult]:
        got: list[FrameResult] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count and time.monotonic() < deadline:
            for msg in self.results.consume(200, timeout=0.2):
                if msg.error() is None:
                    got.append(FrameResult.model_validate_json(msg.value() or b""))
        return got

    def stop(self) -> None:
        self.service.stop_event.set()
        self.thread.join(60)
        self.results.close()


def pipeline_throughput(stack: Any, model: Path, batch: int, jpegs: list[EncodedFrame], frames: int) -> float:
    """Frames/s of the whole pipeline on a backlog (frames produced before the detector starts)."""
    run = Run(stack, model, batch, 50.0, f"tp-{batch}-{time.time_ns()}")
    for seq in range(frames // 8):
        for cam in range(8):
            run.produce(jpegs, cam, seq)
    run.producer.flush(30)
    run.start()
    results = run.collect(frames, 600)
    run.stop()
    stamps = sorted(r.processed_ns for r in results)
    first_batch = sum(1 for s in stamps if s - stamps[0] < 1e6)
    return (len(stamps) - first_batch) / ((stamps[-1] - stamps[0]) / 1e9)


def offered_load(stack: Any, model: Path, batch: int, wait_ms: float, jpegs: list[EncodedFrame], cameras: int,
                 duration_s: float) -> dict[str, Any]:
    """Cameras x 5 fps for ``duration_s``; throughput and end-to-end latency of results in the window."""
    run = Run(stack, model, batch, wait_ms, f"load-{cameras}-{batch}-{time.time_ns()}")
    run.start()
    start = time.monotonic()
    produced, tick = 0, 0
    while time.monotonic() - start < duration_s:
        for cam in range(cameras):
            run.produce(jpegs, cam, tick)
            produced += 1
        tick += 1
        time.sleep(max(0.0, start + tick / FPS - time.monotonic()))
    window_end = time.time_ns()
    warm_ns = window_end - int((duration_s - WARMUP_S) * 1e9)
    run.producer.flush(10)
    results = run.collect(produced, 15)
    run.stop()
    in_window = [r for r in results if r.processed_ns <= window_end]
    # The first WARMUP_S seconds (oneDNN primitive creation, first fetches) are not the steady state.
    lat = sorted(r.latency.end_to_end_ms for r in results if r.capture_ns >= warm_ns) or [float("nan")]
    return {"cameras": cameras, "batch": batch, "offered_fps": cameras * FPS, "produced": produced,
            "processed_in_window": len(in_window), "throughput_fps": len(in_window) / duration_s,
            "p50_ms": lat[len(lat) // 2], "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "completed": len(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=20.0)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--loads", default="1,2,4,8,16")
    parser.add_argument("--backlog", type=int, default=160)
    parser.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "lw-bench-256.safetensors")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(2)
    model = _model(args.model)
    jpegs = [encode_frame(render_sample(i, size=256).image, camera_id="c", line_id="l", sequence=i,
                          capture_ns=0) for i in range(32)]
    stack = start_local_stack()
    report: dict[str, Any] = {"batch": args.batch, "wait_ms": args.wait_ms, "device": str(torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"))}
    try:
        # Interleaved, so that both see the same background load on a shared machine.
        bare, pipe = [], []
        for _ in range(3):
            bare.append(bare_throughput(model, args.batch, 8))
            pipe.append(pipeline_throughput(stack, model, args.batch, jpegs, args.backlog))
            print(f"bare {bare[-1]:.2f} fps, pipeline {pipe[-1]:.2f} fps", flush=True)
        report.update(bare_fps=bare, pipeline_fps=pipe, bare_median=statistics.median(bare),
                      pipeline_median=statistics.median(pipe),
                      ratio=statistics.median(pipe) / statistics.median(bare))
        print(json.dumps({k: v for k, v in report.items()}, indent=1), flush=True)
        loads = []
        for cameras in (int(c) for c in args.loads.split(",") if c):
            for batch in (args.batch, 1):
                row = offered_load(stack, model, batch, args.wait_ms, jpegs, cameras, args.duration)
                print(json.dumps(row), flush=True)
                loads.append(row)
        report["loads"] = loads
    finally:
        stack.stop()
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
