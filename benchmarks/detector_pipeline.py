"""Detector pipeline benchmark: bare model vs broker -> detector -> results + Redis, and micro-batching.

Usage (CPU, about 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/detector_pipeline.py --batch 8 --duration 20 --loads 2,4,8,16 \
        --out /tmp/detector_pipeline.json

Side by side in one process::

    # bare vs pipeline, with and without the overlay PNG the detector used to render per frame:
    .venv/bin/python benchmarks/detector_pipeline.py --loads "" --legacy-overlay both
    # the light-load floor, stage by stage, fetch.wait.max.ms 500 (librdkafka's default) vs 10:
    .venv/bin/python benchmarks/detector_pipeline.py --repeats 0 --loads "" --floor-fetch-waits 500,10
    # the line rated with its cameras (``linewatch cameras`` subprocess, synthetic 256 px) on the same host:
    .venv/bin/python benchmarks/detector_pipeline.py --repeats 0 --loads "" --line-rates 30,40,50,60

Same model, batch size and thread settings for bare and pipeline: ONE ``AnomalyModel`` object is loaded
once and handed to every ``DetectorService`` (its ``model=`` argument); the bare loop calls the same
object's ``predict`` in a worker thread that calls ``torch.set_num_threads(T)`` first, exactly as the
service's inference thread does. Bare and pipeline runs are interleaved.

Why a worker thread: libgomp spins (busy-waits) at barriers for ~300k iterations while the process has
no more OpenMP threads than CPUs, which is the case while only the main thread's team exists. On an
oversubscribed machine a spinning thread burns the time slice its partner needs: ``--thread-check``
showed the main thread 4-10x slower than a worker thread for the same call (on a quiet machine the
main thread was 25-40% faster instead). Once a second team exists
(a worker thread's), libgomp counts more managed threads than CPUs and uses a short spin, then sleeps.
``OMP_WAIT_POLICY=PASSIVE`` or ``GOMP_SPINCOUNT=1000`` removes the difference (see the results file).

Model: the default architecture (``TrainConfig()``: efficientnet_lite0, default taps, its default size unless
``--image-size``), trained 1 epoch on 16 synthetic parts (speed only). Frames: synthetic 256x256 parts
as JPEG on an 8-partition topic of a local Tansu broker; heatmaps to the local Redis.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import yaml
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from linewatch.common.heatmap_codec import render_overlay_png
from linewatch.deploy.local import start_local_stack
from linewatch.detector.events import FrameResult
from linewatch.detector.service import DetectorService, DetectorSettings
from linewatch.detector.service.heatmap_cache import HeatmapCache
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import EncodedFrame, encode_frame, meta_to_headers

FPS = 5.0
WARMUP_S = 3.0
DRAIN_S = 20.0


def default_model(path: Path, image_size: int) -> Path:
    """A checkpoint of the default architecture at ``image_size`` (1 epoch on synthetic parts)."""
    from linewatch.detector.model.training.train import TrainConfig, train

    if not path.exists():
        images = [render_sample(i, size=256, defect_probability=0.0).image for i in range(16)]
        train(TrainConfig(image_size=image_size, epochs=1, batch_size=8, device="cpu"), images, path,
              progress=False)
    return path


def in_thread(fn: Callable[[], float], threads: int) -> float:
    """Run ``fn`` in a fresh thread that first sets torch's thread count, like the service's worker."""
    import torch

    box: list[float] = []

    def target() -> None:
        torch.set_num_threads(threads)
        box.append(fn())

    worker = threading.Thread(target=target, name="bench-infer")
    worker.start()
    worker.join()
    return box[0]


BARE_CPU_MS: list[float] = []  # process CPU per frame of each bare loop


def predict_loop(model: Any, frames: np.ndarray, seconds: float) -> float:
    """Frames/s of ``model.predict`` on one ready uint8 batch, repeated for ``seconds``."""
    model.predict(frames)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        model.predict(frames)
        done += len(frames)
    BARE_CPU_MS.append((time.process_time() - cpu) * 1000 / max(done, 1))
    return done / (time.perf_counter() - start)


def heatmap_cost(map_side: int, rounds: int = 5, n: int = 200) -> dict[str, list[float]]:
    """Writer-thread CPU ms per frame: the old writer (overlay PNG + map PNG) vs now (frame JPEG + map PNG),
    and the reader's render of an overlay from the stored fields; interleaved rounds, one thread."""
    from linewatch.common.heatmap_codec import encode_frame_jpeg, encode_map_png, overlay_from_fields

    image = render_sample(1, size=256).image
    anomaly = np.random.default_rng(0).random((map_side, map_side)).astype(np.float32)
    map_png, scale = encode_map_png(anomaly, 64)
    fields = {"frame": encode_frame_jpeg(image), "map": map_png, "map_scale": repr(scale), "colour_scale": "1.0"}
    ways: dict[str, Callable[[], object]] = {
        "before_overlay_and_map": lambda: (render_overlay_png(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), anomaly, 1.0),
                                           encode_map_png(anomaly, 64)),
        "now_jpeg_and_map": lambda: (encode_frame_jpeg(image), encode_map_png(anomaly, 64)),
        "reader_render_on_request": lambda: overlay_from_fields(fields)}
    out: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.process_time()
            for _ in range(n):
                way()
            out[name].append(round((time.process_time() - start) * 1000 / n, 3))
    return out


def thread_check(model: Any, frames: np.ndarray, threads: int, rounds: int = 3) -> dict[str, list[float]]:
    """The same predict loop from the main thread and from a worker thread, alternately."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, list[float]] = {"main_thread": [], "worker_thread": []}
    for _ in range(rounds):
        out["main_thread"].append(predict_loop(model, frames, 4))
        out["worker_thread"].append(in_thread(lambda: predict_loop(model, frames, 4), threads))
        print(f"thread check: main {out['main_thread'][-1]:.1f}, worker {out['worker_thread'][-1]:.1f} "
              "frames/s", flush=True)
    return out


_ENCODE_ONLY_WRITE = HeatmapCache.write


def _write_with_legacy_overlay(cache: HeatmapCache, entries: list[Any]) -> None:
    """The old heatmap writer when ``Run.legacy_overlay`` is set: it also rendered and
    stored an overlay PNG per frame. Same OpenCV calls, same Redis traffic (one more pipeline per batch)."""
    if Run.legacy_overlay:
        pipe = cache._client.pipeline(transaction=False)
        for entry in entries:
            png = render_overlay_png(cv2.cvtColor(entry.image, cv2.COLOR_RGB2BGR), entry.anomaly_map,
                                     cache.colour_scale)
            pipe.hset(f"{cache.prefix}:hm:{entry.camera_id}:{entry.sequence}", "overlay", png)
        pipe.execute()  # before the real write, whose EXPIRE then covers these hashes too
    _ENCODE_ONLY_WRITE(cache, entries)


HeatmapCache.write = _write_with_legacy_overlay  # type: ignore[method-assign]


class Run:
    """One detector on fresh topics of the shared local stack."""

    overlay_max_side = 256  # the service's default; --overlay-max-side changes it for every run
    fetch_wait_ms = 10  # the service's default; the floor comparison sets 500 (librdkafka's default)
    legacy_overlay = False  # True: also render the overlay PNG per frame, as the old detector did

    def __init__(self, stack: Any, model: Any, batch: int, wait_ms: float, threads: int, tag: str) -> None:
        self.topics = {name: f"bench-{tag}-{name}" for name in ("frames", "results", "breaches", "dead_letters")}
        admin = AdminClient({"bootstrap.servers": stack.bootstrap_servers})
        for future in admin.create_topics([NewTopic(t, num_partitions=8 if r == "frames" else 1,
                                                    replication_factor=1) for r, t in self.topics.items()]).values():
            future.result(15)
        self.settings = DetectorSettings.model_validate({
            "kafka": {"bootstrap_servers": stack.bootstrap_servers}, "topics": self.topics,
            "redis": {"url": stack.redis_url, "key_prefix": f"bench-{tag}"}, "model": Path("unused"),
            "device": "cpu", "group_id": f"bench-{tag}", "max_batch_size": batch, "max_wait_ms": wait_ms,
            "session_timeout_ms": 6000, "metrics_port": None, "decode_workers": 2, "torch_threads": threads,
            "overlay_max_side": self.overlay_max_side, "fetch_wait_max_ms": self.fetch_wait_ms})
        self.producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 2})
        self.service = DetectorService(self.settings, model=model)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.results = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": f"read-{tag}",
                                 "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        self.results.subscribe([self.topics["results"]])
        self.cpu_marks: list[tuple[int, float]] = []  # (results so far, process CPU seconds) while collecting

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
            self.cpu_marks.append((len(got), time.process_time()))
        return got

    def cpu_ms_per_frame(self, after: int) -> float:
        """Process CPU (all threads: consumer, decode, model, outputs, heatmap writer, this reader) per result,
        from the moment ``after`` results had arrived to the last one."""
        start = next((mark for mark in self.cpu_marks if mark[0] >= after), self.cpu_marks[0])
        end = self.cpu_marks[-1]
        return (end[1] - start[1]) * 1000 / max(1, end[0] - start[0])

    def frames_produced(self) -> int:
        """Frames on the frames topic now (sum of the partitions' high watermarks)."""
        from confluent_kafka import TopicPartition

        consumer = Consumer({"bootstrap.servers": self.settings.kafka.bootstrap_servers, "group.id": "watermarks"})
        try:
            return sum(consumer.get_watermark_offsets(TopicPartition(self.topics["frames"], p), timeout=10)[1]
                       for p in range(8))
        finally:
            consumer.close()

    def mean_batch(self) -> float:
        reg = self.service.metrics.registry
        count = reg.get_sample_value("linewatch_detector_batch_size_count") or 0.0
        return (reg.get_sample_value("linewatch_detector_batch_size_sum") or 0.0) / max(count, 1.0)

    def stop(self) -> None:
        self.service.stop_event.set()
        self.thread.join(60)
        self.results.close()


def pipeline_throughput(stack: Any, model: Any, batch: int, threads: int, jpegs: list[EncodedFrame],
                        frames: int) -> tuple[float, float, float]:
    """(frames/s, mean batch, process CPU ms per frame) of the whole pipeline on a backlog produced first.

    Timed from the last result of the first batch to the last result, over the frames after the first
    batch (the backlog fills every batch, so the first batch is the first ``batch`` results).
    """
    run = Run(stack, model, batch, 50.0, threads, f"tp-{batch}-{time.time_ns()}")
    for seq in range(frames // 8):
        for cam in range(8):
            run.produce(jpegs, cam, seq)
    run.producer.flush(30)
    run.start()
    results = run.collect(frames, 600)
    run.stop()
    stamps = sorted(r.processed_ns for r in results)
    return (len(stamps) - batch) / ((stamps[-1] - stamps[batch - 1]) / 1e9), run.mean_batch(), \
        run.cpu_ms_per_frame(after=batch)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; inf entries stand for frames with no result by the end of the drain."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(q * len(ordered))) - 1))] if ordered else float("nan")


def _median_part(results: list[FrameResult], part: str) -> float:
    values = [float(getattr(r.latency, f"{part}_ms")) for r in results]
    return round(statistics.median(values), 1) if values else float("nan")


def histogram_ms(registry: Any, name: str, **labels: str) -> dict[str, float]:
    """Mean and bucket-interpolated median (ms) of a Prometheus histogram of seconds, and its count."""
    buckets: list[tuple[float, float]] = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == f"{name}_bucket" and all(sample.labels.get(k) == v for k, v in labels.items()):
                buckets.append((float(sample.labels["le"]), sample.value))
    count = registry.get_sample_value(f"{name}_count", labels) or 0.0
    total = registry.get_sample_value(f"{name}_sum", labels) or 0.0
    if not count:
        return {"n": 0, "mean_ms": float("nan"), "p50_ms": float("nan")}
    median, lower, below = float("nan"), 0.0, 0.0
    for upper, cumulative in sorted(buckets):
        if cumulative >= count / 2:
            inside = (count / 2 - below) / max(cumulative - below, 1e-9)
            median = lower + inside * ((upper if upper != float("inf") else lower * 2) - lower)
            break
        lower, below = upper, cumulative
    return {"n": int(count), "mean_ms": round(total / count * 1000, 2), "p50_ms": round(median * 1000, 1)}


def stage_breakdown(run: Run, results: list[FrameResult]) -> dict[str, Any]:
    """Where a frame's time goes, stage by stage (per frame unless marked per batch)."""
    reg = run.service.metrics.registry
    stages = {f"{stage}_per_frame": histogram_ms(reg, "linewatch_detector_frame_wait_seconds", stage=stage)
              for stage in ("fetch", "batch")}  # broker append -> polled; polled -> batch closed
    stages |= {f"{stage}_per_batch": histogram_ms(reg, "linewatch_detector_stage_seconds", stage=stage)
               for stage in ("decode_wait", "inference", "produce", "heatmap_encode")}
    stages["decode_per_frame_p50_ms"] = _median_part(results, "decode")
    return stages


def offered_load(stack: Any, model: Any, batch: int, wait_ms: float, threads: int, jpegs: list[EncodedFrame],
                 cameras: int, duration_s: float) -> dict[str, Any]:
    """Cameras x 5 fps for ``duration_s``; throughput in the window, end-to-end latency after warm-up.

    Frames with no result ``DRAIN_S`` after the window count as infinitely late, so p99 under overload
    reads "inf" instead of a flattering figure over the finished frames only.
    """
    run = Run(stack, model, batch, wait_ms, threads, f"load-{cameras}-{batch}-{time.time_ns()}")
    run.start()
    start, start_ns = time.monotonic(), time.time_ns()
    sent: dict[tuple[str, int], int] = {}
    tick = 0
    while time.monotonic() - start < duration_s:
        for cam in range(cameras):
            run.produce(jpegs, cam, tick)
            sent[(f"cam-{cam}", tick)] = time.time_ns()
        tick += 1
        time.sleep(max(0.0, start + tick / FPS - time.monotonic()))
    window_end = time.time_ns()
    run.producer.flush(10)
    results = run.collect(len(sent), DRAIN_S)
    run.stop()
    stages = stage_breakdown(run, results)
    late = {(r.camera_id, r.sequence): r.latency.end_to_end_ms for r in results}
    warm_ns = start_ns + int(WARMUP_S * 1e9)  # oneDNN primitive creation, group join: not the steady state
    lat = [late.get(key, float("inf")) for key, ns in sent.items() if ns >= warm_ns]
    in_window = sum(1 for r in results if start_ns + WARMUP_S * 1e9 <= r.processed_ns <= window_end)
    return {"cameras": cameras, "batch": batch, "offered_fps": cameras * FPS, "produced": len(sent),
            "throughput_fps": round(in_window / (duration_s - WARMUP_S), 2), "mean_batch": round(run.mean_batch(), 2),
            "p50_ms": round(percentile(lat, 0.5), 1), "p99_ms": round(percentile(lat, 0.99), 1),
            "completed": len(results),
            # where the time goes (medians over finished frames): broker + poll, decode, model
            **{f"{part}_p50_ms": _median_part(results, part) for part in ("queue", "decode", "inference")},
            "fetch_wait_ms": run.fetch_wait_ms, "stages": stages}


def line_with_cameras(stack: Any, model: Any, batch: int, wait_ms: float, threads: int, total_fps: float,
                      duration_s: float, cameras: int = 4) -> dict[str, Any]:
    """The line on one host: ``linewatch cameras`` (synthetic 256 px parts, rendered and JPEG-encoded per
    frame, a subprocess) at ``total_fps`` split over ``cameras``, into the detector of this process.

    It keeps up when it finishes >= 95% of the offered frames in the window, its backlog at the end of
    the window is under two seconds of frames, and p99 end to end (frames captured after the warm-up, each
    still without a result ``DRAIN_S`` after the cameras stopped counted as infinitely late) is within two
    frame periods.
    """
    run = Run(stack, model, batch, wait_ms, threads, f"line-{total_fps:g}-{time.time_ns()}")
    run.start()
    folder = Path(tempfile.mkdtemp(prefix="lw-line-"))
    fleet = folder / "cameras.yaml"
    fleet.write_text(yaml.safe_dump({"defaults": {
        "line_id": "line-1", "source": "synthetic:?size=256", "fps": total_fps / cameras,
        "queue_policy": "drop-oldest", "state_dir": str(folder / "state"),
        "kafka": {"bootstrap_servers": stack.bootstrap_servers},
        "topics": {"frames": run.topics["frames"], "partitions": 8}},
        "cameras": [{"camera_id": f"cam-{i}"} for i in range(cameras)]}))
    with (folder / "cameras.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "linewatch.deploy.cli", "cameras", "--config", str(fleet)],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        first = run.collect(1, 120)  # cameras started, first result out: the clock starts now
        if not first:
            raise RuntimeError(f"no result from the cameras; see {folder / 'cameras.log'}")
        start_ns, cpu_start = time.time_ns(), time.process_time()
        got = first + run.collect(10**9, duration_s)
        window_end_ns = time.time_ns()
        backlog = run.frames_produced() - len(got)
        cpu_s = time.process_time() - cpu_start
        cpu_frames = len(got) - 1
    finally:
        proc.terminate()
        proc.wait(30)
    produced = run.frames_produced()
    got += run.collect(produced - len(got), DRAIN_S)  # frames in flight at the window's end
    run.stop()
    warm_ns = start_ns + int(WARMUP_S * 1e9)
    window = [r for r in got if warm_ns <= r.processed_ns <= window_end_ns]
    # Frames with no result DRAIN_S after the cameras stopped count as infinitely late.
    missing = max(0, produced - len(got))
    lat = [r.latency.end_to_end_ms for r in got if r.capture_ns >= warm_ns] + [float("inf")] * missing
    throughput = len(window) / ((window_end_ns - warm_ns) / 1e9)
    period_ms = 1000 * cameras / total_fps
    row = {"offered_fps": total_fps, "cameras": cameras, "throughput_fps": round(throughput, 2),
           "mean_batch": round(run.mean_batch(), 2), "backlog_at_end": backlog,
           "p50_ms": round(percentile(lat, 0.5), 1), "p99_ms": round(percentile(lat, 0.99), 1),
           "two_periods_ms": round(2 * period_ms, 1),
           "detector_cpu_ms_per_frame": round(cpu_s * 1000 / max(1, cpu_frames), 2),
           "load_avg": os.getloadavg()[0], "stages": stage_breakdown(run, got)}
    row["keeps_up"] = bool(throughput >= 0.95 * total_fps and backlog <= 2 * total_fps
                           and row["p99_ms"] <= 2 * period_ms)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--wait-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--loads", default="2,4,8,16")
    parser.add_argument("--repeats", type=int, default=3, help="bare/pipeline pairs")
    parser.add_argument("--backlog", type=int, default=240)
    parser.add_argument("--image-size", type=int, help="default: TrainConfig's (the detector's default model)")
    parser.add_argument("--model", type=Path, help="a checkpoint; default: the default architecture, 1 epoch")
    parser.add_argument("--overlay-max-side", type=int, default=256, help="heatmap overlay PNG side")
    parser.add_argument("--legacy-overlay", choices=("off", "on", "both"), default="off",
                        help="also render the per-frame overlay PNG like the old detector; both: "
                             "interleave pipeline runs without and with it")
    parser.add_argument("--fetch-wait-ms", type=int, default=10, help="the detector's fetch.wait.max.ms")
    parser.add_argument("--floor-fetch-waits", default="", help="e.g. 500,10: light load at each, interleaved")
    parser.add_argument("--floor-cameras", type=int, default=2)
    parser.add_argument("--floor-repeats", type=int, default=2)
    parser.add_argument("--line-rates", default="", help="total camera frames/s to try with `linewatch cameras`")
    parser.add_argument("--line-duration", type=float, default=30.0)
    parser.add_argument("--thread-check", action="store_true", help="main vs worker thread, then stop")
    parser.add_argument("--heatmap-cost", action="store_true", help="heatmap CPU per frame before/after, then stop")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.detector.model.training.train import TrainConfig

    image_size = args.image_size or TrainConfig().image_size
    path = args.model or default_model(Path(tempfile.gettempdir()) / f"lw-bench-default-{image_size}"
                                       ".safetensors", image_size)
    model = AnomalyModel.load(path, device="cpu")
    Run.overlay_max_side = args.overlay_max_side
    Run.fetch_wait_ms = args.fetch_wait_ms
    frames = np.stack([render_sample(i, size=256).image for i in range(args.batch)])
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg(), "batch": args.batch,
        "wait_ms": args.wait_ms, "threads": args.threads, "fetch_wait_ms": args.fetch_wait_ms,
        "legacy_overlay": args.legacy_overlay,
        "overlay_max_side": args.overlay_max_side, "model": f"{model.backbone} taps "
        f"{list(model.model.taps)} at {model.image_size} px", "torch": torch.__version__,
        "omp_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}
    if args.heatmap_cost:
        cv2.setNumThreads(1)  # CPU per frame of one writer thread
        map_side = int(np.asarray(model.predict(frames[:1]).maps[0]).shape[0])  # the model's own map size
        report["heatmap_cost_cpu_ms_per_frame"] = heatmap_cost(map_side)
        report["map_side"] = map_side
        print(json.dumps(report, indent=1))
        return
    if args.thread_check:
        report["thread_check"] = thread_check(model, frames, args.threads)
        print(json.dumps(report, indent=1))
        return
    jpegs = [encode_frame(render_sample(i, size=256).image, camera_id="c", line_id="l", sequence=i,
                          capture_ns=0) for i in range(32)]
    stack = start_local_stack()
    try:
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.legacy_overlay]
        bare: list[float] = []
        pipe: dict[bool, list[tuple[float, float, float]]] = {legacy: [] for legacy in modes}
        for _ in range(args.repeats):  # interleaved: all see the same background load
            bare.append(in_thread(lambda: predict_loop(model, frames, 10), args.threads))
            print(f"bare {bare[-1]:.2f} fps, {BARE_CPU_MS[-1]:.2f} CPU ms/frame", flush=True)
            for legacy in modes:
                Run.legacy_overlay = legacy
                pipe[legacy].append(pipeline_throughput(stack, model, args.batch, args.threads, jpegs, args.backlog))
                fps, mean_batch, cpu_ms = pipe[legacy][-1]
                print(f"pipeline{' + legacy overlay' if legacy else ''} {fps:.2f} fps, {cpu_ms:.2f} CPU ms/frame "
                      f"(mean batch {mean_batch:.1f})", flush=True)
            Run.legacy_overlay = False
        if args.repeats:
            report.update(bare_fps=bare, bare_cpu_ms_per_frame=BARE_CPU_MS[-len(bare):],
                          bare_median=statistics.median(bare))
            for legacy, runs in pipe.items():
                tag = "pipeline_legacy_overlay" if legacy else "pipeline"
                report.update({f"{tag}_fps": [r[0] for r in runs], f"{tag}_mean_batch": [r[1] for r in runs],
                               f"{tag}_cpu_ms_per_frame": [round(r[2], 2) for r in runs],
                               f"{tag}_median": statistics.median(r[0] for r in runs),
                               f"{tag}_ratio": statistics.median(r[0] for r in runs) / statistics.median(bare)})
        floor = []
        waits = [int(w) for w in args.floor_fetch_waits.split(",") if w]
        for _ in range(args.floor_repeats if waits else 0):
            for wait in waits:
                Run.fetch_wait_ms = wait
                row = offered_load(stack, model, args.batch, args.wait_ms, args.threads, jpegs, args.floor_cameras,
                                   args.duration)
                print(json.dumps(row), flush=True)
                floor.append(row)
        Run.fetch_wait_ms = args.fetch_wait_ms
        report["floor"] = floor
        line = []
        for rate in (float(r) for r in args.line_rates.split(",") if r):
            row = line_with_cameras(stack, model, args.batch, args.wait_ms, args.threads, rate, args.line_duration)
            print(json.dumps(row), flush=True)
            line.append(row)
        report["line"] = line
        loads = []
        for cameras in (int(c) for c in args.loads.split(",") if c):
            for batch in (args.batch, 1):
                row = offered_load(stack, model, batch, args.wait_ms, args.threads, jpegs, cameras, args.duration)
                print(json.dumps(row), flush=True)
                loads.append(row)
        report["loads"] = loads
    finally:
        stack.stop()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
