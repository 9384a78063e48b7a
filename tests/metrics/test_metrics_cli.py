"""`linewatch evaluate` end to end: a real (tiny) trained STFPM checkpoint on a rendered MVTec folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mvtec_fixture import write_tiny_mvtec

from linewatch.deploy.cli import main
from linewatch.errors import DataError, ModelError


def test_evaluate_command_writes_metrics_and_report(tiny_model: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.detector.model.inference import AnomalyModel

    write_tiny_mvtec(tmp_path / "data", size=96, n_good=6, per_type=3, crop=(80, 96))
    rc = main(["evaluate", "--model", str(tiny_model), str(tmp_path / "data"), "--report", str(tmp_path / "out"),
               "--device", "cpu", "--batch-size", "5", "--threads", "2"])
    assert rc == 0
    assert "image AUROC" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "image_f1_optimal", "image_f1_optimal_threshold",
                "per_type", "counts", "settings", "model_version"):
        assert key in metrics
    assert metrics["model_version"] == AnomalyModel.load(tiny_model, device="cpu").model_version
    assert metrics["counts"]["images"] == 16 and metrics["counts"]["defective_empty_mask"] == 1
    assert metrics["settings"]["model"]["image_size"] == 64
    # Drawn synthetic defects are strong: even a 1-epoch student localises them well (seen: pixel .996).
    assert metrics["pixel_auroc"] > 0.9 and metrics["aupro"] > 0.8
    assert metrics["exactness"]["pixel_auroc_max_binning_error"] < 1e-3
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_evaluate_command_bad_inputs_give_one_line_errors(tiny_model: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_tiny_mvtec(data, n_good=1, per_type=1, empty_mask=False)
    corrupt = tmp_path / "corrupt.lw"
    corrupt.write_bytes(tiny_model.read_bytes()[:500])
    cases = [
        (["--model", str(tmp_path / "missing.lw"), str(data)], "missing.lw", ModelError.exit_code),
        (["--model", str(corrupt), str(data)], "corrupt.lw", ModelError.exit_code),
        (["--model", str(tiny_model), str(data / "train")], "test/", DataError.exit_code),
    ]
    for args, needle, status in cases:
        assert main(["evaluate", *args, "--report", str(tmp_path / "out"), "--device", "cpu"]) == status
        err = capsys.readouterr().err.strip()
        assert err.startswith("linewatch evaluate: error:") and needle in err and "\n" not in err


@pytest.mark.realdata
def test_real_magnetic_tile_subset_with_empty_masks(tiny_model: Path, magnetic_tile: Path, tmp_path: Path) -> None:
    """Real images (grayscale, many sizes) and the 4 empty ``uneven`` masks; binning checked against exact."""
    import numpy as np

    from linewatch.common.images import load_mask
    from linewatch.detector.evaluation.evaluate import run_evaluation
    from linewatch.detector.evaluation.metrics import auroc
    from linewatch.detector.model.inference import AnomalyModel

    subset = tmp_path / "mt"
    picks = {"good": ["000", "001", "002", "003", "004", "005", "006", "007"],
             "uneven": ["050", "053", "066", "067", "000"]}
    for kind in ("blowhole", "break", "crack", "fray"):
        picks[kind] = ["000", "001"]
    for kind, names in picks.items():
        (subset / "test" / kind).mkdir(parents=True)
        if kind != "good":
            (subset / "ground_truth" / kind).mkdir(parents=True)
        for name in names:
            (subset / "test" / kind / f"{name}.png").symlink_to(magnetic_tile / "test" / kind / f"{name}.png")
            if kind != "good":
                (subset / "ground_truth" / kind / f"{name}_mask.png").symlink_to(
                    magnetic_tile / "ground_truth" / kind / f"{name}_mask.png")
    model = AnomalyModel.load(tiny_model, device="cpu")
    result = run_evaluation(model, subset, tmp_path / "out", batch_size=8)
    metrics = result.metrics
    assert metrics["counts"]["images"] == 21 and metrics["counts"]["defective_empty_mask"] == 4
    assert set(metrics["per_type"]) == {"blowhole", "break", "crack", "fray", "uneven"}
    assert metrics["counts"]["pixels_good"] + metrics["counts"]["pixels_defective"] == sum(h * w for h, w in
                                                                                           result.shapes)
    flat = np.concatenate([result.to_image(m, s).ravel() for m, s in zip(result.maps, result.shapes, strict=True)])
    truth = np.concatenate([load_mask(r, s).ravel() for r, s in zip(result.records, result.shapes, strict=True)])
    exact = auroc(flat, truth)
    assert abs(metrics["pixel_auroc"] - exact) <= metrics["exactness"]["pixel_auroc_max_binning_error"] + 1e-12
    assert metrics["exactness"]["pixel_auroc_max_binning_error"] < 1e-3
