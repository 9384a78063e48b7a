"""load_model's choices (auto from the measured table, or measured now), its refusals, and the CLI flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from linewatch.deploy.cli import main
from linewatch.detector.model.backends import BackendError, load_model
from linewatch.detector.model.backends.loader import _read_table, _table_key, record_measurement
from linewatch.detector.model.checkpoint import file_sha256
from linewatch.ingest.synthetic import render_sample

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def test_auto_takes_the_fastest_backend_of_the_measured_table(tiny_model: Path) -> None:
    version = file_sha256(tiny_model)[:12]
    record_measurement(version, CPU, 3, {"torch": 10.0, "onnxruntime": 30.0, "openvino": 20.0})
    assert getattr(load_model(tiny_model, "auto", "cpu", threads=3), "backend") == "onnxruntime"  # noqa: B009
    record_measurement(version, CPU, 3, {"torch": 10.0, "onnxruntime": 3.0, "openvino": 20.0})
    assert getattr(load_model(tiny_model, "auto", "cpu", threads=3), "backend") == "openvino"  # noqa: B009


def test_auto_measures_and_records_when_the_table_has_no_entry(tiny_model: Path) -> None:
    model = load_model(tiny_model, "auto", "cpu", threads=1)
    entry = _read_table()[_table_key(model.model_version, CPU, 1)]
    assert set(entry["frames_per_s"]) == {"torch", "onnxruntime", "openvino"}
    assert all(fps > 0 for fps in entry["frames_per_s"].values())
    fastest = max(entry["frames_per_s"], key=entry["frames_per_s"].get)
    assert entry["backend"] == fastest == getattr(model, "backend", "torch")


def test_refusals_name_the_way_out(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="unknown backend"):
        load_model(tiny_model, "tensorrt", "cpu")
    with pytest.raises(BackendError, match="--int8"):
        load_model(tiny_model, "openvino", "cpu", precision="int8")
    with pytest.raises(BackendError, match="fp32"):
        load_model(tiny_model, "onnxruntime", "cpu", precision="bf16")
    with pytest.raises(BackendError, match="not a linewatch OpenVINO export"):
        load_model(tmp_path, "openvino", "cpu")


@pytest.mark.slow  # shares the NNCF-quantized export with test_parity.py
def test_export_folder_runs_only_on_openvino(int8_export: Path) -> None:
    with pytest.raises(BackendError, match="--backend openvino"):
        load_model(int8_export, "onnxruntime", "cpu")
    info = json.loads((int8_export / "linewatch.json").read_text())
    assert info["precision"] == "int8" and info["calibration"]["images"] == 24
    # the synthetic parts were arrays at training time, so the folder's hash cannot match: it says so
    assert info["calibration"]["matches_training"] is False


def test_bench_json_has_the_sizing_keys(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--model", str(tiny_model), "--backend", "onnxruntime", "--batch", "2", "--seconds", "0.2",
            "--threads", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["backend"], result["precision"], result["batch"], result["threads"]) == ("onnxruntime", "fp32", 2, 1)
    assert result["frames_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]
    assert result["batches"] >= 3


def test_cli_flags_reach_the_backends(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    cv2.imwrite(str(tmp_path / "part.png"), render_sample(5, size=80, defect_probability=1.0).image[:, :, ::-1])
    lines = {}
    for backend in ("torch", "openvino"):
        out = tmp_path / backend
        assert main(["predict", "--model", str(tiny_model), str(tmp_path / "part.png"), "--out", str(out),
                     "--backend", backend, "--device", "cpu"]) == 0
        lines[backend] = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(lines["openvino"]["image_score"], lines["torch"]["image_score"], rtol=1e-4)
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_model), "--format", "openvino", "--int8", "--out",
                 str(tmp_path / "x")]) == 2
    assert "--calibration-data" in capsys.readouterr().err
