"""Student forward+backward speed of efficientnet_lite0 (batch 16): fp32 vs bf16 autocast, NCHW vs channels_last.

    .venv/bin/python benchmarks/cpu_threads.py            # results: benchmarks/results/cpu_threads.md
"""

from __future__ import annotations

import time

import torch

from linewatch.detector.model.stfpm.efficientnet_lite import EfficientNetLiteFeatures


def main() -> None:
    """Print images/s per (taps, size, precision, layout) on 2 threads."""
    torch.set_num_threads(2)
    for taps in ((2, 4, 10), (10, 14)):
        for size in (128, 256):
            for bf16 in (True, False):
                for channels_last in (True, False):
                    net = EfficientNetLiteFeatures(taps)
                    x = torch.randn(16, 3, size, size)
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
                    rate = 32 / (time.perf_counter() - start)
                    print(taps, size, "bf16" if bf16 else "fp32", "cl" if channels_last else "nchw",
                          f"{rate:.1f} img/s", flush=True)


if __name__ == "__main__":
    main()
