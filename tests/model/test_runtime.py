"""The one model runtime: typed metadata, the calibrated head, per-frame thresholds, operating points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from linewatch.detector.evaluation.metrics import recall_at_false_alarm_rate
from linewatch.detector.model.calibrate import Calibration, threshold_interval
from linewatch.detector.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from linewatch.detector.model.geometry import letterbox_box, map_to_image
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.metadata import MetadataError, ModelMetadata
from linewatch.detector.model.stfpm.calibrated import CalibratedSTFPM
from linewatch.detector.model.stfpm.torch_model import STFPM
from linewatch.ingest.synthetic import render_sample

pytestmark = pytest.mark.unit


def _calibration(threshold: float = 0.2) -> Calibration:
    return Calibration(threshold, threshold / 2, 0.01, 0.001, 0.5)


def test_metadata_round_trips_and_names_what_is_missing() -> None:
    meta = ModelMetadata("efficientnet_lite0", (2, 4, 10), 256, _calibration(), sigma=4.0, score_top_k=10,
                         tap_weights=(1.0, 1.0, 2.0), map_cells=(64, 64))
    again = ModelMetadata.from_dict(meta.to_dict())
    assert again == meta
    assert ModelMetadata.from_dict({k: v for k, v in meta.to_dict().items() if k != "tap_weights"}).tap_weights == ()
    for bad in ([1.0, 2.0], [1.0, 1.0, float("nan")], [1.0, 1.0, -2.0]):
        with pytest.raises(MetadataError, match="tap_weights"):
            ModelMetadata.from_dict({**meta.to_dict(), "tap_weights": bad})
    with pytest.raises(MetadataError, match="calibration"):
        ModelMetadata.from_dict({k: v for k, v in meta.to_dict().items() if k != "calibration"})
    with pytest.raises(MetadataError, match="resize_mode"):
        ModelMetadata.from_dict({**meta.to_dict(), "resize_mode": "stretch"})


def test_top_k_score_is_the_mean_of_the_largest_cells() -> None:
    model = STFPM("efficientnet_lite0", 32, taps=(2,), score_top_k=3)
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, :3] = torch.tensor([3.0, 2.0, 1.0])
    maps[1, 1, 1] = 6.0
    assert model.image_scores(maps).tolist() == [2.0, 2.0]


def test_head_puts_each_frames_threshold_at_one_half() -> None:
    head = CalibratedSTFPM(STFPM("efficientnet_lite0", 32, taps=(2,)), _calibration(0.2))
    maps = torch.full((3, 4, 4), 0.3)
    scores, normalised, anomalous, _ = head.head(maps)
    assert torch.allclose(scores, torch.full((3,), 0.3)) and anomalous.all() and (normalised > 0.5).all()
    _, normalised, anomalous, _ = head.head(maps, torch.tensor([0.3, 0.6, 0.1]))
    assert normalised[0].item() == pytest.approx(0.5) and normalised[1] < 0.5 < normalised[2]
    assert anomalous.tolist() == [True, False, True]


def test_per_frame_thresholds_change_verdicts_not_maps(tiny_model: Path) -> None:
    model = AnomalyModel.load(tiny_model, "cpu")
    frames = np.stack([render_sample(i, size=64).image for i in range(4)])
    base = model.predict(frames)
    strict = model.predict(frames, np.full(4, 1e9))
    lax = model.predict(frames, np.zeros(4))
    np.testing.assert_array_equal(base.maps, strict.maps)
    assert not strict.anomalous.any() and lax.anomalous.all()
    assert (strict.thresholds == 1e9).all() and (base.thresholds == model.image_threshold).all()


def test_a_checkpoint_with_broken_metadata_is_refused_in_one_line(tiny_model: Path, tmp_path: Path) -> None:
    state, meta = load_checkpoint(tiny_model)
    meta = {k: v for k, v in meta.items() if k not in ("tensor_sha256", "metadata_sha256", "format",
                                                      "format_version")}
    save_checkpoint(tmp_path / "bad.safetensors", state, {**meta, "score_top_k": 0})
    with pytest.raises(CheckpointError, match="score_top_k"):
        AnomalyModel.load(tmp_path / "bad.safetensors", "cpu")


def test_letterbox_geometry_round_trips_a_region() -> None:
    top, left, inner_h, inner_w = letterbox_box(100, 250, 50)
    assert (inner_h, inner_w) == (20, 50) and (top, left) == (15, 0)
    square = np.zeros((50, 50), np.float32)
    square[top:top + inner_h, 25:] = 1.0  # right half of the picture
    back = map_to_image(square, (100, 250), "letterbox")
    assert back.shape == (100, 250) and back[:, 130:].min() > 0.9 and back[:, :120].max() < 0.1


def test_recall_at_false_alarm_rate_counts_defects_above_the_good_quantile() -> None:
    good = np.arange(100, dtype=float)  # the 1% point is the next score above the 99th percentile: 99
    defects = np.array([50.0, 99.0, 99.5, 200.0])
    scores = np.r_[good, defects]
    labels = np.r_[np.zeros(100, bool), np.ones(4, bool)]
    assert recall_at_false_alarm_rate(scores, labels, 0.01) == pytest.approx(2 / 4)
    assert recall_at_false_alarm_rate(scores, labels, 0.5) == pytest.approx(3 / 4)


def test_threshold_interval_narrows_with_more_good_images() -> None:
    rng = np.random.default_rng(0)
    few = threshold_interval(rng.lognormal(size=150), 0.01)
    many = threshold_interval(rng.lognormal(size=5000), 0.01)
    assert few[0] < few[1] and many[1] - many[0] < few[1] - few[0]


@pytest.mark.slow
def test_calibrate_cli_rewrites_thresholds_from_a_good_folder(tiny_model: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import cv2

    from linewatch.deploy.cli import main

    folder = tmp_path / "good"
    folder.mkdir()
    images = [render_sample(900 + i, size=64, defect_probability=0.0).image for i in range(24)]
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "recal.safetensors"
    assert main(["calibrate", "--model", str(tiny_model), str(folder), "--out", str(out),
                 "--target-false-alarm-rate", "0.05", "--device", "cpu"]) == 0
    scores = AnomalyModel.load(tiny_model, "cpu").predict(images).image_scores
    recalibrated = AnomalyModel.load(out, "cpu")
    assert recalibrated.image_threshold == pytest.approx(float(np.quantile(scores, 0.95, method="higher")), rel=1e-5)
    assert recalibrated.metadata.training["recalibrated_from"]["n_good"] == 24
    capsys.readouterr()
    assert main(["calibrate", "--model", str(tiny_model), str(folder), "--print-threshold", "cam-7",
                 "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"cam-7"} and printed["cam-7"] == pytest.approx(
        float(np.quantile(scores, 0.99, method="higher")), rel=1e-5)
