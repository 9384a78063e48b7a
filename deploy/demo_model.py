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
                 train_images: int = DEMO_TRAIN_IMAGES, device: str = "auto", retrain: bool = False) -> DemoModel:
    """Reuse the cached model for this data and these settings, or train it (``data`` None: synthetic).

    The settings are :class:`detector.train.TrainConfig`'s defaults (the benchmarked ones) with the
    demo's epoch budget and, optionally, another image size.
    """
    from linewatch.detector.checkpoint import load_checkpoint
    from linewatch.detector.train import TrainConfig, train

    base = TrainConfig()
    config = replace(base, epochs=epochs, image_size=image_size or base.image_size, device=device)
    n_synthetic = train_images or SYNTHETIC_TRAIN_IMAGES
    description, data_id = _fingerprint(data, n_synthetic if data is None else train_images, config.image_size)
    path = Path(cache_dir) / f"stfpm-{cache_key(config.to_dict(), data_id)}.safetensors"
    n_images = n_synthetic if data is None else len(data_id)
    if path.is_file() and not retrain:
        try:
            _, metadata = load_checkpoint(path)
            return _describe(path, True, description, n_images, config.to_dict(), 0.0, metadata)
        except Exception as exc:  # a damaged cache entry is retrained, not fatal
            log.warning("cached model %s is unusable (%s); training again", path, exc)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = _training_images(data, train_images, n_synthetic, config.image_size)
    print(f"training the demo model: {config.backbone} at {config.image_size} px, up to {epochs} epochs with early "
          f"stopping (demo budget; the default recipe is {base.epochs}) on {n_images} good images of {description}",
          flush=True)
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".partial.safetensors")
    result = train(config, images, tmp, progress=True)
    tmp.replace(path)
    _, metadata = load_checkpoint(path)
    return _describe(path, False, description, n_images, config.to_dict(), time.perf_counter() - started, metadata,
                     result.best_epoch)


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
