"""Evaluate a model on the test split of an MVTec-layout folder: ``metrics.json`` + ``report.html``.

Resolution: as in the MVTec AD evaluation, pixel metrics are computed at each test image's own
resolution. The model's (S, S) map is mapped back to the image by the model's own ``map_to_image``
when it has one, else by :func:`map_to_image` here (for ``letterbox`` models the padded border is
cropped first), resized bilinearly to (H, W); masks are read at (H, W) unchanged.
Pixel scores are streamed into binned histograms (:mod:`detector.pixel_metrics`), so memory is the
(N, S, S) model-size maps plus one image, never all test pixels; the worst-case binning error of
pixel AUROC and AUPRO is computed and stored beside them.

Image verdicts use the model's own rule (``Prediction.anomalous``: score >= calibrated threshold).

``roi``: one camera's regions (``linewatch evaluate --roi FILE``) applied to every test image through
the model's own head, as the detector applies them, so the metrics show what an ignore mask costs or
gains: masked cells score 0 in the image score and in the pixel maps.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from linewatch.common.images import ImageRecord, list_test, load_mask, load_rgb
from linewatch.detector.evaluation.metrics import (
    auroc,
    best_f1,
    f1_score,
    recall_at_false_alarm_rate,
    roc_curve,
)
from linewatch.detector.evaluation.pixel_metrics import (
    DEFAULT_BINS,
    PixelAccumulator,
    quantile_edges,
)
from linewatch.detector.evaluation.report import write_report
from linewatch.detector.evaluation.results import Evaluation
from linewatch.detector.model.roi import CameraMasks, RoiConfig
from linewatch.detector.model.tiling import concat_maps
from linewatch.errors import InvalidValueError

if TYPE_CHECKING:
    from linewatch.detector.model.inference import InferenceModel

log = logging.getLogger(__name__)

OPERATING_POINTS = (0.01, 0.001)  # image false-alarm rates plants run at
EDGE_SAMPLE = 4_000_000  # model-size map values used to place the histogram bin edges


def _predict_all(model: InferenceModel, records: list[ImageRecord], batch_size: int,
                 roi: RoiConfig | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    scores, flagged, maps, shapes = [], [], [], []
    regions = CameraMasks({"evaluate": roi} if roi is not None else {})  # one mask per image size
    for start in range(0, len(records), batch_size):
        images = [load_rgb(r.path) for r in records[start:start + batch_size]]
        masks = regions.batch([("evaluate", (i.shape[0], i.shape[1])) for i in images], model.image_size,
                              model.metadata.resize_mode)
        prediction = model.predict(images) if masks is None else model.predict(images, masks=masks)
        scores.append(np.asarray(prediction.image_scores, np.float64))
        flagged.append(np.asarray(prediction.anomalous, bool))
        maps.append(np.asarray(prediction.maps, np.float32))
        shapes += [(int(i.shape[0]), int(i.shape[1])) for i in images]
        log.info("evaluate: %d/%d images", min(start + batch_size, len(records)), len(records))
    return np.concatenate(scores), np.concatenate(flagged), concat_maps(maps), shapes


def _thin(x: np.ndarray, y: np.ndarray, points: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """About ``points`` curve points for drawing, spread evenly along the curve's length (ends kept)."""
    if x.size <= points:
        return x, y
    steps = np.abs(np.diff(x)) + np.abs(np.diff(np.nan_to_num(y)))
    length = np.r_[0.0, np.cumsum(steps)]
    keep = np.unique(np.r_[np.searchsorted(length, np.linspace(0, length[-1], points)), x.size - 1])
    return x[np.minimum(keep, x.size - 1)], y[np.minimum(keep, x.size - 1)]


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def evaluate(model: InferenceModel, data_dir: str | Path, out_dir: str | Path, batch_size: int = 16, *,
             n_bins: int = DEFAULT_BINS, report: bool = True, roi: RoiConfig | None = None) -> dict[str, Any]:
    """Run ``model`` on ``data_dir/test``; write ``metrics.json`` (and ``report.html``) to ``out_dir``.

    Returns:
        The metrics dict written to ``metrics.json`` (undefined metrics are ``None``).
    """
    return run_evaluation(model, data_dir, out_dir, batch_size, n_bins=n_bins, report=report, roi=roi).metrics


def run_evaluation(model: InferenceModel, data_dir: str | Path, out_dir: str | Path, batch_size: int = 16, *,
                   n_bins: int = DEFAULT_BINS, report: bool = True, roi: RoiConfig | None = None) -> Evaluation:
    """As :func:`evaluate`, returning the full :class:`Evaluation` (curves, scores, maps)."""
    if batch_size < 1:
        raise InvalidValueError("batch_size must be at least 1")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    records = list_test(data_dir)
    started = time.perf_counter()
    scores, flagged, maps, shapes = _predict_all(model, records, batch_size, roi)
    inference_s = time.perf_counter() - started
    pixels = _pixel_groups(model, records, maps, shapes, n_bins)
    pixel_s = time.perf_counter() - started - inference_s
    labels = np.array([r.label == "defect" for r in records])
    metrics = {**_image_metrics(model, scores, flagged, labels), **_pixel_metrics(model, pixels),
               "per_type": _per_type(records, scores, labels, pixels.groups),
               "counts": pixels.counts(records, labels),
               # which recipe trained the model, and what `--recipe auto` measured to choose it (None: older models)
               "recipe": model.metadata.training.get("recipe"),
               "selection": model.metadata.training.get("selection"),
               "settings": {"data_dir": str(data_dir.resolve()), "resolution": "image (map resized to each test image)",
                            "resize_mode": model.metadata.resize_mode, "aupro_fpr_limit": 0.3,
                            "batch_size": batch_size, "image_rule": "anomalous if score >= image_threshold",
                            "roi": roi.model_dump(mode="json") if roi is not None else None,
                            "model": model.metadata.to_dict()},
               "timing_s": {"inference": round(inference_s, 3), "pixel_metrics": round(pixel_s, 3)}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    result = _evaluation(model, metrics, records, scores, labels, maps, shapes, pixels.pooled)
    if report:
        write_report(result, out_dir / "report.html")
    return result


@dataclass
class _Pixels:
    """Pixel histograms per defect type (``good`` included) and pooled, plus mask bookkeeping."""

    groups: dict[str, PixelAccumulator]
    pooled: PixelAccumulator
    empty_masks: int
    missing_masks: int

    def counts(self, records: list[ImageRecord], labels: np.ndarray) -> dict[str, int]:
        return {"images": len(records), "good": int((~labels).sum()), "defective": int(labels.sum()),
                "defective_empty_mask": self.empty_masks, "defective_missing_mask": self.missing_masks,
                "pixels_good": self.pooled.n_good, "pixels_defective": self.pooled.n_defect,
                "regions": self.pooled.regions}


def _pixel_groups(model: InferenceModel, records: list[ImageRecord], maps: np.ndarray,
                  shapes: list[tuple[int, int]], n_bins: int) -> _Pixels:
    """Every map in its image's pixels against its mask, accumulated per defect type and pooled."""
    flat = maps.reshape(-1)
    edges = quantile_edges(flat[::max(1, flat.size // EDGE_SAMPLE)], n_bins, extra=[model.pixel_threshold])
    groups: dict[str, PixelAccumulator] = {}
    empty_masks, missing_masks = 0, 0
    for i, record in enumerate(records):
        mask = load_mask(record, shapes[i])
        if record.label == "defect":
            missing_masks += record.mask_path is None
            empty_masks += record.mask_path is not None and not mask.any()
        groups.setdefault(record.defect_type, PixelAccumulator(edges)).add(
            np.asarray(model.map_to_image(maps[i], shapes[i]), np.float32), mask)
    if missing_masks:
        log.warning("evaluate: %d defective images have no mask file; their pixels count as defect-free",
                    missing_masks)
    pooled = PixelAccumulator(edges)
    for acc in groups.values():
        pooled += acc
    return _Pixels(groups, pooled, int(empty_masks), int(missing_masks))


def _image_metrics(model: InferenceModel, scores: np.ndarray, flagged: np.ndarray,
                   labels: np.ndarray) -> dict[str, Any]:
    """Image AUROC, F1 at the calibrated and the F1-optimal thresholds, and the plant's operating points."""
    f1_opt, f1_threshold = best_f1(scores, labels)
    cal = model.metadata.calibration
    return {
        "image_auroc": _finite(auroc(scores, labels)),
        "image_f1": f1_score(flagged, labels),
        "image_threshold": float(model.image_threshold),
        "image_f1_optimal": f1_opt,
        "image_f1_optimal_threshold": _finite(f1_threshold) if math.isfinite(f1_threshold) else None,
        "image_recall_at_fpr": {f"{rate:g}": _finite(recall_at_false_alarm_rate(scores, labels, rate))
                                for rate in OPERATING_POINTS},
        "calibrated_false_alarm_rate": _finite(float(flagged[~labels].mean())) if (~labels).any() else None,
        "calibration": {"target_false_alarm_rate": cal.target_false_alarm_rate,
                        "threshold_interval_90": list(cal.threshold_interval) if cal.threshold_interval else None,
                        "n_good": cal.score_stats.get("n")},
        "model_version": str(model.model_version),
        "map_cells": list(getattr(model, "map_cells", model.metadata.map_cells)),
    }


def _pixel_metrics(model: InferenceModel, pixels: _Pixels) -> dict[str, Any]:
    return {"pixel_auroc": _finite(pixels.pooled.auroc()), "aupro": _finite(pixels.pooled.aupro()),
            "pixel_f1": pixels.pooled.f1_at(float(model.pixel_threshold)),
            "pixel_threshold": float(model.pixel_threshold),
            "exactness": {"pixel_auroc_max_binning_error": pixels.pooled.auroc_error_bound(),
                          "aupro_max_binning_error": pixels.pooled.aupro_error_bound(),
                          "bin_edges": int(pixels.pooled.edges.size)}}


def _per_type(records: list[ImageRecord], scores: np.ndarray, labels: np.ndarray,
              groups: dict[str, PixelAccumulator]) -> dict[str, dict[str, Any]]:
    """Each defect type against the good images: image AUROC, pixel AUROC, AUPRO."""
    types = np.array([r.defect_type for r in records])
    per_type: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(types) - {"good"}):
        pair = groups[kind].copy()
        if "good" in groups:
            pair += groups["good"]
        subset = (types == kind) | (types == "good")
        per_type[kind] = {"count": int((types == kind).sum()),
                          "image_auroc": _finite(auroc(scores[subset], labels[subset])),
                          "pixel_auroc": _finite(pair.auroc()), "aupro": _finite(pair.aupro()),
                          "regions": pair.regions}
    return per_type


def _evaluation(model: InferenceModel, metrics: dict[str, Any], records: list[ImageRecord], scores: np.ndarray,
                labels: np.ndarray, maps: np.ndarray, shapes: list[tuple[int, int]],
                pooled: PixelAccumulator) -> Evaluation:
    """What the report draws: curves thinned for drawing, plus the per-image data."""
    fpr, tpr, pro, _ = pooled.curves()
    if labels.all() or not labels.any():
        image_roc = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    else:
        image_roc = roc_curve(scores, labels)[:2]
    return Evaluation(metrics=metrics, records=records, image_scores=scores, labels=labels, maps=maps,
                      shapes=shapes, image_threshold=float(model.image_threshold),
                      resize_mode=model.metadata.resize_mode, to_image=model.map_to_image, image_roc=image_roc,
                      pixel_roc=_thin(fpr, tpr), pro_curve=_thin(fpr, pro))
