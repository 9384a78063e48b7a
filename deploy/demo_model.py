"""The demo's model: trained once with a demo-sized budget, then reused from a cache keyed by data and settings."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The demo trains the default architecture (TrainConfig) on a spread-out subset of the good images with
# early stopping, so `make demo` fits 10 minutes on a 2-core CPU including the install
# (benchmarks/results/demo_training_budget.md); `--train-images 0 --epochs N` trains the full recipe.
DEMO_EPOCHS = 12
DEMO_TRAIN_IMAGES = 150
SYNTHETIC_TRAIN_IMAGES = 96
# The demo's cameras send every frame resized to a square and JPEG-encoded; a threshold set on the training
# images as read from disk sat above every frame of the magnetic-tile line (0 alerts, 0 false alarms with the
# coarse recipe). The model is calibrated again on good images the training did not use, sent through the same
# resize and JPEG encoding, as `linewatch calibrate` would on a plant's own camera frames.
CALIBRATION_IMAGES = 120


@dataclass
class DemoModel:
    """Where the model is and how it came about (for the summary)."""

    path: Path
    cached: bool
    data: str
    train_images: int
    config: dict[str, Any]
    seconds: float
    best_epoch: int | None = None
    image_threshold: float | None = None


def _fingerprint(data: Path | None, train_images: int, image_size: int) -> tuple[str, list[Any]]:
    """A description of the training images and a hashable list naming them (name and size)."""
    if data is None:
        return f"synthetic parts ({train_images} good, {image_size} px)", ["synthetic", train_images, image_size]
    from linewatch.common.images import list_train_good

    records = spread(list_train_good(data), train_images)
    return str(data), [[r.path.name, r.path.stat().st_size] for r in records]


def spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items evenly spaced over ``items`` (all of them when count is 0 or not smaller)."""
    if not count or count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def cache_key(config: dict[str, Any], data_id: list[Any]) -> str:
    """sha256 of the settings (without the device) and the data listing."""
    settings = {k: v for k, v in config.items() if k != "device"}
    blob = json.dumps({"config": settings, "data": data_id}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def ensure_model(data: Path | None, cache_dir: Path, *, epochs: int = DEMO_EPOCHS, image_size: int | None = None,
                 train_images: int = DEMO_TRAIN_IMAGES, device: str = "auto", retrain: bool = False,
                 recipe: str = "fine", camera_frames: tuple[int, int] | None = None) -> DemoModel:
    """Reuse the cached model for this data and these settings, or train it (``data`` None: synthetic).

    The settings are the ``recipe``'s (detector/model/training/recipes.py:
    :class:`linewatch.detector.model.training.train.TrainConfig`'s defaults
    plus its geometry) with the demo's epoch budget and, optionally, another image size. With ``camera_frames``
    ((width, height) of the cameras' frames) and a real data set, the thresholds come from good images the
    training did not use, as the cameras send them (see ``CALIBRATION_IMAGES``).
    """
    from linewatch.detector.model.checkpoint import load_checkpoint
    from linewatch.detector.model.training.recipes import RECIPES
    from linewatch.detector.model.training.train import TrainConfig, train

    base = RECIPES[recipe].config(TrainConfig())
    config = replace(base, epochs=epochs, image_size=image_size or base.image_size, device=device)
    n_synthetic = train_images or SYNTHETIC_TRAIN_IMAGES
    description, data_id = _fingerprint(data, n_synthetic if data is None else train_images, config.image_size)
    calibrated_on = camera_frames if data is not None else None
    path = Path(cache_dir) / f"stfpm-{cache_key(config.to_dict(), [*data_id, ['camera', calibrated_on]])}.safetensors"
    n_images = n_synthetic if data is None else len(data_id)
    if path.is_file() and not retrain:
        try:
            _, metadata = load_checkpoint(path)
            return _describe(path, True, description, n_images, config.to_dict(), 0.0, metadata)
        except Exception as exc:  # a damaged cache entry is retrained, not fatal
            log.warning("cached model %s is unusable (%s); training again", path, exc)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _training_images(data, train_images, n_synthetic, config.image_size)
    print(f"training the demo model: recipe {recipe}, {config.backbone} at {config.image_size} px, up to {epochs} "
          f"epochs with early "
          f"stopping (demo budget; the default recipe is {base.epochs}) on {n_images} good images of {description}",
          flush=True)
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".partial.safetensors")
    result = train(config, images, tmp, progress=True)
    if data is not None and calibrated_on is not None:
        _calibrate_on_camera_frames(tmp, data, images, calibrated_on, cache_dir)
    tmp.replace(path)
    _, metadata = load_checkpoint(path)
    return _describe(path, False, description, n_images, config.to_dict(), time.perf_counter() - started, metadata,
                     result.best_epoch)


def _calibrate_on_camera_frames(model: Path, data: Path, used: list[Any], size: tuple[int, int],
                                cache_dir: Path) -> None:
    """Replace ``model``'s calibration by one from unused good images resized and JPEG-encoded as the cameras do."""
    import tempfile

    import cv2

    from linewatch.common.images import list_train_good, load_rgb
    from linewatch.detector.model.training.recalibrate import recalibrate, write_recalibrated
    from linewatch.ingest.wire import encode_image

    taken = {r.path for r in used}
    unused = spread([r for r in list_train_good(data) if r.path not in taken], CALIBRATION_IMAGES)
    if len(unused) < 20:  # too few to set a 1% threshold better than training's own held-out images
        return
    with tempfile.TemporaryDirectory(dir=cache_dir) as folder:
        for record in unused:
            frame = cv2.resize(load_rgb(record.path), size, interpolation=cv2.INTER_AREA)  # as ingest/camera.py
            (Path(folder) / f"{record.path.stem}.jpg").write_bytes(encode_image(frame))  # the bytes a camera sends
        calibration = recalibrate(model, Path(folder), device="cpu")
        write_recalibrated(model, calibration, model, Path(folder))
    print(f"calibrated on {len(unused)} good images the training did not use, sent as the cameras send them "
          f"({size[0]}x{size[1]} JPEG): image threshold {calibration.image_threshold:.5f}", flush=True)


def _training_images(data: Path | None, train_images: int, n_synthetic: int, size: int) -> list[Any]:
    if data is not None:
        from linewatch.common.images import list_train_good

        return spread(list_train_good(data), train_images)
    from linewatch.ingest.synthetic import render_sample

    return [render_sample(i, size=size, defect_probability=0.0).image for i in range(n_synthetic)]


def _describe(path: Path, cached: bool, data: str, n_images: int, config: dict[str, Any], seconds: float,
              metadata: dict[str, Any], best_epoch: int | None = None) -> DemoModel:
    training = metadata.get("training") or {}
    calibration = metadata.get("calibration") or {}
    threshold = calibration.get("image_threshold")
    return DemoModel(path=path, cached=cached, data=data, train_images=n_images, config=config,
                     seconds=round(seconds, 1),
                     best_epoch=best_epoch if best_epoch is not None else training.get("best_epoch"),
                     image_threshold=float(threshold) if threshold is not None else None)
