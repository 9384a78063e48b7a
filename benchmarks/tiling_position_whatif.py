"""What-if for tiled models (tiling_accuracy.md): each tile position's score standardised by its own mean and
spread on the training's held-out good images, the part score the max of those; against the max tile score.

    PYTHONPATH=. python benchmarks/tiling_position_whatif.py --halves runs/tiling --model tiled=tiled.safetensors
(``--halves``: the folder where ``tiling_accuracy.py`` wrote the ``bsdata-dev`` / ``bsdata-test`` links.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common import datasets_dir
from linewatch.common.images import ImageRecord, list_test, list_train_good, load_rgb
from linewatch.detector.evaluation.metrics import auroc, recall_at_false_alarm_rate
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.tiling import cut_tiles
from linewatch.detector.model.training.train import TrainConfig, held_out_indices

SHARED = datasets_dir()  # LINEWATCH_DATASETS, else ../shared/datasets beside the checkout


def tile_scores(model: AnomalyModel, records: Sequence[ImageRecord]) -> np.ndarray:
    """(images, tiles) scores, each tile scored alone (a square tile is the untiled path)."""
    return np.array([model.predict(cut_tiles(load_rgb(r.path), model.metadata.tiling)).image_scores
                     for r in records])


def figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"auroc": round(auroc(scores, labels), 4),
            "recall_at_1pct": round(recall_at_false_alarm_rate(scores, labels, 0.01), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="bsdata")
    parser.add_argument("--halves", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, help="name=checkpoint")
    args = parser.parse_args()
    torch.set_num_threads(2)
    train = list_train_good(SHARED / args.set / args.set)
    held = [train[int(i)] for i in held_out_indices(len(train), TrainConfig())]  # the runs' seed and fraction
    for spec in args.model:
        name, path = spec.split("=", 1)
        model = AnomalyModel.load(path, "cpu")
        reference = tile_scores(model, held)
        mean, std = reference.mean(0), reference.std(0)
        out: dict[str, object] = {"model": name, "mean_by_position": mean.round(4).tolist()}
        for half in ("dev", "test"):
            records = list_test(args.halves / f"{args.set}-{half}")
            labels = np.array([r.label == "defect" for r in records])
            scores = tile_scores(model, records)
            out[half] = {"max_tile": figures(scores.max(1), labels),
                         "max_standardised": figures(((scores - mean) / std).max(1), labels),
                         "worst_good_tile_position_counts": np.bincount(scores[~labels].argmax(1),
                                                                        minlength=scores.shape[1]).tolist()}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
