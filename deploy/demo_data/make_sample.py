"""Rebuild the demo's bundled real sample from BSData in ../shared/datasets/bsdata (one command).

    .venv/bin/python deploy/demo_data/make_sample.py

A seeded choice of good training images, good test images and pitting images with their masks,
downscaled by 3 (1130x460 -> 377x153), images as JPEG (quality 92), masks as PNG: a few MB that a
fresh clone can replay without ../shared. BSData is CC BY-SA 4.0, so the sample is too (LICENSE.md).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2] / "shared" / "datasets" / "bsdata" / "bsdata"
OUT = HERE / "bsdata_sample"
COUNTS = {("train", "good"): 100, ("test", "good"): 24, ("test", "pitting"): 36}
SCALE = 3
SEED = 7


def _read(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise SystemExit(f"cannot read {path}")
    return np.asarray(image)


def _shrink(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    height, width = image.shape[:2]
    size = (round(width / SCALE), round(height / SCALE))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA))


def main() -> None:
    """Write OUT in MVTec layout (train/good, test/<type>, ground_truth/<type>)."""
    if not SOURCE.is_dir():
        raise SystemExit(f"BSData is not at {SOURCE}")
    shutil.rmtree(OUT, ignore_errors=True)
    rng = random.Random(SEED)
    for (split, kind), count in COUNTS.items():
        files = sorted((SOURCE / split / kind).glob("*.jpg"))
        target = OUT / split / kind
        target.mkdir(parents=True)
        for path in sorted(rng.sample(files, count)):
            image = _read(path, cv2.IMREAD_COLOR)
            cv2.imwrite(str(target / path.name), _shrink(image), [cv2.IMWRITE_JPEG_QUALITY, 92])
            if kind != "good":
                mask_name = f"{path.stem}_mask.png"
                mask = _read(SOURCE / "ground_truth" / kind / mask_name, cv2.IMREAD_GRAYSCALE)
                (OUT / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(OUT / "ground_truth" / kind / mask_name), _shrink(mask, nearest=True))
    print(f"wrote {sum(COUNTS.values())} images to {OUT}")


if __name__ == "__main__":
    main()
