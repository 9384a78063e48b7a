"""evaluate(): metrics.json and report.html from a model run on an MVTec-layout folder.

The oracle model returns each test image's own ground-truth mask as its anomaly map, so every
metric has a known value; this checks the wiring (record order, map-to-image geometry, empty masks,
per-type grouping) independently of how good any trained model is.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from mvtec_fixture import mask_key, write_tiny_mvtec

from linewatch.detector.evaluation.evaluate import evaluate
from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.geometry import map_to_image
from linewatch.detector.model.metadata import ModelMetadata


class OracleModel:
    """Duck-typed AnomalyModel: map = ground-truth mask (+ ``offset``), at model size ``size``."""

    def __init__(self, masks: dict[str, np.ndarray], size: int, invert: bool = False) -> None:
        self.masks, self.image_size, self.invert = masks, size, invert
        self.image_threshold, self.pixel_threshold, self.model_version = 0.5, 0.5, "oracle-1"
        calibration = Calibration(0.5, 0.5, 0.01, 0.001, 1.0)
        self.metadata = ModelMetadata("oracle", (1,), max(size, 16), calibration)

    def map_to_image(self, anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        return map_to_image(anomaly_map, shape, "squash")

    def predict(self, frames: list[np.ndarray]) -> SimpleNamespace:
        maps = []
        for frame in frames:
            truth = self.masks[mask_key(frame)].astype(np.float32)
            truth = 1.0 - truth if self.invert else truth
            maps.append(cv2.resize(truth, (self.image_size, self.image_size), interpolation=cv2.INTER_NEAREST))
        stacked = np.stack(maps)
        scores = stacked.reshape(len(frames), -1).max(axis=1)
        return SimpleNamespace(image_scores=scores, normalised_scores=scores, anomalous=scores >= 0.5, maps=stacked)


def test_oracle_model_gives_the_known_metrics_and_a_self_contained_report(tmp_path: Path) -> None:
    masks = write_tiny_mvtec(tmp_path / "data")
    metrics = evaluate(OracleModel(masks, 64), tmp_path / "data", tmp_path / "out", batch_size=3)
    # 4 good (score 0), 6 defects (score 1) and 1 defect with an empty mask (score 0, tied with the goods):
    # image AUROC = (6 * 4 + 1 * 4 * 0.5) / (7 * 4) = 26/28. Every defective pixel is 1, every other 0.
    assert metrics["image_auroc"] == pytest.approx(26 / 28)
    assert metrics["pixel_auroc"] == 1.0 and metrics["aupro"] == 1.0
    assert metrics["pixel_f1"] == 1.0
    # Flagged: the 6 defects with a non-empty mask; FN = the empty-mask one. F1 = 12 / 13.
    assert metrics["image_f1"] == pytest.approx(12 / 13)
    assert metrics["image_f1_optimal"] == pytest.approx(12 / 13) and metrics["image_f1_optimal_threshold"] == 1.0
    assert metrics["counts"] == {**metrics["counts"], "images": 11, "good": 4, "defective": 7,
                                 "defective_empty_mask": 1, "defective_missing_mask": 0}
    assert metrics["exactness"]["pixel_auroc_max_binning_error"] == 0.0
    # operating points: the good scores are all 0, so any defect scoring above 0 is caught at 1% and 0.1%
    assert metrics["image_recall_at_fpr"] == {"0.01": pytest.approx(6 / 7), "0.001": pytest.approx(6 / 7)}
    assert metrics["calibrated_false_alarm_rate"] == 0.0
    assert set(metrics["per_type"]) == {"blob", "crack", "scratch"}
    assert metrics["per_type"]["crack"]["count"] == 3
    assert metrics["per_type"]["crack"]["image_auroc"] == pytest.approx((2 * 4 + 0.5 * 4) / 12)
    assert metrics["per_type"]["blob"] == {**metrics["per_type"]["blob"], "image_auroc": 1.0, "pixel_auroc": 1.0,
                                           "aupro": 1.0}
    assert metrics["model_version"] == "oracle-1" and metrics["settings"]["model"]["backbone"] == "oracle"
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics

    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("<svg") == 3 and page.count("data:image/png;base64,") == 6 + 4
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert "Worst misses" in page and "crack/099.png" in page  # the empty-mask defect is the worst miss


def test_inverted_oracle_on_non_square_images(tmp_path: Path) -> None:
    # 48x64 crops, model size 40: masks are squashed into the maps, which are resized back to 48x64.
    masks = write_tiny_mvtec(tmp_path / "data", crop=(48, 64), empty_mask=False)
    good = evaluate(OracleModel(masks, 40), tmp_path / "data", tmp_path / "a", report=False)
    bad = evaluate(OracleModel(masks, 40, invert=True), tmp_path / "data", tmp_path / "b", report=False)
    assert good["pixel_auroc"] > 0.97 and good["aupro"] > 0.7  # thin scratches lose pixels at 40x40
    assert bad["pixel_auroc"] < 0.03 and bad["aupro"] < 0.05
    assert not (tmp_path / "a" / "report.html").exists()


def test_map_to_image_inverts_the_models_own_letterbox() -> None:
    torch = pytest.importorskip("torch")
    from linewatch.detector.model.stfpm.torch_model import STFPM

    # A bright rectangle on a 90x150 image, letterboxed to 64x64 by STFPM.preprocess itself.
    image = np.zeros((90, 150, 3), np.uint8)
    image[30:60, 40:110] = 255
    fake = SimpleNamespace(image_size=64, resize_mode="letterbox", mean=torch.zeros(1, 3, 1, 1),
                           std=torch.ones(1, 3, 1, 1))
    boxed = STFPM.preprocess(fake, torch.from_numpy(image)[None])[0, 0].numpy()  # type: ignore[arg-type]
    back = map_to_image(boxed, (90, 150), "letterbox") > 127
    truth = image[:, :, 0] > 127
    assert back.shape == (90, 150)
    assert (back & truth).sum() / (back | truth).sum() > 0.9
    # Squash mode is a plain resize.
    assert map_to_image(np.ones((64, 64), np.float32), (90, 150)).shape == (90, 150)
