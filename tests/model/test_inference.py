"""Inference API and the synthetic training helper used by other packages' tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from linewatch.detector.model.inference import AnomalyModel
from linewatch.ingest.synthetic import render_sample


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> AnomalyModel:
    return AnomalyModel.load(tiny_model, device="cpu")


def _batch(seed: int, n: int, size: int, defect: float) -> np.ndarray:
    return np.stack([render_sample(seed + i, size=size, defect_probability=defect).image for i in range(n)])


def test_model_metadata(model: AnomalyModel, tiny_model: Path) -> None:
    assert model.backbone == "efficientnet_lite0" and model.image_size == 64
    # the version names the exact file: the first 12 hex digits of its sha256
    assert model.model_version == hashlib.sha256(tiny_model.read_bytes()).hexdigest()[:12]
    assert 0 < model.pixel_threshold <= model.image_threshold
    assert AnomalyModel.load(tiny_model, "cpu").model_version == model.model_version


def test_predict_shapes_and_dtypes(model: AnomalyModel) -> None:
    frames = _batch(100, 3, 80, 0.5)  # not the model size: resized on the device
    pred = model.predict(frames)
    assert pred.image_scores.shape == (3,) and pred.image_scores.dtype == np.float32
    assert pred.normalised_scores.shape == (3,) and pred.anomalous.dtype == bool
    assert pred.maps.shape == (3, 64, 64) and pred.maps.dtype == np.float32
    np.testing.assert_allclose(pred.image_scores, pred.maps.reshape(3, -1).max(1), rtol=1e-6)
    np.testing.assert_array_equal(pred.anomalous, pred.image_scores >= model.image_threshold)
    assert model.predict(frames[:0]).maps.shape == (0, 64, 64)


def test_list_of_mixed_sizes_matches_single_frames(model: AnomalyModel) -> None:
    frames = [render_sample(7, size=96).image, render_sample(8, size=64).image[:50], render_sample(9, size=64).image]
    together = model.predict(frames)
    alone = [model.predict(f[None]).image_scores[0] for f in frames]
    np.testing.assert_allclose(together.image_scores, alone, rtol=1e-4)
    gray = model.predict([frames[2][:, :, 0]])
    assert gray.maps.shape == (1, 64, 64)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(frames[2][None].astype(np.float32))


def test_normalisation_threshold_maps_to_half(model: AnomalyModel) -> None:
    thr = model.image_threshold
    values = model.normalise(np.array([0.0, thr * 0.5, thr, thr * 2, 1e9], np.float32))
    assert values[2] == pytest.approx(0.5, abs=1e-6)
    assert np.all(np.diff(values) >= 0) and values.min() >= 0 and values.max() <= 1
    assert values[1] < 0.5 < values[3]


def test_defects_score_higher_than_good_parts(model: AnomalyModel) -> None:
    good = model.predict(_batch(50_000, 12, 64, 0.0))
    bad = model.predict(_batch(60_000, 12, 64, 1.0))
    assert bad.image_scores.mean() > 1.5 * good.image_scores.mean()
    assert bad.normalised_scores.mean() > good.normalised_scores.mean()
    assert bad.anomalous.mean() > good.anomalous.mean()
