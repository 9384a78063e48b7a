"""Memory, time and exactness of the streamed pixel metrics.

583 anomaly maps of 256x256 (38 M pixels, the size of magnetic_tile's test split at model size)
with heavy-tailed scores and blob-shaped defect regions (some large, as ``uneven``) are accumulated
the way ``linewatch.detector.evaluation.evaluate`` does it: bin edges from a sample of the maps, then one map at a time.
Peak memory is measured with ``tracemalloc`` (numpy reports its buffers to it), apart from the maps
themselves. The binned pixel AUROC is compared with the exact, sort-based one on all pixels; the
binned AUPRO with the exact accumulator (every distinct score an edge) on a 1/10 subset.

    nice -n 10 .venv/bin/python benchmarks/metrics_pixels.py [--maps 583] [--size 256]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import cv2
import numpy as np

import common
from linewatch.detector.evaluation.metrics import auroc
from linewatch.detector.evaluation.pixel_metrics import PixelAccumulator, quantile_edges


def make_maps(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size) float32 maps and bool masks; about 2/3 of the maps have defects."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if i % 3:
            for _ in range(int(rng.integers(1, 4))):
                centre = tuple(int(c) for c in rng.integers(0, size, 2))
                radius = int(rng.integers(2, size // (3 if rng.random() < 0.2 else 12)))
                cv2.circle(mask, centre, radius, 1, -1)
        noise = rng.lognormal(0.0, 0.8, (size, size)).astype(np.float32)
        maps[i] = cv2.GaussianBlur(noise + 1.5 * mask * np.float32(rng.random()), (0, 0), 2.0)
        masks[i] = mask.astype(bool)
    return maps, masks


def binned(maps: np.ndarray, masks: np.ndarray, n_edges: int = 65536) -> tuple[PixelAccumulator, float, float]:
    """Accumulate as evaluate() does; returns (accumulator, seconds, peak MiB above the maps)."""
    tracemalloc.start()
    started = time.perf_counter()
    flat = maps.reshape(-1)
    acc = PixelAccumulator(quantile_edges(flat[::max(1, flat.size // 4_000_000)], n_edges))
    for m, k in zip(maps, masks, strict=True):
        acc.add(m, k)
    acc.auroc()
    acc.aupro()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return acc, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=583)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    maps, masks = make_maps(args.maps, args.size)
    common.print_header()
    print(f"numpy {np.__version__}")
    print(f"{args.maps} maps of {args.size}x{args.size} = {maps.size / 1e6:.1f} M pixels "
          f"({masks.sum() / masks.size:.1%} defective), maps hold {maps.nbytes / 2**20:.0f} MiB")

    acc, seconds, peak = binned(maps, masks)
    print(f"binned (65536 edges): pixel AUROC {acc.auroc():.6f}, AUPRO {acc.aupro():.6f}, "
          f"{seconds:.1f} s, peak {peak:.0f} MiB above the maps, {acc.regions} regions")
    print(f"  bounds: AUROC +-{acc.auroc_error_bound():.2e}, AUPRO +-{acc.aupro_error_bound():.2e}")

    tracemalloc.start()
    started = time.perf_counter()
    exact_auroc = auroc(maps.reshape(-1), masks.reshape(-1))
    exact_s = time.perf_counter() - started
    exact_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"exact sort-based AUROC {exact_auroc:.6f} ({exact_s:.1f} s, peak {exact_peak:.0f} MiB); "
          f"|binned - exact| = {abs(acc.auroc() - exact_auroc):.2e}")

    sub = slice(0, max(1, args.maps // 10))
    small, _, _ = binned(maps[sub], masks[sub])
    exact = PixelAccumulator(np.unique(maps[sub]))
    for m, k in zip(maps[sub], masks[sub], strict=True):
        exact.add(m, k)
    print(f"1/10 subset: AUPRO binned {small.aupro():.6f} vs exact {exact.aupro():.6f}, "
          f"|diff| = {abs(small.aupro() - exact.aupro()):.2e} (bound {small.aupro_error_bound():.2e}); "
          f"AUROC |diff| = {abs(small.auroc() - exact.auroc()):.2e}")


if __name__ == "__main__":
    main()
