"""Inference frames/s and training images/s of our STFPM side by side with anomalib's STFPM torch model.

One process, one thread setting for everything: every measurement runs in one worker thread that first
calls ``torch.set_num_threads(T)``, as the detector service's inference thread does (on a busy machine
libgomp's busy-waiting made the main thread's 2-thread team several times slower than a worker
thread's; see benchmarks/results/detector_pipeline.md). Repeats are interleaved (repeat r of every variant before
repeat r+1 of any), so background load on a shared machine hits all variants alike; medians are reported.

Inference: uint8 NHWC frames of 256x256 -> resize + normalise (our ``STFPM.preprocess``, the same code
for the peer, with its ImageNet mean/std) -> teacher + student -> fused anomaly map -> image score.
Training: one SGD step of the student at batch 32; anomalib's step includes the teacher forward (as its
Lightning module does); ours is measured with cached teacher features (as ``detector/train.py`` does)
and with the teacher forward in the step.

Random init everywhere (speed only). anomalib's teacher is built with ``pre_trained=False``: its
constructor would otherwise download timm weights, which this machine cannot.

Needs a venv with both linewatch and anomalib (see benchmarks/anomalib_env.sh)::

    /tmp/bench-anomalib/bin/python benchmarks/model_speed.py --repeats 5 --out /tmp/model_speed.json

Without anomalib (``--no-peer``) it runs from the project venv and measures ours only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from linewatch.detector.stfpm.backbones import get_spec
from linewatch.detector.stfpm.loss import stfpm_loss
from linewatch.detector.stfpm.torch_model import STFPM

FRAME_SIDE = 256  # camera frames; every model resizes them to its own input size
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


def timed(fn: Callable[[], object], min_s: float) -> tuple[int, float]:
    """Calls of ``fn`` until ``min_s`` passed (at least one): (calls, seconds)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return calls, elapsed


def bench_inference(variants: list[Variant], batches: list[int], repeats: int, min_s: float) -> dict[str, Any]:
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    peer = not args.no_peer
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "load_before": os.getloadavg(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "lite0_default_taps": list(get_spec("efficientnet_lite0").default_taps), "frame_side": FRAME_SIDE}
    if peer:
        from importlib.metadata import version

        report["anomalib"] = version("anomalib")

    def measure() -> None:
        torch.set_num_threads(args.threads)
        plan = [(128, ["efficientnet_lite0"]), (256, ["efficientnet_lite0", "resnet18"])]
        variants = [v for size, bbs in plan for v in make_variants(size, bbs, peer)]
        report["inference_fps"] = bench_inference(variants, batches, args.repeats, args.min_seconds)
        if not args.skip_training:
            steps = {k: f for size, bbs in plan for k, f in train_steps(size, bbs, peer).items()}
            report["train_images_per_s_batch32"] = bench_training(steps, args.train_repeats)

    worker = threading.Thread(target=measure, name="bench-measure")
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
