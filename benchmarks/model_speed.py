"""Inference frames/s (batch 1, 8, 32) and training images/s of our STFPM, with channels_last/bf16 on and off.

Teacher + student + fused map at 256x256 from uint8 frames (pre-processing included), 2 threads.

    nice -n 10 .venv/bin/python benchmarks/model_speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from detector.stfpm.loss import stfpm_loss
from detector.stfpm.torch_model import STFPM


def _best_time(fn: object, repeats: int) -> float:
    assert callable(fn)
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def inference_fps(model: STFPM, batch: int, size: int, channels_last: bool, bf16: bool, repeats: int) -> float:
    """Best-of-``repeats`` frames/s of the full forward."""
    frames = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    net = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            x = net.preprocess(frames)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            net.maps_from_input(x).flatten(1).amax(1)

    return batch / _best_time(run, repeats)


def training_ips(model: STFPM, batch: int, size: int, channels_last: bool, bf16: bool, repeats: int) -> float:
    """Student forward+backward+step images/s against cached teacher features (as train.py does)."""
    net = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).train()
    x = torch.randn(batch, 3, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        teacher = [f.half() for f in net.teacher(x)]
    opt = torch.optim.SGD(net.student.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            student = net.student(x)
        loss = stfpm_loss(teacher, student)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / _best_time(step, repeats)


def main() -> None:
    """Run every variant, print a JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,8,32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = STFPM(args.backbone, args.size)  # random init is fine for speed
    results: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or
                                  platform.machine(), "threads": args.threads, "torch": torch.__version__,
                                  "backbone": args.backbone, "size": args.size}
    for cl in (False, True):
        for bf16 in (False, True):
            name = f"channels_last={cl},bf16={bf16}"
            fps = {b: round(inference_fps(model, int(b), args.size, cl, bf16, args.repeats), 2)
                   for b in args.batches.split(",")}
            ips = round(training_ips(model, 16, args.size, cl, bf16, args.repeats), 2)
            results[name] = {"inference_fps": fps, "train_images_per_s_batch16": ips}
            print(name, fps, "train", ips, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
