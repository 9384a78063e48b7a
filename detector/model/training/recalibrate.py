"""``linewatch calibrate``: new thresholds for a trained model from any folder of good frames.

About 150 held-out good images make a noisy 1% quantile (the bootstrap interval in the checkpoint
shows how noisy). A line's own first hour of good frames is a better sample: this scores them with the
model's one inference path and writes a copy of the checkpoint with the new calibration, or prints the
threshold as a per-camera override for the detector (``LINEWATCH_CAMERA_THRESHOLDS``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from linewatch.common.images import list_train_good, load_rgb
from linewatch.detector.model.calibrate import Calibration, calibrate
from linewatch.detector.model.checkpoint import load_checkpoint, rewritable_metadata, save_checkpoint
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.tiling import concat_maps
from linewatch.errors import InvalidDataError

MIN_GOOD_IMAGES = 20


def score_good_folder(model: AnomalyModel, folder: Path, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and model-size maps (N, S, S) of every image in ``folder`` (or its train/good)."""
    records = list_train_good(folder)
    if len(records) < MIN_GOOD_IMAGES:
        raise InvalidDataError(f"{folder} holds {len(records)} good images; calibration needs at least "
                               f"{MIN_GOOD_IMAGES}")
    scores, maps = [], []
    for start in range(0, len(records), batch_size):
        prediction = model.predict([load_rgb(r.path) for r in records[start:start + batch_size]])
        scores.append(prediction.image_scores)
        maps.append(prediction.maps)
    return np.concatenate(scores), concat_maps(maps)


def recalibrate(model_path: Path, good_folder: Path, target_false_alarm_rate: float | None = None,
                device: str = "auto") -> Calibration:
    """The calibration ``good_folder`` gives the model at ``model_path`` (rates default to the model's own)."""
    model = AnomalyModel.load(model_path, device)
    old = model.calibration
    scores, maps = score_good_folder(model, good_folder)
    rate = old.target_false_alarm_rate if target_false_alarm_rate is None else target_false_alarm_rate
    return calibrate(scores, maps, rate, old.pixel_false_positive_rate)


def write_recalibrated(model_path: Path, calibration: Calibration, out: Path, source: Path) -> Path:
    """Copy of the checkpoint with ``calibration``; the metadata records where it came from."""
    state, metadata = load_checkpoint(model_path)
    body = rewritable_metadata(metadata)
    body["calibration"] = replace(calibration).to_dict()
    body["training"] = {**dict(body.get("training") or {}),
                        "recalibrated_from": {"folder": str(Path(source).resolve()),
                                              "n_good": int(calibration.score_stats.get("n", 0))}}
    save_checkpoint(out, state, body)
    return out
