"""The train/predict/export commands end to end, and the exported graphs against the torch model."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from linewatch.deploy.cli import main
from linewatch.detector.model.inference import AnomalyModel
from linewatch.errors import DataError, ModelError
from linewatch.ingest.synthetic import render_sample


@pytest.mark.slow  # trains a model through the CLI (18 s measured on 2 busy cores)
def test_train_synthetic_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "syn.safetensors"
    assert main(["train", "--synthetic", "--out", str(out), "--epochs", "1", "--image-size", "64"]) == 0
    assert AnomalyModel.load(out, "cpu").image_size == 64
    assert main(["train", str(tmp_path / "absent"), "--out", str(out)]) == DataError.exit_code
    assert "error" in capsys.readouterr().err


@pytest.mark.slow  # trains a small model through the CLI
def test_train_takes_the_taps_a_user_chooses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(10):
        image = render_sample(i, size=64, defect_probability=0.0).image
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    out = tmp_path / "deep.safetensors"
    common = ["--epochs", "1", "--image-size", "64", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main(["train", str(folder), "--out", str(out), "--taps", "10,14", "--patience", "0", *common]) == 0
    model = AnomalyModel.load(out, "cpu")
    assert tuple(model.metadata.taps) == (10, 14) and tuple(model.model.taps) == (10, 14)
    assert model.metadata.training["config"]["patience"] == 0  # the early-stopping flag reaches the run
    assert model.predict(np.zeros((1, 64, 64, 3), np.uint8)).maps.shape == (1, 64, 64)
    # A tap the network does not have: one line naming it and exit 2, as for any bad flag
    assert main(["train", str(folder), "--out", str(tmp_path / "bad.safetensors"), "--taps", "2,99", *common]) == 2
    assert "taps must be block indices" in capsys.readouterr().err


def test_predict_writes_overlays_and_json_lines(tmp_path: Path, tiny_model: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, kind in enumerate(["scratch", None, "blob"]):
        sample = render_sample(300 + i, size=72, defect_probability=0.0, defect_type=kind)
        cv2.imwrite(str(folder / f"{i}.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(tiny_model), str(folder), "--out", str(out), "--device", "cpu"])
    assert code == 1  # one unreadable image is reported, the others are still scored
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and (out / "predictions.jsonl").read_text().count("\n") == 4
    scored = {Path(x["image"]).name: x for x in lines if "error" not in x}
    assert set(scored) == {"0.png", "1.png", "2.png"}
    assert scored["0.png"]["image_score"] > scored["1.png"]["image_score"]
    assert scored["0.png"]["region"]["bbox"] is not None
    overlay = cv2.imread(scored["2.png"]["overlay"])
    assert overlay is not None and overlay.shape == (72, 72, 3)
    broken = ["predict", "--model", str(folder / "broken.png"), str(folder), "--out", str(out)]
    assert main(broken) == ModelError.exit_code


@pytest.mark.slow  # two exports (55 s measured on 2 busy cores)
def test_onnx_and_torchscript_match_torch(tmp_path: Path, tiny_model: Path) -> None:
    model = AnomalyModel.load(tiny_model, "cpu")
    frames = np.stack([render_sample(700 + i, size=90, defect_probability=0.5).image for i in range(3)])
    expected = model.predict(frames)
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", "--model", str(tiny_model), "--format", "onnx", "--out", str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (frames, frames[:1]):  # dynamic batch axis
        scores, normalised, anomalous, maps = session.run(None, {"frames": batch})
        np.testing.assert_allclose(scores, expected.image_scores[: len(batch)], rtol=1e-4, atol=1e-5)
        # the calibration is inside the graph: no runtime re-implements it
        np.testing.assert_allclose(normalised, expected.normalised_scores[: len(batch)], rtol=1e-4, atol=1e-5)
        assert (anomalous == expected.anomalous[: len(batch)]).all()
        np.testing.assert_allclose(maps, expected.maps[: len(batch)], rtol=1e-3, atol=1e-4)
    ts_path = tmp_path / "m.pt"
    assert main(["export", "--model", str(tiny_model), "--format", "torchscript", "--out", str(ts_path)]) == 0
    with torch.no_grad():
        scores_ts, normalised_ts, _, maps_ts = torch.jit.load(str(ts_path))(torch.from_numpy(frames))
    np.testing.assert_allclose(normalised_ts.numpy(), expected.normalised_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores_ts.numpy(), expected.image_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps_ts.numpy(), expected.maps, rtol=1e-3, atol=1e-4)
