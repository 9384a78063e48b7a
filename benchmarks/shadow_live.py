"""What a live shadow costs the line: the detector's throughput with and without one beside it.

Usage (CPU, about 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/shadow_live.py --rounds 3 --backlog 320 --live-fps 20

Each round runs, interleaved so all see the same background load: the detector alone; the detector with a live
shadow at its default budget (``--max-rate 5``); the detector with an unbounded shadow (``--max-rate 0``). The
detector (the default architecture, in this process, as in detector_pipeline.py) drains a backlog of frames
while a feeder publishes live frames at ``--live-fps`` to the same topic; the shadow is its own process (as in a
plant) scoring the live frames with a candidate and the active version of the default architecture. Reported:
the detector's frames/s over the backlog, and the frames the shadow scored and skipped over its budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

from detector_pipeline import Run, default_model

from common import print_header
from linewatch.deploy.local import start_local_stack
from linewatch.ingest.synthetic import render_sample
from linewatch.ingest.wire import encode_frame

CONDITIONS = {"alone": None, "shadow, budget 5/s": 5.0, "shadow, unbounded": 0.0}


def shadow_worker(args: argparse.Namespace) -> None:
    """The shadow process: watch ``--frames-topic`` until stdin closes, then print the report's counts."""
    from linewatch.detector.registry.models import open_registry
    from linewatch.detector.registry.settings import RegistrySettings
    from linewatch.detector.registry.shadow import ShadowOptions
    from linewatch.detector.registry.shadow_live import LiveOptions, LiveShadowRun

    settings = RegistrySettings(kafka={"bootstrap_servers": args.bootstrap},  # type: ignore[arg-type]
                                topics={"frames": args.frames_topic})  # type: ignore[arg-type]
    registry = open_registry(args.database, args.store)
    stop = threading.Event()
    run = LiveShadowRun(settings, registry, ShadowOptions(candidate=args.candidate, product="part", since_ns=0,
                                                          max_rate=args.max_rate),
                        LiveOptions(results_topic=f"{args.frames_topic}-shadow"), stop)
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    threading.Thread(target=lambda: (run.ready.wait(), print("ready", flush=True)), daemon=True).start()
    report = run.run()
    print(json.dumps({"scored": report["frames_scored"], "skipped": report["frames_skipped"]}), flush=True)


def registry_with_two_versions(folder: Path, image_size: int) -> tuple[str, Path, str]:
    """(database URL, model store, candidate version) with the default architecture active for product "part"."""
    from linewatch.detector.model.training.train import TrainConfig, train
    from linewatch.detector.registry.models import open_registry

    database, store = f"sqlite:///{folder / 'registry.db'}", folder / "store"
    active = default_model(folder / "active.safetensors", image_size)
    candidate = folder / "candidate.safetensors"
    if not candidate.exists():
        images = [render_sample(1000 + i, size=256, defect_probability=0.0).image for i in range(16)]
        train(TrainConfig(image_size=image_size, epochs=1, batch_size=8, device="cpu", seed=1), images, candidate,
              progress=False)
    registry = open_registry(database, store)
    registry.promote(registry.register(active, product="part").version, product="part")
    return database, store, registry.register(candidate, product="part").version


def feed(run: Run, jpegs: list, fps: float, stop: threading.Event) -> None:
    """Live frames at ``fps`` on two cameras beyond the backlog's."""
    seq = 0
    while not stop.wait(1.0 / fps):
        run.produce(jpegs, 8 + seq % 2, 100_000 + seq)
        seq += 1


def one_round(stack: Any, model: Any, jpegs: list, args: argparse.Namespace, max_rate: float | None,
              registry: tuple[str, Path, str]) -> dict[str, Any]:
    run = Run(stack, model, args.batch, 50.0, args.threads, f"shadow-{time.time_ns()}")
    for seq in range(args.backlog // 8):
        for cam in range(8):
            run.produce(jpegs, cam, seq)
    run.producer.flush(30)
    shadow = None
    if max_rate is not None:
        database, store, candidate = registry
        shadow = subprocess.Popen(
            [sys.executable, __file__, "--worker", "--bootstrap", stack.bootstrap_servers, "--frames-topic",
             run.topics["frames"], "--database", database, "--store", str(store), "--candidate", candidate,
             "--max-rate", str(max_rate)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert shadow.stdout is not None and shadow.stdout.readline().strip() == "ready"
    stop = threading.Event()
    feeder = threading.Thread(target=feed, args=(run, jpegs, args.live_fps, stop), daemon=True)
    feeder.start()
    run.start()
    results = run.collect(args.backlog, 900)
    stop.set()
    run.stop()
    stamps = sorted(r.processed_ns for r in results)[:args.backlog]
    fps = (len(stamps) - args.batch) / ((stamps[-1] - stamps[args.batch - 1]) / 1e9)
    found: dict[str, Any] = {"detector_fps": round(fps, 2)}
    if shadow is not None:
        out, _ = shadow.communicate("", timeout=120)
        found.update(json.loads(out.strip().splitlines()[-1]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=320)
    parser.add_argument("--live-fps", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--frames-topic", "--database", "--candidate"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-rate", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        shadow_worker(args)
        return
    from linewatch.detector.model.inference import AnomalyModel

    header = print_header()
    folder = Path(tempfile.mkdtemp(prefix="lw-shadow-bench-"))
    registry = registry_with_two_versions(folder, args.image_size)
    model = AnomalyModel.load(default_model(folder / "active.safetensors", args.image_size), device="cpu")
    jpegs = [encode_frame(render_sample(i, size=256).image, camera_id="c", line_id="l", sequence=i, capture_ns=0)
             for i in range(32)]
    stack = start_local_stack()
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    try:
        for _ in range(args.rounds):
            for name, max_rate in CONDITIONS.items():
                rows[name].append(one_round(stack, model, jpegs, args, max_rate, registry))
                print(name, rows[name][-1], flush=True)
    finally:
        stack.stop()
    alone = median(r["detector_fps"] for r in rows["alone"])
    print("| condition | detector frames/s (median) | vs alone | shadow scored / skipped over budget (median) |")
    print("|---|---|---|---|")
    for name, found in rows.items():
        fps = median(r["detector_fps"] for r in found)
        scored = median(r.get("scored", 0) for r in found)
        skipped = median(r.get("skipped", {}).get("over_budget", 0) for r in found)
        shadow = "-" if name == "alone" else f"{scored:.0f} / {skipped:.0f}"
        print(f"| {name} | {fps:.1f} | {fps / alone:.2f} | {shadow} |")
    print(json.dumps({"machine": header, "rows": rows}))


if __name__ == "__main__":
    main()
