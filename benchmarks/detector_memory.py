"""Detector memory over time: warm-up or leak? RSS, Python heap and native heap sampled during a steady stream.

Runs a real detector (in this process, so ``tracemalloc`` sees its Python heap) against a steady
synthetic stream on a local broker and Redis, and every ``--interval`` seconds records:

- ``rss``: resident memory of the process (``/proc/self/status``);
- ``py_heap``: bytes tracemalloc traces (Python objects and numpy buffers) when ``--tracemalloc``;
- ``malloc_used`` / ``malloc_free``: glibc ``mallinfo2`` bytes in use and bytes held free in the
  arenas (fragmentation/caching), which together separate native growth from Python growth;
- sizes of the detector's own bookkeeping (offset tracker, metric label sets, heatmap queue).

At the end it prints the top tracemalloc differences between the end of warm-up and the end.
The producer (a thread cycling through pre-encoded frames) allocates the same small objects each
frame, so it adds a constant, not a trend.

Usage: ``nice -n 10 .venv/bin/python benchmarks/detector_memory.py --duration 300 --image-size 128``
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def malloc_mib() -> tuple[float, float]:
    """glibc heap: (MiB in use incl. mmapped blocks, MiB free but kept in the arenas)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def proc_status() -> tuple[float, int]:
    """Resident memory of this process in MiB, and its thread count."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def produce(bootstrap: str, topic: str, fps: float, cameras: int, size: int, stop: threading.Event) -> None:
    """Send frames at ``fps`` in total, round robin over ``cameras``, from 32 pre-encoded images."""
    from linewatch.ingest.synthetic import render_sample
    from linewatch.ingest.wire import FrameMeta, encode_image, meta_to_headers

    images = [(encode_image(s.image), s.image.shape) for s in (render_sample(i, size=size) for i in range(32))]
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    seq, next_at = 0, time.monotonic()
    while not stop.is_set():
        value, shape = images[seq % len(images)]
        camera = f"cam-{seq % cameras}"
        meta = FrameMeta(camera_id=camera, line_id="line-1", sequence=seq // cameras, capture_ns=time.time_ns(),
                         encoding="jpeg", width=shape[1], height=shape[0], channels=3)
        headers: list[tuple[str, str | bytes | None]] = list(meta_to_headers(meta))
        producer.produce(topic, key=camera.encode(), value=value, headers=headers)
        producer.poll(0)
        seq += 1
        next_at += 1 / fps
        stop.wait(max(0.0, next_at - time.monotonic()))
    producer.flush(10)


def scrape(service: Any, stop: threading.Event) -> None:
    """GET /metrics every 2 s, as Prometheus (and the soak test) does."""
    import httpx

    while not stop.wait(2.0):
        if service.health_port:
            httpx.get(f"http://127.0.0.1:{service.health_port}/metrics", timeout=5)


def bookkeeping(service: Any) -> dict[str, int]:
    """Sizes of the structures that could grow with cameras, sequences or offsets."""
    tracker = service.tracker
    labels = sum(len(getattr(m, "_metrics", {})) for m in (service.metrics.frames_processed,
                                                         service.metrics.consumer_lag,
                                                         service.metrics.stage_seconds))
    return {"tracker_in_flight": tracker.in_flight(), "tracker_partitions": len(tracker._last),
            "metric_children": labels, "work_queue": service._work.qsize()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of steady stream")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--fps", type=float, default=6.0, help="frames/s offered, all cameras together")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=256, help="side of the synthetic frames")
    parser.add_argument("--image-size", type=int, default=128, help="model input side (synthetic lite0 model)")
    parser.add_argument("--model", type=Path, help="an existing checkpoint instead of training one")
    parser.add_argument("--tracemalloc", action="store_true", help="trace the Python heap (slower)")
    parser.add_argument("--trim", action="store_true",
                        help="call glibc malloc_trim(0) before each sample (is the free arena memory returnable?)")
    parser.add_argument("--scrape", action="store_true",
                        help="serve /metrics and scrape it every 2 s, librdkafka statistics every 1 s (as the soak)")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()

    import torch

    from linewatch.deploy.local import start_local_stack
    from linewatch.detector.model.training.train import train_synthetic_model
    from linewatch.detector.service.service import DetectorService
    from linewatch.detector.service.settings import DetectorSettings

    torch.set_num_threads(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds to the finally that stops the broker
    stack = start_local_stack()
    try:
        tag = uuid.uuid4().hex[:8]
        model = args.model or train_synthetic_model(stack.log_dir / "memory.safetensors", epochs=1,
                                                    image_size=args.image_size, n_images=16)
        topics = {role: f"mem-{role}-{tag}" for role in ("frames", "results", "breaches", "dead_letters")}
        admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
        for future in admin.create_topics([NewTopic(t, num_partitions=args.cameras if r == "frames" else 1,
                                                    replication_factor=1) for r, t in topics.items()]).values():
            future.result(15)
        settings = DetectorSettings.model_validate({
            "kafka": {"bootstrap_servers": stack.bootstrap_servers}, "topics": topics,
            "redis": {"url": stack.redis_url, "key_prefix": f"mem-{tag}"}, "model": model, "device": "cpu",
            "torch_threads": 2, "metrics_port": 0 if args.scrape else None, "metrics_host": "127.0.0.1",
            "statistics_interval_ms": 1000 if args.scrape else 5000, "group_id": f"mem-{tag}",
            "session_timeout_ms": 6000,
            "heatmap_ttl_s": 60, "breach_ttl_s": 60})
        if args.tracemalloc:
            tracemalloc.start(8)
        service = DetectorService(settings)
        detector = threading.Thread(target=service.run, daemon=True)
        detector.start()
        service.ready_event.wait(120)
        stop = threading.Event()
        producer = threading.Thread(target=produce, args=(stack.bootstrap_servers, topics["frames"], args.fps,
                                                          args.cameras, args.frame_size, stop), daemon=True)
        producer.start()
        if args.scrape:
            threading.Thread(target=scrape, args=(service, stop), daemon=True).start()
        samples: list[dict[str, Any]] = []
        warm_snapshot = None
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < args.duration + 0.5:
            if args.trim:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            used, free = malloc_mib()
            rss, threads = proc_status()
            sample = {"t": round(elapsed), "rss": round(rss, 1), "threads": threads, "malloc_used": round(used, 1),
                      "malloc_free": round(free, 1),
                      "frames": int(service.metrics.frames_consumed._value.get()), **bookkeeping(service)}
            if args.tracemalloc:
                sample["py_heap"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
                if warm_snapshot is None and elapsed >= args.duration / 2:
                    warm_snapshot = tracemalloc.take_snapshot()
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            time.sleep(args.interval)
        if args.tracemalloc and warm_snapshot is not None:
            end = tracemalloc.take_snapshot()
            print("top Python-heap growth, second half (file:line, +KiB, +count):")
            for stat in end.compare_to(warm_snapshot, "lineno")[:15]:
                frame = stat.traceback[0]
                print(f"  {frame.filename}:{frame.lineno}  {stat.size_diff / 1024:+.1f} KiB  {stat.count_diff:+d}")
        stop.set()
        producer.join(15)
        service.stop_event.set()
        detector.join(60)
    finally:
        stack.stop()
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "samples": samples}, indent=1) + "\n")


if __name__ == "__main__":
    main()
