"""Image folders: MVTec AD layout and plain folders of good images.

MVTec layout::

    root/train/good/*.png
    root/test/<type>/*.png            (type ``good`` or a defect type)
    root/ground_truth/<type>/<name>_mask.png

A plain folder of images counts as ``train/good``. Grayscale images become 3-channel RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linewatch import errors

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(errors.DataError, ValueError):
    """The data folder is not what the command expects; the message says why."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its truth."""

    path: Path
    label: str  # "good" | "defect"
    defect_type: str  # "good" or the defect folder name
    mask_path: Path | None = None


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def list_train_good(root: Path) -> list[ImageRecord]:
    """Good training images: ``root/train/good`` in MVTec layout, else the images in ``root``."""
    root = Path(root)
    folder = root / "train" / "good"
    if not folder.is_dir():
        folder = root
    if not folder.is_dir():
        raise DataError(f"{root} is not a folder")
    paths = _images(folder)
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [ImageRecord(path=p, label="good", defect_type="good") for p in paths]


def list_test(root: Path) -> list[ImageRecord]:
    """Test images of an MVTec-layout folder, with their mask paths (None for good ones)."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        raise DataError(f"{root} has no test/ folder (MVTec layout expected: test/<type>/, ground_truth/<type>/)")
    records: list[ImageRecord] = []
    for type_dir in sorted(d for d in test_dir.iterdir() if d.is_dir()):
        kind = type_dir.name
        for path in _images(type_dir):
            if kind == "good":
                records.append(ImageRecord(path=path, label="good", defect_type="good"))
                continue
            mask = root / "ground_truth" / kind / f"{path.stem}_mask.png"
            records.append(ImageRecord(path=path, label="defect", defect_type=kind,
                                       mask_path=mask if mask.is_file() else None))
    if not records:
        raise DataError(f"no test images under {test_dir}")
    return records


def load_rgb(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_mask(record: ImageRecord, shape: tuple[int, int]) -> np.ndarray:
    """Boolean defect mask of ``shape`` (H, W); all False for good images or missing masks."""
    if record.mask_path is None:
        return np.zeros(shape, dtype=bool)
    mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"cannot read mask {record.mask_path}")
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127
