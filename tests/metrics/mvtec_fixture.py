"""A tiny MVTec-layout folder rendered from ingest.synthetic (good + defects with masks)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from linewatch.ingest.synthetic import DEFECT_TYPES, render_sample


def write_tiny_mvtec(root: Path, *, size: int = 64, n_good: int = 4, per_type: int = 2,
                     empty_mask: bool = True, crop: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Write ``root/{train,test,ground_truth}``; returns each test image's mask keyed by its RGB bytes.

    ``crop=(h, w)`` cuts every image and mask to a non-square top-left window (to catch H/W mix-ups).
    With ``empty_mask`` one extra ``crack`` image gets an all-zero mask (as 4 magnetic_tile ``uneven`` do).
    """
    masks: dict[str, np.ndarray] = {}

    def save(folder: Path, name: str, image: np.ndarray, mask: np.ndarray | None) -> None:
        if crop is not None:
            image = image[:crop[0], :crop[1]]
            mask = None if mask is None else mask[:crop[0], :crop[1]]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        truth = np.zeros(image.shape[:2], np.uint8) if mask is None else mask
        masks[np.ascontiguousarray(image).tobytes().hex()[:4096]] = truth > 127
        if mask is not None:
            gt = root / "ground_truth" / folder.name
            gt.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(gt / f"{name}_mask.png"), mask)

    for i in range(3):
        s = render_sample(900 + i, size=size, defect_probability=0.0)
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), s.image)
    for i in range(n_good):
        save(root / "test" / "good", f"{i:03d}", render_sample(1000 + i, size=size, defect_probability=0.0).image,
             None)
    for t, kind in enumerate(DEFECT_TYPES):
        for i in range(per_type):
            s = render_sample(2000 + 100 * t + i, size=size, defect_type=kind)
            save(root / "test" / kind, f"{i:03d}", s.image, s.mask)
    if empty_mask:
        s = render_sample(3000, size=size, defect_probability=0.0)
        save(root / "test" / "crack", "099", s.image, np.zeros(s.mask.shape, np.uint8))
    return masks


def mask_key(image: np.ndarray) -> str:
    """Key of ``write_tiny_mvtec``'s mask table for an image as read back (RGB)."""
    return np.ascontiguousarray(image).tobytes().hex()[:4096]
