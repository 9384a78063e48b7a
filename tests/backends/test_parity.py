"""Every backend and precision against the torch fp32 runtime on the session's tiny model.

Tolerances (stated, measured on this model):
- ONNX Runtime and OpenVINO fp32: maps within 1e-4 absolute (measured ~2e-6), scores and normalised
  scores within 1e-5 (+1e-4 relative), verdicts identical, per-frame thresholds honoured identically.
- OpenVINO INT8 (NNCF, backbones quantized, fusion and head in fp32): the mean absolute map error is
  below 10% of the fp32 maps' range, and verdicts/normalisation follow the graph's own scores (the head
  is not quantized). Its accuracy on real data is the AUROC test in test_realdata.py.
- bf16: skipped where the CPU has no native bf16 (this AMD EPYC: AVX2 only), with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linewatch.detector.model.backends import BackendError, load_model
from linewatch.detector.model.backends.runners import openvino_capabilities
from linewatch.detector.model.inference import AnomalyModel, Prediction
from linewatch.detector.model.roi import RoiConfig, cell_mask
from linewatch.ingest.synthetic import render_sample

pytestmark = pytest.mark.unit

FP32_BACKENDS = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def reference(tiny_model: Path) -> AnomalyModel:
    return AnomalyModel.load(tiny_model, "cpu")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Six 90 px frames, half with defects (the model resizes them to its 64 px)."""
    return np.stack([render_sample(900 + i, size=90, defect_probability=0.5).image for i in range(6)])


def assert_same(actual: Prediction, expected: Prediction, map_atol: float = 1e-4) -> None:
    np.testing.assert_allclose(actual.maps, expected.maps, rtol=1e-3, atol=map_atol)
    np.testing.assert_allclose(actual.image_scores, expected.image_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(actual.normalised_scores, expected.normalised_scores, rtol=1e-4, atol=1e-5)
    assert (actual.anomalous == expected.anomalous).all()
    assert actual.thresholds is not None and expected.thresholds is not None
    np.testing.assert_array_equal(actual.thresholds, expected.thresholds)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_fp32_backends_match_torch(backend: str, tiny_model: Path, reference: AnomalyModel,
                                   frames: np.ndarray) -> None:
    model = load_model(tiny_model, backend, "cpu")
    assert getattr(model, "backend") == backend  # noqa: B009 - the protocol does not declare it
    assert (model.model_version, model.image_threshold, model.image_size) == (
        reference.model_version, reference.image_threshold, reference.image_size)
    for batch in (frames, frames[:1]):  # dynamic batch axis
        assert_same(model.predict(batch), reference.predict(batch))


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_fusion_weights_travel_into_the_exported_graph(backend: str, tiny_model: Path, tmp_path: Path,
                                                        frames: np.ndarray) -> None:
    from linewatch.detector.model.checkpoint import load_checkpoint, save_checkpoint

    state, metadata = load_checkpoint(tiny_model)
    weighted = tmp_path / "weighted.safetensors"
    save_checkpoint(weighted, state, {**metadata, "tap_weights": [1.0, 1.0, 2.0]})
    expected = AnomalyModel.load(weighted, "cpu").predict(frames)
    assert not np.allclose(expected.maps, AnomalyModel.load(tiny_model, "cpu").predict(frames).maps)
    assert_same(load_model(weighted, backend, "cpu").predict(frames), expected)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_a_model_that_scores_with_other_taps_than_it_shows_exports_both(backend: str, tiny_model: Path,
                                                                       tmp_path: Path, frames: np.ndarray) -> None:
    """The "coarse" recipe's two maps: the map shown from taps 2/4, the image score from tap 10's map."""
    import torch

    from linewatch.detector.model.checkpoint import load_checkpoint, save_checkpoint

    state, metadata = load_checkpoint(tiny_model)
    two_maps = tmp_path / "two-maps.safetensors"
    save_checkpoint(two_maps, state, {**metadata, "map_taps": [2, 4], "score_taps": [10]})
    model = AnomalyModel.load(two_maps, "cpu")
    expected = model.predict(frames)
    with torch.inference_mode():
        shown, scored = model.model.scored_maps(model.model.preprocess(torch.from_numpy(frames)))
    np.testing.assert_allclose(expected.maps, shown.numpy(), atol=1e-6)
    np.testing.assert_allclose(expected.image_scores, scored.flatten(1).amax(1).numpy(), rtol=1e-5)
    assert not np.allclose(expected.image_scores, expected.maps.reshape(len(frames), -1).max(axis=1))
    assert_same(load_model(two_maps, backend, "cpu").predict(frames), expected)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_per_frame_thresholds_go_through_the_graph_head(backend: str, tiny_model: Path, reference: AnomalyModel,
                                                        frames: np.ndarray) -> None:
    scores = reference.predict(frames).image_scores
    # one threshold just under and one just over each frame's score: every verdict depends on its own
    thresholds = np.where(np.arange(len(frames)) % 2 == 0, scores * 0.99, scores * 1.01).astype(np.float32)
    expected = reference.predict(frames, thresholds)
    actual = load_model(tiny_model, backend, "cpu").predict(frames, thresholds)
    assert_same(actual, expected)
    assert actual.anomalous.tolist() == [True, False] * 3


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_region_masks_go_through_the_graph_head(backend: str, tiny_model: Path, reference: AnomalyModel,
                                                frames: np.ndarray) -> None:
    unmasked = reference.predict(frames)
    # each frame's hottest cell sits under its own ignore mask, so every score must drop
    size = reference.image_size
    masks = np.ones((len(frames), size, size), np.float32)
    for i, anomaly_map in enumerate(unmasked.maps):
        row, col = np.unravel_index(int(np.argmax(anomaly_map)), anomaly_map.shape)
        masks[i, max(0, row - 6):row + 7, max(0, col - 6):col + 7] = 0
    masks[0] = cell_mask(RoiConfig(exclude=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]]), frames.shape[1:3], size) * masks[0]
    expected = reference.predict(frames, masks=masks)
    assert (expected.image_scores < unmasked.image_scores).all()
    assert not expected.maps[masks == 0].any()  # ignored cells count toward nothing, the returned map included
    actual = load_model(tiny_model, backend, "cpu").predict(frames, masks=masks)
    assert_same(actual, expected)
    np.testing.assert_array_equal(actual.maps[masks == 0], 0.0)


def test_masks_of_the_wrong_shape_are_refused(reference: AnomalyModel, frames: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"masks must be \(N, S, S\)"):
        reference.predict(frames, masks=np.ones((len(frames), 8, 8), np.float32))


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_mixed_frame_sizes_and_empty_input(backend: str, tiny_model: Path, reference: AnomalyModel) -> None:
    mixed = [render_sample(950 + i, size=size, defect_probability=0.5).image
             for i, size in enumerate((64, 90, 120))]
    mixed.append(mixed[1][:70])  # not square
    model = load_model(tiny_model, backend, "cpu")
    assert_same(model.predict(mixed), reference.predict(mixed))
    empty = model.predict([])
    assert empty.maps.shape == (0, 64, 64) and empty.image_scores.shape == (0,)
    one = model.predict(mixed[3:]).maps[0]
    np.testing.assert_allclose(model.map_to_image(one, (70, 90)), reference.map_to_image(one, (70, 90)))


@pytest.mark.slow  # NNCF quantization: ~30 s on 2 loaded cores
def test_int8_export_stays_close_to_fp32(int8_export: Path, reference: AnomalyModel, frames: np.ndarray) -> None:
    model = load_model(int8_export)  # an export folder: OpenVINO, at the precision it was exported with
    assert (getattr(model, "backend"), getattr(model, "precision")) == ("openvino", "int8")  # noqa: B009
    assert model.model_version == reference.model_version
    expected, actual = reference.predict(frames), model.predict(frames)
    spread = float(expected.maps.max() - expected.maps.min())
    assert float(np.abs(actual.maps - expected.maps).mean()) < 0.1 * spread
    # the head is fp32 inside the graph: verdicts and normalisation follow the INT8 scores exactly
    assert (actual.anomalous == (actual.image_scores >= reference.image_threshold)).all()
    np.testing.assert_allclose(actual.normalised_scores, reference.normalise(actual.image_scores), atol=1e-5)


def test_bf16_where_the_cpu_has_it(tiny_model: Path, reference: AnomalyModel, frames: np.ndarray) -> None:
    if "BF16" not in openvino_capabilities():
        with pytest.raises(BackendError, match="no native bf16"):
            load_model(tiny_model, "openvino", "cpu", precision="bf16")
        pytest.skip(f"no native bf16 on this CPU (OpenVINO CPU capabilities: {sorted(openvino_capabilities())})")
    model = load_model(tiny_model, "openvino", "cpu", precision="bf16")
    expected, actual = reference.predict(frames), model.predict(frames)
    spread = float(expected.maps.max() - expected.maps.min())
    assert float(np.abs(actual.maps - expected.maps).mean()) < 0.05 * spread
