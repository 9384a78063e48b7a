"""Thresholds at the precisions this CPU runs natively beyond fp32, so ``--backend auto`` may run them.

A bf16 run scores every frame slightly differently from fp32; judged by fp32 thresholds, its false-alarm rate
would drift from the one the model was calibrated for. So the held-out good images that calibrated the model
are scored again by the OpenVINO bf16 graph and calibrated the same way (detector/model/calibrate.py), and the
checkpoint keeps both (``precision_calibrations``). ``--backend auto`` considers bf16 only for a model that
has them (detector/model/backends/loader.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linewatch.common.images import ImageRecord, load_rgb
from linewatch.detector.model.backends import BackendError, load_to_calibrate
from linewatch.detector.model.backends.runners import openvino_capabilities
from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.checkpoint import load_checkpoint, rewritable_metadata, save_checkpoint
from linewatch.detector.model.metadata import ModelMetadata
from linewatch.detector.model.training.recalibrate import calibrate_model, with_calibration
from linewatch.detector.model.training.train import TrainConfig, held_out_indices

log = logging.getLogger(__name__)


def native_precisions() -> tuple[str, ...]:
    """Precisions beyond fp32 this CPU runs natively (OpenVINO's BF16 capability: AVX-512 BF16 or AMX)."""
    try:
        return ("bf16",) if "BF16" in openvino_capabilities() else ()
    except ImportError:  # no openvino: nothing runs beyond fp32
        return ()


def calibrate_at(model_path: Path, precision: str, images: Sequence[np.ndarray]) -> Calibration:
    """The calibration good ``images`` give the model run at ``precision`` on OpenVINO, at the model's rates."""
    model = load_to_calibrate(model_path, precision)
    fp32 = ModelMetadata.from_dict(load_checkpoint(model_path)[1]).calibration
    return calibrate_model(model, images, fp32)


def held_out_images(records: Sequence[ImageRecord], config: TrainConfig) -> list[np.ndarray]:
    """The good images a run with ``config`` held out (and calibrated on), in the run's order."""
    return [load_rgb(records[i].path) for i in held_out_indices(len(records), config)]


def add_native_calibrations(model_path: Path, records: Sequence[ImageRecord], config: TrainConfig) -> list[str]:
    """Calibrate the trained model at every native precision of this CPU, on its own held-out good images;
    returns the precisions added (none where the CPU has no native bf16 or the graph cannot run there)."""
    added: list[str] = []
    for precision in native_precisions():
        try:
            calibration = calibrate_at(model_path, precision, held_out_images(records, config))
        except BackendError as exc:  # the model still runs at fp32: say why bf16 is not offered
            log.warning("no %s calibration for %s: %s", precision, model_path, exc)
            continue
        state, metadata = load_checkpoint(model_path)
        save_checkpoint(model_path, state, with_calibration(rewritable_metadata(metadata), calibration, precision))
        added.append(precision)
    return added
