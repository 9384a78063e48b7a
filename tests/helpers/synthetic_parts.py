"""The synthetic good parts ``train_synthetic_model`` trains on, as files: the calibration folder of tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def synthetic_good_folder(folder: Path, n: int = 24, size: int = 64) -> Path:
    """The good parts ``train_synthetic_model`` trains on (same seeds), as PNG files."""
    from linewatch.ingest.synthetic import render_sample

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = render_sample(i, size=size, defect_probability=0.0).image
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.ascontiguousarray(image[:, :, ::-1]))
    return folder
