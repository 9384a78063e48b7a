"""bf16 under ``--backend auto``: offered only where the CPU runs bf16 natively and the model has thresholds
calibrated at bf16; a bf16 run judges frames by those thresholds, never by the fp32 ones."""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.synthetic_parts import synthetic_good_folder

from linewatch.common.signal_stack import current_signal_stack, install_signal_stack, needed_signal_stack
from linewatch.common.signals import stop_on_signals
from linewatch.deploy.cli import main
from linewatch.detector.model.backends import load_model, load_to_calibrate
from linewatch.detector.model.backends.loader import _read_table, _runtimes, _table_key, record_measurement
from linewatch.detector.model.backends.runners import openvino_capabilities
from linewatch.detector.model.checkpoint import file_sha256, load_checkpoint
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.metadata import ModelMetadata

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")
NATIVE_BF16 = "BF16" in openvino_capabilities()
BF16 = ("openvino", "bf16")


def test_auto_offers_bf16_only_natively_and_with_bf16_thresholds(tiny_model: Path) -> None:
    metadata = AnomalyModel.load(tiny_model, "cpu").metadata
    assert BF16 not in _runtimes(CPU, metadata, None)  # no bf16 thresholds: fp32 runtimes only
    with_bf16 = replace(metadata, precision_calibrations={"bf16": metadata.calibration})
    assert (BF16 in _runtimes(CPU, with_bf16, None)) == NATIVE_BF16  # never emulated where the CPU lacks it
    assert BF16 not in _runtimes(CPU, with_bf16, "fp32")  # fp32 asked for: fp32 only
    assert _runtimes(CPU, with_bf16, "bf16") == [BF16]
    assert ModelMetadata.from_dict(with_bf16.to_dict()) == with_bf16  # stored and read back whole


@pytest.fixture(scope="module")
def bf16_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """The tiny model with bf16 thresholds from ``linewatch calibrate --precision bf16`` on 24 good parts."""
    if not NATIVE_BF16:
        pytest.skip(f"no native bf16 on this CPU (OpenVINO CPU capabilities: {sorted(openvino_capabilities())})")
    root = tmp_path_factory.mktemp("bf16")
    folder = synthetic_good_folder(root / "good")
    out = root / "bf16.safetensors"
    assert main(["calibrate", "--model", str(tiny_model), str(folder), "--out", str(out), "--precision", "bf16"]) == 0
    images = [cv2.imread(str(p))[:, :, ::-1].copy() for p in sorted(folder.iterdir())]
    return out, images


def test_measuring_bf16_thresholds_does_not_warn_that_they_are_missing(tiny_model: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """`linewatch train` on a bf16 CPU printed "no thresholds calibrated at bf16" just before calibrating them."""
    if not NATIVE_BF16:
        pytest.skip(f"no native bf16 on this CPU (OpenVINO CPU capabilities: {sorted(openvino_capabilities())})")
    missing = "no thresholds calibrated at bf16"
    with caplog.at_level(logging.WARNING, logger="linewatch.detector.model.backends.loader"):
        load_to_calibrate(tiny_model, "bf16", threads=1)
        assert not [r for r in caplog.records if missing in r.getMessage()]
        load_model(tiny_model, "openvino", "cpu", precision="bf16", threads=1)  # a run, not a calibration: it says so
        assert [r for r in caplog.records if missing in r.getMessage()]


def test_a_bf16_run_judges_by_its_bf16_thresholds(bf16_model: tuple[Path, list[np.ndarray]], tiny_model: Path) -> None:
    path, images = bf16_model
    stored = ModelMetadata.from_dict(load_checkpoint(path)[1])
    assert stored.calibration == AnomalyModel.load(tiny_model, "cpu").calibration  # the fp32 thresholds stay
    bf16 = stored.precision_calibrations["bf16"]
    model = load_model(path, "openvino", "cpu", precision="bf16", threads=1)
    assert (model.image_threshold, model.pixel_threshold) == (bf16.image_threshold, bf16.pixel_threshold)
    scores = model.predict(images).image_scores  # the thresholds are the bf16 run's own quantiles
    assert bf16.image_threshold == pytest.approx(float(np.quantile(scores, 0.99, method="higher")), rel=1e-6)
    fp32 = load_model(path, "openvino", "cpu", precision="fp32", threads=1)
    assert fp32.image_threshold == stored.calibration.image_threshold


def test_an_export_folder_run_at_bf16_judges_by_the_bf16_thresholds(bf16_model: tuple[Path, list[np.ndarray]],
                                                                     tmp_path: Path) -> None:
    from linewatch.detector.model.export import export_openvino

    path, _ = bf16_model
    bf16 = ModelMetadata.from_dict(load_checkpoint(path)[1]).precision_calibrations["bf16"]
    folder = export_openvino(path, tmp_path / "export")
    assert load_model(folder, "openvino", "cpu", precision="bf16", threads=1).image_threshold == bf16.image_threshold
    fp32 = load_model(folder, "openvino", "cpu", threads=1)
    assert fp32.image_threshold == ModelMetadata.from_dict(load_checkpoint(path)[1]).calibration.image_threshold


def test_auto_runs_bf16_by_its_thresholds_where_it_was_measured_fastest(
        bf16_model: tuple[Path, list[np.ndarray]]) -> None:
    path, _ = bf16_model
    bf16 = ModelMetadata.from_dict(load_checkpoint(path)[1]).precision_calibrations["bf16"]
    version = file_sha256(path)[:12]
    record_measurement(version, CPU, 3, {"torch": 1.0, "onnxruntime": 2.0, "openvino": 3.0, "openvino:bf16": 9.0})
    chosen = load_model(path, "auto", "cpu", threads=3)
    assert (getattr(chosen, "precision"), chosen.image_threshold) == ("bf16", bf16.image_threshold)  # noqa: B009
    record_measurement(version, CPU, 3, {"torch": 1.0, "onnxruntime": 2.0, "openvino": 3.0}, "fp32")
    assert getattr(load_model(path, "auto", "cpu", threads=3, precision="fp32"), "precision") == "fp32"  # noqa: B009


@pytest.mark.slow  # times four runtimes
def test_auto_measures_bf16_beside_the_fp32_runtimes(bf16_model: tuple[Path, list[np.ndarray]]) -> None:
    path, _ = bf16_model
    chosen = load_model(path, "auto", "cpu", threads=1)  # no table entry for one thread: measured now
    entry = _read_table()[_table_key(file_sha256(path)[:12], CPU, 1)]
    assert set(entry["frames_per_s"]) == {"torch", "onnxruntime", "openvino", "openvino:bf16"}
    assert entry["backend"] == max(entry["frames_per_s"], key=entry["frames_per_s"].get)
    assert entry["backend"].endswith(getattr(chosen, "precision", "fp32")) or ":" not in entry["backend"]


def test_sigterm_after_a_bf16_run_reaches_the_graceful_stop(bf16_model: tuple[Path, list[np.ndarray]]) -> None:
    """After AMX work in a thread, its signal frames hold the tile state. Compiling a model at one thread, the
    CPU plugin set the thread an alternate signal stack of 20144 bytes (SIGSTKSZ + the kernel's minimum frame),
    on which SIGTERM killed the process with SIGSEGV (common/signal_stack.py). Here that stack is set by hand
    inside the handlers (as a detector reloads a model while it runs) before the model is loaded."""
    path, images = bf16_model
    with stop_on_signals() as stop:
        assert install_signal_stack(8192 + 11952)
        load_model(path, "openvino", "cpu", precision="bf16", threads=1).predict(images)
        assert current_signal_stack() >= needed_signal_stack()
        signal.raise_signal(signal.SIGTERM)  # delivered to this (main) thread before raise_signal returns
    assert stop.is_set()
