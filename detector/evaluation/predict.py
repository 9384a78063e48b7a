"""``linewatch predict``: score image files, write heatmap overlays and one JSON line per image."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from linewatch.common.images import IMAGE_SUFFIXES, DataError, load_rgb
from linewatch.detector.model.inference import InferenceModel


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in named folders, in order."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(f"{item} is neither an image file nor a folder")
    if not paths:
        raise DataError(f"no images found in {', '.join(map(str, inputs))}")
    return paths


def overlay(image: np.ndarray, anomaly_map: np.ndarray, threshold: float, pixel_threshold: float) -> np.ndarray:
    """RGB overlay: JET heatmap (0 at zero, red at twice the image threshold), contours at the pixel threshold."""
    scaled = np.clip(anomaly_map / max(2 * threshold, 1e-12), 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(image, 0.55, heat, 0.45, 0)
    contours, _ = cv2.findContours((anomaly_map >= pixel_threshold).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, min(image.shape[:2]) // 200))
    return out


def region(anomaly_map: np.ndarray, pixel_threshold: float) -> dict[str, Any]:
    """Defect region of a map in image pixels: area fraction, bbox (x0, y0, x1, y1 exclusive), peak."""
    flagged = anomaly_map >= pixel_threshold
    peak = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
    ys, xs = np.nonzero(flagged)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if xs.size else None
    return {"area_fraction": float(flagged.mean()), "bbox": bbox, "peak_xy": [int(peak[1]), int(peak[0])],
            "peak_value": float(anomaly_map[peak])}


def _batches(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def predict_files(model: InferenceModel, inputs: Sequence[Path], out_dir: Path, stream: TextIO | None = None,
                  batch_size: int = 16) -> list[dict[str, Any]]:
    """Score every image; write ``<stem>_overlay.png`` and ``predictions.jsonl`` into ``out_dir``.

    An unreadable image gets a line with an ``error`` key instead of stopping the run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[dict[str, Any]] = []
    with (out_dir / "predictions.jsonl").open("w") as sink:
        for chunk in _batches(collect_images(inputs), batch_size):
            images: list[np.ndarray] = []
            good_paths: list[Path] = []
            for path in chunk:
                try:
                    images.append(load_rgb(path))
                    good_paths.append(path)
                except DataError as exc:
                    lines.append({"image": str(path), "error": str(exc)})
            pred = model.predict(images) if images else None
            for i, path in enumerate(good_paths):
                assert pred is not None
                full = model.map_to_image(pred.maps[i], images[i].shape[:2])
                target = out_dir / f"{path.stem}_overlay.png"
                picture = overlay(images[i], full, model.image_threshold, model.pixel_threshold)
                cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                lines.append({"image": str(path), "image_score": float(pred.image_scores[i]),
                              "normalised_score": float(pred.normalised_scores[i]),
                              "anomalous": bool(pred.anomalous[i]), "threshold": model.image_threshold,
                              "model_version": model.model_version, "overlay": str(target),
                              "region": region(full, model.pixel_threshold)})
            for line in lines[len(lines) - len(chunk):]:
                text = json.dumps(line)
                sink.write(text + "\n")
                if stream is not None:
                    stream.write(text + "\n")
    return lines
