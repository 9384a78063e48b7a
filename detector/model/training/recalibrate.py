"""``linewatch calibrate``: new thresholds for a trained model from any folder of good frames.

About 150 held-out good images make a noisy 1% quantile (the bootstrap interval in the checkpoint
shows how noisy). A line's own first hour of good frames is a better sample: this scores them with the
model's one inference path and writes a copy of the checkpoint with the new calibration, or prints the
threshold as a per-camera override for the detector (``LINEWATCH_CAMERA_THRESHOLDS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.common.images import list_train_good, load_rgb
from linewatch.detector.model.backends import load_to_calibrate
from linewatch.detector.model.calibrate import Calibration, calibrate
from linewatch.detector.model.checkpoint import load_checkpoint, rewritable_metadata, save_checkpoint
from linewatch.detector.model.inference import AnomalyModel, InferenceModel
from linewatch.detector.model.tiling import concat_maps
from linewatch.errors import InvalidDataError

MIN_GOOD_IMAGES = 20


def score_images(model: InferenceModel, images: Sequence[np.ndarray],
                 batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and maps (model-size, or stitched parts) of ``images`` through ``model``'s one path."""
    scores, maps = [], []
    for start in range(0, len(images), batch_size):
        prediction = model.predict(list(images[start:start + batch_size]))
        scores.append(prediction.image_scores)
        maps.append(prediction.maps)
    return np.concatenate(scores), concat_maps(maps)


def good_folder_images(folder: Path) -> list[np.ndarray]:
    """Every good image in ``folder`` (or its train/good); refused when too few make a threshold."""
    records = list_train_good(folder)
    if len(records) < MIN_GOOD_IMAGES:
        raise InvalidDataError(f"{folder} holds {len(records)} good images; calibration needs at least "
                               f"{MIN_GOOD_IMAGES}")
    return [load_rgb(r.path) for r in records]


def calibrate_model(model: InferenceModel, images: Sequence[np.ndarray], base: Calibration,
                    target_false_alarm_rate: float | None = None) -> Calibration:
    """The calibration good ``images`` give ``model``, with ``base``'s rates unless a rate is given."""
    scores, maps = score_images(model, images)
    rate = base.target_false_alarm_rate if target_false_alarm_rate is None else target_false_alarm_rate
    return calibrate(scores, maps, rate, base.pixel_false_positive_rate)


def recalibrate(model_path: Path, good_folder: Path, target_false_alarm_rate: float | None = None,
                device: str = "auto", precision: str = "fp32") -> Calibration:
    """The calibration ``good_folder`` gives the model at ``model_path`` run at ``precision`` (fp32 on torch,
    others on OpenVINO); rates default to the model's own."""
    model: InferenceModel = (AnomalyModel.load(model_path, device) if precision == "fp32"
                             else load_to_calibrate(model_path, precision))
    return calibrate_model(model, good_folder_images(good_folder), model.metadata.calibration,
                           target_false_alarm_rate)


def write_recalibrated(model_path: Path, calibration: Calibration, out: Path, source: Path,
                       precision: str = "fp32") -> Path:
    """Copy of the checkpoint with ``calibration`` (the ``precision`` one); the metadata records its source."""
    state, metadata = load_checkpoint(model_path)
    body = with_calibration(rewritable_metadata(metadata), calibration, precision)
    body["training"] = {**dict(body.get("training") or {}),
                        "recalibrated_from": {"folder": str(Path(source).resolve()),
                                              "n_good": int(calibration.score_stats.get("n", 0))}}
    save_checkpoint(out, state, body)
    return out


def with_calibration(body: dict[str, Any], calibration: Calibration, precision: str) -> dict[str, Any]:
    """Checkpoint metadata ``body`` with ``calibration`` as its fp32 one or as its ``precision`` one."""
    if precision == "fp32":
        return {**body, "calibration": calibration.to_dict()}
    return {**body, "precision_calibrations": {**dict(body.get("precision_calibrations") or {}),
                                               precision: calibration.to_dict()}}
