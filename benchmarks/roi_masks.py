"""Cost of region masks in ``predict``: the same 8-frame batch with and without per-frame masks.

torch skips the multiply when no mask is given; the ONNX Runtime graph always takes a masks input (all
ones without regions). Interleaved rounds, medians; one thread. Usage: ``python benchmarks/roi_masks.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import common

ROUNDS = 40


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    common.print_header()
    work = Path(tempfile.mkdtemp(prefix="roi-bench-"))
    os.environ["LINEWATCH_CACHE_DIR"] = str(work / "cache")
    from linewatch.detector.model.backends import load_model
    from linewatch.detector.model.roi import RoiConfig, cell_mask
    from linewatch.detector.model.training.train import train_synthetic_model
    from linewatch.ingest.synthetic import render_sample

    path = train_synthetic_model(work / "tiny.safetensors", epochs=1, image_size=64)
    frames = np.stack([render_sample(100 + i, size=256).image for i in range(8)])
    print("| model | backend | no regions (ms / batch of 8) | masked (ms) | change |\n|---|---|---|---|---|")
    for backend in ("torch", "onnxruntime"):
        model = load_model(path, backend, "cpu", threads=1)
        mask = cell_mask(RoiConfig(exclude=[[(0, 0), (0.3, 0), (0.3, 0.3), (0, 0.3)]]), (256, 256), model.image_size)
        masks = np.repeat(mask[None], len(frames), 0)
        runs: dict[str, list[float]] = {"none": [], "masked": []}
        for _ in range(ROUNDS):
            for name, cells in (("none", None), ("masked", masks)):
                start = time.perf_counter()
                model.predict(frames, masks=cells)
                runs[name].append(time.perf_counter() - start)
        none, masked = (statistics.median(runs[k]) * 1000 for k in ("none", "masked"))
        print(f"| tiny 64 px | {backend} | {none:.1f} | {masked:.1f} | {masked / none - 1:+.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
