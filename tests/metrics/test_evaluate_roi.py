"""`linewatch evaluate --roi FILE`: one camera's regions applied to every test image, through the model's head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mvtec_fixture import write_tiny_mvtec

from linewatch.deploy.cli import main

LEFT_HALF_IGNORED = "roi:\n  exclude: [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]]\n"


def test_evaluate_applies_the_region_file_to_every_test_image(tiny_model: Path, tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    from linewatch.detector.evaluation.evaluate import run_evaluation
    from linewatch.detector.model.inference import AnomalyModel
    from linewatch.ingest.regions import load_roi_file

    data = tmp_path / "data"
    write_tiny_mvtec(data, size=96, n_good=2, per_type=1, crop=(80, 96))
    roi_file = tmp_path / "roi.yaml"
    roi_file.write_text(LEFT_HALF_IGNORED)
    model = AnomalyModel.load(tiny_model, device="cpu")
    plain = run_evaluation(model, data, tmp_path / "plain", batch_size=4, report=False)
    masked = run_evaluation(model, data, tmp_path / "masked", batch_size=4, report=False, roi=load_roi_file(roi_file))
    half = model.image_size // 2
    assert not masked.maps[:, :, :half - 1].any()  # ignored cells score 0 (squash: the left half of every map)
    assert (masked.image_scores <= plain.image_scores + 1e-6).all()
    assert (masked.image_scores < plain.image_scores).any()  # the mask changed something
    assert masked.metrics["settings"]["roi"]["exclude"] == [[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]]
    assert plain.metrics["settings"]["roi"] is None

    rc = main(["evaluate", "--model", str(tiny_model), str(data), "--report", str(tmp_path / "cli"),
               "--device", "cpu", "--batch-size", "4", "--roi", str(roi_file)])
    assert rc == 0
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["settings"]["roi"] == masked.metrics["settings"]["roi"]
    assert metrics["image_auroc"] == pytest.approx(masked.metrics["image_auroc"])
    capfd.readouterr()


def test_a_bad_region_file_is_one_line_error(tiny_model: Path, tmp_path: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_tiny_mvtec(data, n_good=1, per_type=1, empty_mask=False)
    bad = tmp_path / "roi.yaml"
    bad.write_text("exclude: [[[0, 0], [2, 0], [0, 1]]]\n")
    for roi, needle in ((bad, "exclude[0] has points outside 0..1"), (tmp_path / "missing.yaml", "missing.yaml")):
        assert main(["evaluate", "--model", str(tiny_model), str(data), "--report", str(tmp_path / "out"),
                     "--device", "cpu", "--roi", str(roi)]) == 2
        err = capfd.readouterr().err.strip()
        assert err.startswith("linewatch evaluate:") and needle in err and "\n" not in err
