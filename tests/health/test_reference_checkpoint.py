"""The drift reference read from a checkpoint is keyed by the model version the detector reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.training.train import train_synthetic_model
from linewatch.health.service import references_from_checkpoints

pytestmark = pytest.mark.unit


def test_reference_matches_the_detectors_model_version_and_calibration(tmp_path: Path) -> None:
    path = train_synthetic_model(tmp_path / "tiny.safetensors", epochs=1, n_images=8)
    model = AnomalyModel.load(path, device="cpu")
    references = references_from_checkpoints([str(path)])
    assert list(references) == [model.model_version]
    reference = references[model.model_version]
    assert reference.p50 == pytest.approx(model.metadata.calibration.score_stats["p50"])
    assert reference.log_scale == pytest.approx(model.metadata.calibration.log_scale)

    # The alerts box runs camera health without torch or safetensors: the header alone must do.
    code = ("import sys; sys.modules['torch'] = sys.modules['safetensors'] = None\n"
            "from linewatch.health.service import references_from_checkpoints\n"
            f"print(*references_from_checkpoints([{str(path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [model.model_version]
