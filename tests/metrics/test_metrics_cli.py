"""`linewatch evaluate` end to end: a real (tiny) trained STFPM checkpoint on a rendered MVTec folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mvtec_fixture import write_tiny_mvtec

from deploy.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from detector.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("model") / "tiny.lw")


def test_evaluate_command_writes_metrics_and_report(trained: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from detector.inference import AnomalyModel

    write_tiny_mvtec(tmp_path / "data", size=96, n_good=6, per_type=3, crop=(80, 96))
    rc = main(["evaluate", "--model", str(trained), str(tmp_path / "data"), "--report", str(tmp_path / "out"),
               "--device", "cpu", "--batch-size", "5", "--threads", "2"])
    assert rc == 0
    assert "image AUROC" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1", "image_f1_optimal", "image_f1_optimal_threshold",
                "per_type", "counts", "settings", "model_version"):
        assert key in metrics
    assert metrics["model_version"] == AnomalyModel.load(trained, device="cpu").model_version
    assert metrics["counts"]["images"] == 16 and metrics["counts"]["defective_empty_mask"] == 1
    assert metrics["settings"]["model"]["image_size"] == 64
    # Drawn synthetic defects are strong: even a 2-epoch student localises them well (seen: pixel .996).
    assert metrics["pixel_auroc"] > 0.9 and metrics["aupro"] > 0.8
    assert metrics["exactness"]["pixel_auroc_max_binning_error"] < 1e-3
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000


def test_evaluate_command_bad_inputs_give_one_line_errors(trained: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    write_tiny_mvtec(data, n_good=1, per_type=1, empty_mask=False)
    corrupt = tmp_path / "corrupt.lw"
    corrupt.write_bytes(trained.read_bytes()[:500])
    cases = [
        (["--model", str(tmp_path / "missing.lw"), str(data)], "missing.lw"),
        (["--model", str(corrupt), str(data)], "corrupt.lw"),
        (["--model", str(trained), str(data / "train")], "test/"),
    ]
    for args, needle in cases:
        assert main(["evaluate", *args, "--report", str(tmp_path / "out"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("linewatch evaluate:") and needle in err and "\n" not in err
