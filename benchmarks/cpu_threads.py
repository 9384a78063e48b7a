"""Student forward+backward speed of efficientnet_lite0: fp32 vs bf16 autocast, NCHW vs channels_last.

The grid (taps, sizes, precisions, layouts, threads, batch) is benchmarks/sweeps/cpu_threads.toml.

    .venv/bin/python benchmarks/cpu_threads.py            # results: benchmarks/results/cpu_threads.md
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

import common
from linewatch.detector.model.stfpm.efficientnet_lite import EfficientNetLiteFeatures


def main() -> None:
    """Print images/s per (taps, size, precision, layout)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    grid = common.load_sweep("cpu_threads")
    torch.set_num_threads(grid["threads"])
    common.print_header()
    batch = grid["batch"]
    for taps, size, bf16, channels_last in itertools.product(
            [tuple(t) for t in grid["taps"]], grid["sizes"], grid["bf16"], grid["channels_last"]):
        net = EfficientNetLiteFeatures(taps)
        x = torch.randn(batch, 3, size, size)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)

        def step(net: torch.nn.Module = net, x: torch.Tensor = x, bf16: bool = bf16) -> None:
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = net(x)
            sum(o.float().pow(2).mean() for o in out).backward()

        step()
        start = time.perf_counter()
        step()
        step()
        rate = 2 * batch / (time.perf_counter() - start)
        print(taps, size, "bf16" if bf16 else "fp32", "cl" if channels_last else "nchw",
              f"{rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
