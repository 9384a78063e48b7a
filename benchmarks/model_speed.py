"""Inference frames/s and training images/s of our STFPM side by side with anomalib's STFPM torch model.

One process, one thread setting for everything: every measurement runs in one worker thread that first
calls ``torch.set_num_threads(T)``, as the detector service's inference thread does (on a busy machine
libgomp's busy-waiting made the main thread's 2-thread team several times slower than a worker
thread's; see benchmarks/results/detector_pipeline.md). Repeats are interleaved (repeat r of every variant before
repeat r+1 of any), so background load on a shared machine hits all variants alike; medians are reported.

Inference: uint8 NHWC frames of 256x256 -> resize + normalise (our ``STFPM.preprocess``, the same code
for the peer, with its ImageNet mean/std) -> teacher + student -> fused anomaly map -> image score.
Training: one SGD step of the student at batch 32; anomalib's step includes the teacher forward (as its
Lightning module does); ours is measured with cached teacher features (as ``detector/model/training/train.py`` does)
and with the teacher forward in the step.

Random init everywhere (speed only). anomalib's teacher is built with ``pre_trained=False``: its
constructor would otherwise download timm weights, which this machine cannot.

Needs a venv with both linewatch and anomalib (see benchmarks/anomalib_env.sh)::

    /tmp/bench-anomalib/bin/python benchmarks/model_speed.py --repeats 5 --out /tmp/model_speed.json

Without anomalib (``--no-peer``) it runs from the project venv and measures ours only.

``--backends`` measures the default configuration (efficientnet_lite0, default taps) at the
default input size (``--sizes``; 192 px, taps 2/4/10 since the accuracy sweep) through its whole
``predict`` path (uint8 frames -> calibrated scores,
verdicts and maps on the host) on every backend and precision of ``linewatch.detector.model.backends``
(torch fp32, ONNX Runtime fp32, OpenVINO fp32, OpenVINO INT8 via NNCF, OpenVINO bf16 where the CPU
has it), side by side with anomalib's STFPM torch model and anomalib's own OpenVINO export of it
(``Stfpm.to_openvino``, run as its ``OpenVINOInferencer`` does: float frames in [0, 1], resize and
normalisation inside the graph) at its default 256 px (``--peer-sizes``), all interleaved in the same
worker thread. Run it with
``OMP_WAIT_POLICY=PASSIVE``: with torch's OpenMP team spinning after each of its calls, the OpenVINO
and ONNX Runtime pools of the same process (and torch itself, between them) lost up to 10x on 2 cores,
which measures the mix, not the runtimes::

    OMP_WAIT_POLICY=PASSIVE /tmp/bench-anomalib/bin/python benchmarks/model_speed.py --backends --repeats 3 \
        --skip-training --out /tmp/model_speed_backends.json
    .venv/bin/python benchmarks/model_speed.py --markdown /tmp/model_speed_backends.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

import common
from linewatch.detector.model.stfpm.backbones import get_spec
from linewatch.detector.model.stfpm.loss import stfpm_loss
from linewatch.detector.model.stfpm.torch_model import STFPM
from linewatch.detector.model.training.train import TrainConfig

FRAME_SIDE = 256  # camera frames; every model resizes them to its own input size
PEER_DEFAULT_SIZE = 256  # anomalib's STFPM default input size
# output stride of each efficientnet_lite0 block (16 blocks; the stem is stride 2)
LITE0_BLOCK_STRIDES = {0: 2, 1: 4, 2: 4, 3: 8, 4: 8, 5: 16, 6: 16, 7: 16, 8: 16, 9: 16, 10: 16}
TRAIN_BATCH = 32


def build_peer(size: int) -> nn.Module:
    """anomalib's STFPMModel(resnet18, layer1-3) with a random-init teacher (no download)."""
    import anomalib.models.image.stfpm.torch_model as peer_mod

    original = peer_mod.TimmFeatureExtractor

    def offline(*args: Any, **kwargs: Any) -> nn.Module:
        kwargs["pre_trained"] = False
        return original(*args, **kwargs)

    peer_mod.TimmFeatureExtractor = offline
    try:
        model = peer_mod.STFPMModel(layers=["layer1", "layer2", "layer3"], backbone="resnet18")
    finally:
        peer_mod.TimmFeatureExtractor = original
    return model


class Variant:
    """One model as measured: its pre-processing, forward and a train step."""

    def __init__(self, name: str, model: nn.Module, prep: STFPM, channels_last: bool, peer: bool) -> None:
        self.name, self.model, self.prep, self.channels_last, self.peer = name, model, prep, channels_last, peer
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)

    def infer(self, frames: torch.Tensor) -> torch.Tensor:
        """Image scores of uint8 frames, pre-processing included."""
        with torch.inference_mode():
            x = self.prep.preprocess(frames)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if self.peer:
                self.model.eval()
                return self.model(x).pred_score
            return self.model.maps_from_input(x).flatten(1).amax(1)  # type: ignore[operator]


def make_variants(size: int, backbones: list[str], peer: bool) -> list[Variant]:
    """Ours per backbone (contiguous as the service runs it, and channels_last); the peer likewise."""
    out = []
    for backbone in backbones:
        model = STFPM(backbone, size).eval()
        for cl in (False, True):
            out.append(Variant(f"ours {backbone}@{size}{' CL' if cl else ''}", model, model, cl, False))
    if peer:
        prep = STFPM("resnet18", size)  # its preprocess: ImageNet mean/std, same resize code
        net = build_peer(size).eval()
        for cl in (False, True):
            out.append(Variant(f"anomalib resnet18@{size}{' CL' if cl else ''}", net, prep, cl, True))
    return out


class PredictVariant:
    """One of our runtimes through the whole predict path (what the detector and ``linewatch bench`` run)."""

    def __init__(self, name: str, model: Any) -> None:
        self.name, self.model = name, model

    def infer(self, frames: torch.Tensor) -> object:
        """Calibrated scores, verdicts and maps of uint8 frames (numpy, as the service's decoder yields them)."""
        return self.model.predict(frames.numpy())


class PeerOpenVINOVariant:
    """anomalib's OpenVINO export of its STFPM, fed as its OpenVINOInferencer feeds it (float in [0, 1])."""

    def __init__(self, name: str, xml: str, threads: int) -> None:
        import openvino as ov

        self.name = name
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def infer(self, frames: torch.Tensor) -> object:
        x = frames.numpy().transpose(0, 3, 1, 2).astype("float32") / 255.0
        return self.request.infer({0: x})


def calibrated_default(size: int) -> Any:
    """The default architecture (random student, pretrained teacher) with a placeholder calibration: speed only."""
    from linewatch.detector.model.calibrate import Calibration
    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.detector.model.metadata import ModelMetadata

    net = STFPM("efficientnet_lite0", size).eval()
    calibration = Calibration(image_threshold=1.0, pixel_threshold=1.0, target_false_alarm_rate=0.01,
                              pixel_false_positive_rate=0.01, log_scale=1.0)
    metadata = ModelMetadata(backbone="efficientnet_lite0", taps=net.taps, image_size=size, calibration=calibration)
    return AnomalyModel(net, metadata, f"bench-lite0-{size}", torch.device("cpu"))


def make_backend_variants(size: int, threads: int, workdir: str) -> list[Any]:
    """Ours (default architecture at ``size``) per backend and precision."""
    import openvino as ov

    from linewatch.detector.model.backends.graph import GraphModel
    from linewatch.detector.model.backends.runners import openvino_capabilities, openvino_runner, ort_runner
    from linewatch.detector.model.export import Int8Options, export_graph, quantize_graph
    from linewatch.ingest.synthetic import render_sample

    base = calibrated_default(size)
    graph = export_graph(base, f"{workdir}/lite0-{size}.onnx")

    def wrapped() -> Any:
        return GraphModel(base.model, base.metadata, base.model_version, torch.device("cpu"))

    # INT8 ranges from synthetic good parts (speed does not depend on where the ranges come from)
    good = [render_sample(i, size=FRAME_SIDE, defect_probability=0.0).image for i in range(32)]
    int8_xml = f"{workdir}/lite0-{size}-int8.xml"
    ov.save_model(quantize_graph(base, ov.Core().read_model(str(graph)), good), int8_xml, compress_to_fp16=False)
    # the earlier scope (the teacher's first block quantized too): what keeping it fp32 costs
    block0_xml = f"{workdir}/lite0-{size}-int8-block0.xml"
    ov.save_model(quantize_graph(base, ov.Core().read_model(str(graph)), good, Int8Options(fp32_first_block=False)),
                  block0_xml, compress_to_fp16=False)
    out = [PredictVariant(f"ours torch fp32 @{size}", base),
           PredictVariant(f"ours onnxruntime fp32 @{size}", wrapped().attach(ort_runner(graph, threads, "cpu"),
                                                                            "onnxruntime", "fp32")),
           PredictVariant(f"ours openvino fp32 @{size}", wrapped().attach(
               openvino_runner(graph, threads, "cpu", "fp32"), "openvino", "fp32")),
           PredictVariant(f"ours openvino int8 @{size}", wrapped().attach(
               openvino_runner(Path(int8_xml), threads, "cpu", "int8"), "openvino", "int8")),
           PredictVariant(f"ours openvino int8, block 0 int8 too @{size}", wrapped().attach(
               openvino_runner(Path(block0_xml), threads, "cpu", "int8"), "openvino", "int8"))]
    if "BF16" in openvino_capabilities():
        out.append(PredictVariant(f"ours openvino bf16 @{size}", wrapped().attach(
            openvino_runner(graph, threads, "cpu", "bf16"), "openvino", "bf16")))
    return out


def export_peer_openvino(size: int, workdir: str) -> str:
    """anomalib's own OpenVINO export of Stfpm(resnet18, layer1-3) at ``size`` (random-init teacher: no download)."""
    import anomalib.models.image.stfpm.torch_model as peer_mod
    from anomalib.models import Stfpm

    original = peer_mod.TimmFeatureExtractor

    def offline(*args: Any, **kwargs: Any) -> nn.Module:
        kwargs["pre_trained"] = False
        return original(*args, **kwargs)

    peer_mod.TimmFeatureExtractor = offline
    try:
        model = Stfpm(backbone="resnet18", layers=["layer1", "layer2", "layer3"],
                      pre_processor=Stfpm.configure_pre_processor(image_size=(size, size)))
    finally:
        peer_mod.TimmFeatureExtractor = original
    root = Path(workdir) / f"anomalib-{size}"
    model.eval()
    exported = model.to_openvino(export_root=root, input_size=(FRAME_SIDE, FRAME_SIDE))
    return str(exported)


def make_peer_variants(size: int, threads: int, workdir: str, errors: dict[str, str]) -> list[Any]:
    """anomalib's torch STFPM through pre-processing (existing Variant) and its OpenVINO export."""
    prep = STFPM("resnet18", size)
    out: list[Any] = [Variant(f"anomalib torch resnet18 @{size}", build_peer(size).eval(), prep, False, True)]
    try:
        out.append(PeerOpenVINOVariant(f"anomalib openvino resnet18 @{size}", export_peer_openvino(size, workdir),
                                       threads))
    except Exception as exc:  # report it in the JSON; the torch peer still runs
        errors[f"anomalib openvino @{size}"] = f"{type(exc).__name__}: {exc}"
    return out


def timed(fn: Callable[[], object], min_s: float) -> tuple[int, float]:
    """Calls of ``fn`` until ``min_s`` passed (at least one): (calls, seconds)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return calls, elapsed


def bench_inference(variants: list[Any], batches: list[int], repeats: int, min_s: float) -> dict[str, Any]:
    """Median frames/s per variant and batch size over interleaved repeats."""
    frames = {b: torch.randint(0, 256, (b, FRAME_SIDE, FRAME_SIDE, 3), dtype=torch.uint8) for b in batches}
    for v in variants:  # warm-up: oneDNN primitive creation for every shape
        for b in batches:
            v.infer(frames[b])
    samples: dict[str, dict[int, list[float]]] = {v.name: {b: [] for b in batches} for v in variants}
    for r in range(repeats):
        for v in variants:
            for b in batches:
                calls, seconds = timed(lambda v=v, b=b: v.infer(frames[b]), min_s)  # type: ignore[misc]
                samples[v.name][b].append(calls * b / seconds)
        print(f"inference repeat {r + 1}/{repeats}: " + "; ".join(
            f"{n} " + "/".join(f"{s[b][-1]:.1f}" for b in batches) for n, s in samples.items()), flush=True)
    return {n: {str(b): {"median": round(statistics.median(v), 2), "runs": [round(x, 2) for x in v]}
                for b, v in s.items()} for n, s in samples.items()}


def train_steps(size: int, backbones: list[str], peer: bool) -> dict[str, Callable[[], object]]:
    """Name -> one SGD step of the student at batch TRAIN_BATCH."""
    steps: dict[str, Callable[[], object]] = {}
    x = torch.randn(TRAIN_BATCH, 3, size, size)
    for backbone in backbones:
        for cached, cl, bf16 in ((True, True, True), (False, True, True), (False, False, False)):
            model = STFPM(backbone, size).train()
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            xi = x.half() if cached else x  # the trainer keeps inputs and teacher features in float16
            feats = [f.half() for f in model.teacher(x)] if cached else None
            opt = torch.optim.SGD(model.student.parameters(), lr=0.4, momentum=0.9, weight_decay=1e-4)

            def step(model: STFPM = model, xi: torch.Tensor = xi, feats: list[torch.Tensor] | None = feats,
                     opt: torch.optim.Optimizer = opt, cl: bool = cl, bf16: bool = bf16) -> None:
                xs = xi.float()
                if cl:
                    xs = xs.contiguous(memory_format=torch.channels_last)
                teacher = feats
                if teacher is None:
                    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                        teacher = model.teacher(xs)
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    student = model.student(xs)
                loss = stfpm_loss(teacher, student)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            label = ("cached teacher" if cached else "teacher fwd in step") + (", CL+bf16" if bf16 else ", fp32")
            steps[f"ours {backbone}@{size} ({label})"] = step
    if peer:
        from anomalib.models.image.stfpm.loss import STFPMLoss

        net, loss_fn = build_peer(size).train(), STFPMLoss()
        opt = torch.optim.SGD(cast(nn.Module, net.student_model).parameters(), lr=0.4, momentum=0.9, weight_decay=1e-4)

        def peer_step() -> None:
            teacher, student = net(x)
            loss = loss_fn(teacher, student)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[f"anomalib resnet18@{size} (teacher fwd in step, fp32, as shipped)"] = peer_step
    return steps


def bench_training(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, Any]:
    """Median images/s per step function, one step per sample, interleaved."""
    for fn in steps.values():
        fn()  # warm-up
    samples: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(repeats):
        for n, fn in steps.items():
            start = time.perf_counter()
            fn()
            samples[n].append(TRAIN_BATCH / (time.perf_counter() - start))
    return {n: {"median": round(statistics.median(v), 2), "runs": [round(x, 2) for x in v]} for n, v in samples.items()}


def backend_tables(report: dict[str, Any]) -> str:
    """Markdown: median frames/s per variant and batch, and ratios of ours to both anomalib configurations."""
    fps = report["inference_fps"]
    batches = sorted({int(b) for cells in fps.values() for b in cells})
    lines = ["| variant | " + " | ".join(f"batch {b}" for b in batches) + " |", "| --- |" + " --- |" * len(batches)]
    lines += [f"| {name} | " + " | ".join(f"{cells[str(b)]['median']:.1f}" for b in batches) + " |"
              for name, cells in fps.items()]
    peers = [n for n in fps if n.startswith("anomalib")]
    lines += ["", "| ours | vs | " + " | ".join(f"batch {b}" for b in batches) + " |",
              "| --- | --- |" + " --- |" * len(batches)]
    for ours in (n for n in fps if n.startswith("ours")):
        for peer in peers:
            ratios = [fps[ours][str(b)]["median"] / max(fps[peer][str(b)]["median"], 1e-9) for b in batches]
            lines.append(f"| {ours} | {peer} | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
    return "\n".join(lines)


def pooled(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report whose medians are over the samples of every process's run (interleaved runs pooled)."""
    fps: dict[str, dict[str, Any]] = {}
    for report in reports:
        for name, cells in report["inference_fps"].items():
            for batch, cell in cells.items():
                fps.setdefault(name, {}).setdefault(batch, {"runs": []})["runs"] += cell["runs"]
    for cells in fps.values():
        for cell in cells.values():
            cell["median"] = round(statistics.median(cell["runs"]), 2)
    return {"inference_fps": fps}


def profile_default(size: int, batch: int, threads: int, calls: int) -> dict[str, float]:
    """OpenVINO's per-node CPU time of our fp32 graph at ``size``, summed by part: where the time goes."""
    import openvino as ov

    from linewatch.detector.model.export import export_graph

    base = calibrated_default(size)
    with tempfile.TemporaryDirectory(prefix="model-speed-") as workdir:
        graph = export_graph(base, f"{workdir}/lite0-{size}.onnx")
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  "PERF_COUNT": True}
        compiled = ov.Core().compile_model(ov.Core().read_model(str(graph)), "CPU", config)
    request = compiled.create_infer_request()
    inputs = {"pixels": torch.randn(batch, 3, size, size).numpy(),
              "thresholds": torch.ones(batch).numpy(), "masks": torch.ones(batch, size, size).numpy()}
    totals: dict[str, float] = {}
    for _ in range(calls + 1):
        request.infer(inputs)
    for info in request.profiling_info:  # the last call's
        name = info.node_name
        block = re.search(r"_blocks\.(\d+)/", name)
        stride = LITE0_BLOCK_STRIDES.get(int(block.group(1)), 32) if block else 2
        kind = {"GroupConvolution": "depthwise conv", "Convolution": "conv 1x1/3x3"}.get(info.node_type, "other")
        part = (f"backbones stride {stride}: {kind}" if "/teacher/" in name or "/student/" in name
                else f"head: {info.node_type}")
        totals[part] = totals.get(part, 0.0) + info.real_time.total_seconds() * 1000
    return {k: round(v, 2) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    """Measure, print progress and a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.5, help="per inference sample")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--no-peer", action="store_true", help="ours only (no anomalib installed)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--out", help="write the JSON summary here too")
    parser.add_argument("--backends", action="store_true",
                        help="ours per backend and precision (predict path) vs anomalib torch + OpenVINO")
    parser.add_argument("--sizes", default=str(TrainConfig().image_size),
                        help="our input sizes for --backends (default: the default model's)")
    parser.add_argument("--peer-sizes", default=str(PEER_DEFAULT_SIZE),
                        help="anomalib's input sizes for --backends (default: its default, 256)")
    parser.add_argument("--markdown", metavar="JSON", nargs="+",
                        help="print the tables of --backends JSON files (their samples pooled) and exit")
    parser.add_argument("--profile", action="store_true",
                        help="where our fp32 OpenVINO graph spends its time at --sizes, batch 8 (ms per part)")
    args = parser.parse_args()
    if args.markdown:
        print(backend_tables(pooled([json.loads(Path(f).read_text()) for f in args.markdown])))
        return
    if args.profile:
        for size in (int(x) for x in args.sizes.split(",")):
            print(size, json.dumps(profile_default(size, 8, args.threads, 3)))
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    peer = not args.no_peer
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": common.machine(),
        "cpus": os.cpu_count(), "load_before": os.getloadavg(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "lite0_default_taps": list(get_spec("efficientnet_lite0").default_taps), "frame_side": FRAME_SIDE}
    if peer:
        from importlib.metadata import version

        report["anomalib"] = version("anomalib")

    def measure_backends() -> None:
        torch.set_num_threads(args.threads)
        errors: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="model-speed-") as workdir:
            variants: list[Any] = []
            for size in (int(x) for x in args.sizes.split(",")):
                variants += make_backend_variants(size, args.threads, workdir)
            for size in (int(x) for x in args.peer_sizes.split(",")) if peer else ():
                variants += make_peer_variants(size, args.threads, workdir, errors)
            report["inference_fps"] = bench_inference(variants, batches, args.repeats, args.min_seconds)
        report["errors"] = errors

    def measure() -> None:
        torch.set_num_threads(args.threads)
        plan = [(128, ["efficientnet_lite0"]), (256, ["efficientnet_lite0", "resnet18"])]
        variants = [v for size, bbs in plan for v in make_variants(size, bbs, peer)]
        report["inference_fps"] = bench_inference(variants, batches, args.repeats, args.min_seconds)
        if not args.skip_training:
            steps = {k: f for size, bbs in plan for k, f in train_steps(size, bbs, peer).items()}
            report["train_images_per_s_batch32"] = bench_training(steps, args.train_repeats)

    worker = threading.Thread(target=measure_backends if args.backends else measure, name="bench-measure")
    worker.start()
    worker.join()
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
