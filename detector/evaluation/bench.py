"""``linewatch bench``: frames/s and per-batch latency of the whole model path, as the detector runs it.

Whole path: uint8 (N, F, F, 3) camera frames -> ``predict`` (resize + normalise, network, map fusion,
score rule, normalisation, verdicts, maps back on the host). It runs in a worker thread that first
sets torch's intra-op threads, as the detector service's inference thread does (OpenMP thread teams
are per calling thread; a main-thread measurement is not what the service gets). Plants size
hardware with it (``linewatch bench``, in :mod:`linewatch.detector.model.backends.cli`); ``auto`` backend
selection and benchmarks/model_speed.py use :func:`measure` too.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from linewatch.errors import ConfigurationError

if TYPE_CHECKING:
    from linewatch.detector.model.inference import InferenceModel

FRAME_SIDE = 256  # camera frame side of the synthetic input; every model resizes it to its own size
WARMUP_BATCHES = 2  # first calls build kernels/primitives for the shape; not timed


class BenchError(ConfigurationError, ValueError):
    """The measurement could not run; the message says why."""


@dataclass(frozen=True)
class BenchResult:
    """One measurement: the keys ``linewatch bench --json`` prints."""

    backend: str
    precision: str
    batch: int
    frames_per_s: float
    p50_ms: float
    p99_ms: float
    batches: int
    seconds: float
    threads: int
    device: str
    image_size: int
    frame_side: int
    frame_width: int = 0  # frames are frame_side high and this wide (0: square)


def backend_of(model: InferenceModel) -> tuple[str, str]:
    """(backend, precision) of a loaded model; the torch runtime carries no label of its own."""
    return str(getattr(model, "backend", "torch")), str(getattr(model, "precision", "fp32"))


def _in_worker(fn: Any, threads: int) -> Any:
    """Run ``fn()`` in a fresh thread with ``threads`` torch threads (0: torch's default); re-raise its error."""
    import torch

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            if threads:
                torch.set_num_threads(threads)  # per calling thread, as in the service's _work_loop
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name="bench-model")
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _time_batches(model: InferenceModel, frames: np.ndarray, seconds: float, min_batches: int) -> list[float]:
    for _ in range(WARMUP_BATCHES):
        model.predict(frames)
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < min_batches or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        model.predict(frames)
        latencies.append(time.perf_counter() - t0)
    return latencies


def measure(model: InferenceModel, batch: int = 8, seconds: float = 5.0, *, threads: int = 0,
            frame_side: int = FRAME_SIDE, min_batches: int = 3, seed: int = 0, frame_width: int = 0) -> BenchResult:
    """Frames/s and per-batch latency p50/p99 of ``model.predict`` on random uint8 frames, in a worker thread."""
    import torch

    if batch < 1 or seconds <= 0:
        raise BenchError(f"batch must be >= 1 and seconds > 0, got batch {batch}, seconds {seconds}")
    # long frames (frame_width) size a tiled model's real load: a long part runs as several tiles
    shape = (batch, frame_side, frame_width or frame_side, 3)
    frames = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)

    def run() -> tuple[list[float], int]:
        return _time_batches(model, frames, seconds, min_batches), torch.get_num_threads()

    latencies, used_threads = _in_worker(run, threads)
    total = float(sum(latencies))
    backend, precision = backend_of(model)
    ms = np.asarray(latencies) * 1000.0
    return BenchResult(backend=backend, precision=precision, batch=batch,
                       frames_per_s=round(batch * len(latencies) / total, 2),
                       p50_ms=round(float(np.percentile(ms, 50)), 2), p99_ms=round(float(np.percentile(ms, 99)), 2),
                       batches=len(latencies), seconds=round(total, 3), threads=used_threads,
                       device=str(model.device), image_size=int(model.image_size), frame_side=frame_side,
                       frame_width=frame_width or frame_side)
