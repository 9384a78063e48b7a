"""bf16 against fp32, per recipe and shared set: does a bf16 run keep the ranking, and which thresholds keep
its verdicts, the fp32 ones or its own?

Per checkpoint of ``RECIPE_RUNS`` (benchmarks/recipe_table.py, default runs/recipes): the bf16 calibration the
product computes (``precisions.calibrate_at`` on the run's own held-out good images, what ``linewatch train``
stores on a CPU with native bf16); then the set's test half scored by OpenVINO fp32 and OpenVINO bf16. Reported:
image AUROC of each, Spearman of the two score lists, the bf16 threshold's shift from the fp32 one, and the
false-alarm rate (good test images) and recall (defective ones) of (a) fp32 scores at the fp32 threshold,
(b) bf16 scores at the fp32 threshold (``--precision bf16`` before bf16 thresholds existed), (c) bf16 scores at
the bf16 threshold (what ``--backend auto`` runs now).

    RECIPE_RUNS=runs/recipes-seed1 PYTHONPATH=benchmarks .venv/bin/python benchmarks/bf16_thresholds.py
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
from recipe_table import RUNS, SETS
from scipy.stats import spearmanr
from tiling_accuracy import SHARED, half_folder

import common
from linewatch.common.images import ImageRecord, list_test, list_train_good, load_rgb
from linewatch.detector.evaluation.metrics import auroc
from linewatch.detector.model.backends import load_model
from linewatch.detector.model.checkpoint import load_checkpoint
from linewatch.detector.model.metadata import ModelMetadata
from linewatch.detector.model.training.precisions import calibrate_at, held_out_images
from linewatch.detector.model.training.recalibrate import score_images
from linewatch.detector.model.training.train import TrainConfig


def verdicts(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """False-alarm rate on the good images and recall on the defective ones at ``threshold``."""
    flagged = scores >= threshold
    return {"false_alarm_rate": float(flagged[~labels].mean()), "recall": float(flagged[labels].mean())}


def compare(set_name: str, recipe: str) -> dict[str, Any]:
    path = RUNS / set_name / f"{recipe}.safetensors"
    metadata = ModelMetadata.from_dict(load_checkpoint(path)[1])
    training = metadata.training["config"]
    records: list[ImageRecord] = list_train_good(SHARED / set_name / set_name)
    config = TrainConfig(seed=training["seed"], val_fraction=training["val_fraction"])
    bf16_calibration = calibrate_at(path, "bf16", held_out_images(records, config))
    test = list_test(half_folder(set_name, "test", RUNS / "halves"))
    images = [load_rgb(r.path) for r in test]
    labels = np.array([r.label != "good" for r in test])
    fp32_scores = score_images(load_model(path, "openvino", "cpu", precision="fp32"), images)[0]
    bf16_scores = score_images(load_model(path, "openvino", "cpu", precision="bf16"), images)[0]
    fp32_t, bf16_t = metadata.calibration.image_threshold, bf16_calibration.image_threshold
    return {"set": set_name, "recipe": recipe, "good": int((~labels).sum()), "defective": int(labels.sum()),
            "auroc_fp32": auroc(fp32_scores, labels), "auroc_bf16": auroc(bf16_scores, labels),
            "spearman": float(spearmanr(fp32_scores, bf16_scores).statistic),
            "median_score_shift": float(np.median(np.abs(bf16_scores / fp32_scores - 1))),
            "threshold_shift": bf16_t / fp32_t - 1,
            "fp32_at_fp32_threshold": verdicts(fp32_scores, labels, fp32_t),
            "bf16_at_fp32_threshold": verdicts(bf16_scores, labels, fp32_t),
            "bf16_at_bf16_threshold": verdicts(bf16_scores, labels, bf16_t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join(SETS))
    args = parser.parse_args()
    rows = [compare(set_name, path.stem) for set_name in args.sets.split(",")
            for path in sorted((RUNS / set_name).glob("*.safetensors"))]
    print(json.dumps({"machine": common.machine(), "runs": str(RUNS), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
