"""A tiled model end to end: training on tiles, per-part calibration, predict on every runtime, evaluate, the
recipe and its place among the auto candidates, metadata of old checkpoints, and the service's heatmap."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from linewatch.common.heatmap_codec import decode_map_png, encode_map_png
from linewatch.common.images import ImageRecord
from linewatch.detector.evaluation.evaluate import evaluate
from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.metadata import MetadataError, ModelMetadata
from linewatch.detector.model.tiling import frame_map, part_map_shape, stitch_part_map
from linewatch.detector.model.training.recipe_choice import candidates_for
from linewatch.detector.model.training.recipes import CANDIDATES, RECIPES
from linewatch.detector.model.training.train import TrainConfig, train
from linewatch.ingest.synthetic import render_sample

pytestmark = pytest.mark.unit

SIZE = 64  # model input; the long parts are 64 x 150 (three tiles)


def _long_part(seed: int, defect: bool = False) -> np.ndarray:
    """A 64 x 150 part: three synthetic squares side by side, the middle one defective when asked."""
    squares = [render_sample(seed * 3 + k, size=SIZE, defect_probability=1.0 if defect and k == 1 else 0.0).image
               for k in range(3)]
    return np.ascontiguousarray(np.concatenate(squares, axis=1)[:, :150])


@pytest.fixture(scope="module")
def tiled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(2)
    config = TrainConfig(image_size=SIZE, epochs=1, batch_size=8, device="cpu", taps=(2, 4, 10), tiling="long-axis")
    out = tmp_path_factory.mktemp("tiled") / "tiled.safetensors"
    return train(config, [_long_part(i) for i in range(8)], out, progress=False).path


def test_training_on_tiles_records_the_tiling_and_counts_tiles(tiled_model: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    assert model.metadata.tiling == "long-axis"
    training = model.metadata.training
    assert training["n_train"] + training["n_val"] == 8 * 3  # every good image gave its three tiles


def test_a_part_scores_its_worst_tile_and_maps_its_stitched_tiles(tiled_model: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    parts = [_long_part(100), _long_part(101, defect=True)]
    whole = model.predict(parts)
    assert whole.maps.shape == (2, *part_map_shape(64, 150, SIZE)) == (2, 64, 150)
    for i, part in enumerate(parts):
        tiles = [np.ascontiguousarray(part[:, left:left + 64]) for left in (0, 43, 86)]
        alone = model.predict(tiles)  # a square tile is one tile: the untiled path
        assert whole.image_scores[i] == pytest.approx(float(alone.image_scores.max()), rel=1e-4)
        assert whole.anomalous[i] == bool(alone.anomalous.any())
        assert np.allclose(whole.maps[i], stitch_part_map(list(alone.maps), 64, 150, SIZE), atol=1e-5)
        assert model.map_to_image(whole.maps[i], part.shape[:2]).shape == (64, 150)


def test_array_batches_lists_and_mixed_sizes_agree(tiled_model: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    parts = [_long_part(7), _long_part(8)]
    listed, stacked = model.predict(parts), model.predict(np.stack(parts))
    assert np.allclose(listed.image_scores, stacked.image_scores) and np.allclose(listed.maps, stacked.maps)
    on_device = model.predict(torch.from_numpy(np.stack(parts)))  # the GPU decode path's uint8 NHWC tensor
    assert np.allclose(on_device.image_scores, listed.image_scores) and np.allclose(on_device.maps, listed.maps)
    square = np.ascontiguousarray(parts[1][:, :64])
    mixed = model.predict([parts[0], square])
    assert mixed.maps.shape == (2, 64, 150)  # padded to the widest part map
    assert np.allclose(mixed.maps[0], listed.maps[0])
    assert model.map_to_image(mixed.maps[1], (64, 64)).shape == (64, 64)
    assert frame_map(mixed.maps[1], 64, 64, SIZE, "long-axis").shape == (64, 64)


def test_region_masks_of_the_squashed_frame_reach_each_tile(tiled_model: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    parts = [_long_part(9), _long_part(10, defect=True)]
    everywhere = model.predict(parts, masks=np.ones((2, SIZE, SIZE), np.float32))
    assert np.allclose(everywhere.maps, model.predict(parts).maps)
    left_half = np.zeros((2, SIZE, SIZE), np.float32)
    left_half[:, :, :SIZE // 2] = 1.0
    masked = model.predict(parts, masks=left_half)
    assert np.all(masked.maps[:, :, 80:] == 0.0)  # the right half of the 150-wide part map is outside
    assert masked.maps[:, :, :70].max() > 0 and np.all(masked.image_scores <= everywhere.image_scores + 1e-6)


def test_calibration_thresholds_whole_parts(tiled_model: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    held_out = model.metadata.training["n_val"] // 3  # held-out images, not tiles
    assert held_out >= 1 and model.calibration.score_stats["n"] == held_out


@pytest.fixture(scope="module")
def graph_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for both runtimes: the model's ONNX graph is exported once."""
    return tmp_path_factory.mktemp("graph-cache")


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_graph_runtimes_go_the_tiled_path(tiled_model: Path, backend: str, graph_cache: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from linewatch.detector.model.backends import load_model

    monkeypatch.setenv("LINEWATCH_CACHE_DIR", str(graph_cache))
    parts = [_long_part(30), _long_part(31, defect=True)]
    regions = np.ones((2, SIZE, SIZE), np.float32)
    regions[1, :, :8] = 0.0  # the graph takes each tile's part of the region masks
    reference = AnomalyModel.load(tiled_model, "cpu").predict(parts, masks=regions)
    graph = load_model(tiled_model, backend, "cpu", threads=1).predict(parts, masks=regions)
    assert graph.maps.shape == reference.maps.shape
    assert np.allclose(graph.image_scores, reference.image_scores, rtol=1e-3, atol=1e-4)
    assert np.allclose(graph.maps, reference.maps, rtol=1e-3, atol=1e-3)


def _mvtec_folder(root: Path) -> Path:
    for kind, defect in (("good", False), ("spot", True)):
        (root / "test" / kind).mkdir(parents=True)
        for i in range(3):
            part = _long_part(200 + i + 10 * defect, defect=defect)
            cv2.imwrite(str(root / "test" / kind / f"{i:03d}.png"), cv2.cvtColor(part, cv2.COLOR_RGB2BGR))
            if defect:
                (root / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                mask = np.zeros((64, 150), np.uint8)
                mask[20:40, 60:90] = 255
                cv2.imwrite(str(root / "ground_truth" / kind / f"{i:03d}_mask.png"), mask)
    return root


def test_evaluate_takes_part_maps(tiled_model: Path, tmp_path: Path) -> None:
    model = AnomalyModel.load(tiled_model, "cpu")
    metrics = evaluate(model, _mvtec_folder(tmp_path / "data"), tmp_path / "report", batch_size=4)
    assert metrics["counts"]["images"] == 6 and metrics["pixel_auroc"] is not None
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["settings"]["model"]["tiling"] == "long-axis"


def test_old_checkpoints_are_untiled_and_bad_tilings_are_refused() -> None:
    calibration = Calibration(image_threshold=1.0, pixel_threshold=1.0, target_false_alarm_rate=0.01,
                              pixel_false_positive_rate=0.001, log_scale=1.0)
    header = ModelMetadata("efficientnet_lite0", (2, 4, 10), 64, calibration).to_dict()
    assert header["tiling"] == "none"
    del header["tiling"]  # written before tiling existed
    assert ModelMetadata.from_dict(header).tiling == "none"
    assert ModelMetadata.from_dict({**header, "tiling": "long-axis"}).tiling == "long-axis"
    with pytest.raises(MetadataError, match="tiling must be one of"):
        ModelMetadata.from_dict({**header, "tiling": "grid"})
    with pytest.raises(MetadataError, match="needs resize_mode 'squash'"):
        ModelMetadata.from_dict({**header, "tiling": "long-axis", "resize_mode": "letterbox"})
    with pytest.raises(ValueError, match="tiling must be one of"):
        TrainConfig(tiling="grid")


def _records(tmp_path: Path, shape: tuple[int, int], n: int) -> list[ImageRecord]:
    records = []
    for i in range(n):
        path = tmp_path / f"{shape[0]}x{shape[1]}-{i}.png"
        cv2.imwrite(str(path), np.zeros((*shape, 3), np.uint8))
        records.append(ImageRecord(path=path, label="good", defect_type="good", mask_path=None))
    return records


def test_auto_tries_the_tiled_recipe_only_on_long_parts(tmp_path: Path) -> None:
    assert RECIPES["tiled"].settings["tiling"] == "long-axis"
    assert candidates_for(_records(tmp_path, (460, 1130), 3)) == (*CANDIDATES, "tiled")
    assert candidates_for(_records(tmp_path, (1130, 460), 3)) == (*CANDIDATES, "tiled")
    assert candidates_for(_records(tmp_path, (300, 400), 3)) == CANDIDATES
    assert candidates_for(_records(tmp_path, (256, 256), 3)) == CANDIDATES


def test_heatmap_of_a_long_part_keeps_its_aspect_ratio() -> None:
    part_map = np.zeros((64, 150), np.float32)
    part_map[30, 120] = 2.0
    png, scale = encode_map_png(part_map, 64)
    stored = decode_map_png(png, scale)
    assert stored.shape == (27, 64)
    assert np.unravel_index(int(np.argmax(stored)), stored.shape)[1] > 45  # still at the right-hand end
    square, _ = encode_map_png(np.ones((32, 32), np.float32), 64)
    assert decode_map_png(square, 1.0).shape == (64, 64)


def test_predict_bench_and_hot_swap_check_take_long_frames(tiled_model: Path, tmp_path: Path) -> None:
    from linewatch.detector.evaluation.bench import measure
    from linewatch.detector.evaluation.predict import predict_files
    from linewatch.detector.registry.hotswap import ModelRefusedError, check_model

    model = AnomalyModel.load(tiled_model, "cpu")
    folder = tmp_path / "frames"
    folder.mkdir()
    for name, image in (("long", _long_part(40)), ("square", _long_part(41)[:, :64])):
        cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    lines = predict_files(model, [folder], tmp_path / "out")
    assert {Path(line["image"]).stem: cv2.imread(line["overlay"]).shape[:2] for line in lines} == {
        "long": (64, 150), "square": (64, 64)}
    result = measure(model, batch=2, seconds=0.05, frame_side=64, frame_width=150, min_batches=1)
    assert (result.frame_side, result.frame_width) == (64, 150) and result.frames_per_s > 0
    check_model(model, model.model_version, None)
    try:  # a long known-good frame: its part map is the expected shape; a 1-epoch model may still call it anomalous
        check_model(model, model.model_version, _long_part(42))
    except ModelRefusedError as exc:
        assert "calls the known-good image anomalous" in str(exc)


def test_standalone_frame_graphs_of_tiled_models_are_refused(tiled_model: Path, tmp_path: Path) -> None:
    from linewatch.detector.model.export import ExportError, export_model

    with pytest.raises(ExportError, match="cannot be exported as a standalone onnx"):
        export_model(tiled_model, tmp_path / "model.onnx", "onnx")


@pytest.mark.slow  # an OpenVINO export: 10-40 s on 2 cores
def test_openvino_export_folders_keep_the_tiling(tiled_model: Path, tmp_path: Path) -> None:
    from linewatch.detector.model.backends import load_model
    from linewatch.detector.model.export import export_openvino

    folder = export_openvino(tiled_model, tmp_path / "openvino")
    parts = [_long_part(50)]
    exported = load_model(folder, "openvino", "cpu", threads=1).predict(parts)
    reference = AnomalyModel.load(tiled_model, "cpu").predict(parts)
    assert exported.maps.shape == reference.maps.shape == (1, 64, 150)
    assert np.allclose(exported.image_scores, reference.image_scores, rtol=1e-3, atol=1e-4)
