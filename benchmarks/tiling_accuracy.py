"""Tiled against untiled checkpoints on one half of a shared set (the halves of ``benchmarks/splits``).

Each model is run by ``detector.evaluate`` (the product's own metrics, maps at image resolution) on a folder
of links holding one half of the set's test images, so the figures are those ``linewatch evaluate`` reports.
The border effect: for the highest-scoring good images of the half, the share of their top-scoring map cells
that lie within ``BORDER`` cells of the edge of the map the model judged (a tiled model: its worst tile's own
map, the tile that set the image score; untiled: the image's map), next to that border's share of the map's
area (what a border-blind model would give). Tiled models also report the share on the stitched part map
within ``BORDER`` cells of any tile edge. ``without_outer_border``: image AUROC and recall when the image
score is the maximum of the map shown without its outer ``BORDER`` cells (the part's edge; a what-if on the
same maps, not what the model does).

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/tiling_accuracy.py --set bsdata --half dev \
        --model fine=runs/fine.safetensors --model tiled=runs/tiled.safetensors --out runs/tiling-dev
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from common import datasets_dir
from linewatch.common.images import load_rgb
from linewatch.detector.evaluation.evaluate import run_evaluation
from linewatch.detector.evaluation.metrics import auroc, recall_at_false_alarm_rate
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.tiling import crop_part_map, cut_tiles, part_map_boxes

ROOT = Path(__file__).resolve().parent
SHARED = datasets_dir()  # LINEWATCH_DATASETS, else ../shared/datasets beside the checkout
TOP_IMAGES = 10  # highest-scoring good images looked at
TOP_CELLS = 5  # their top-scoring cells
BORDER = 2  # cells


def half_folder(set_name: str, half: str, work: Path) -> Path:
    """An MVTec-layout folder of links to one half's test images and their masks."""
    source = SHARED / set_name / set_name
    folder = work / f"{set_name}-{half}"
    for rel in json.loads((ROOT / "splits" / f"{set_name}.json").read_text())[half]:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source / rel)
        kind, stem = Path(rel).parent.name, Path(rel).stem
        mask = source / "ground_truth" / kind / f"{stem}_mask.png"
        if kind != "good" and mask.is_file():
            (folder / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            link = folder / "ground_truth" / kind / mask.name
            if not link.exists():
                link.symlink_to(mask)
    return folder


def cell_map(anomaly_map: np.ndarray, cell_px: int) -> np.ndarray:
    """The map averaged over its feature cells (``cell_px`` model pixels a side)."""
    h, w = anomaly_map.shape
    return np.asarray(cv2.resize(anomaly_map, (w // cell_px, h // cell_px), interpolation=cv2.INTER_AREA))


def border_mask(shape: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """Cells within ``BORDER`` cells of the edge of any box (top, left, height, width; in cells)."""
    inside = np.zeros(shape, bool)
    for top, left, height, width in boxes:
        inside[top:top + height, left:left + width] = True
        inside[top + BORDER:top + height - BORDER, left + BORDER:left + width - BORDER] = False
    return inside


def top_cells_share(cells: np.ndarray, border: np.ndarray) -> float:
    """Share of the ``TOP_CELLS`` highest cells that lie in ``border``."""
    top = np.argsort(cells.ravel())[::-1][:TOP_CELLS]
    return float(border.ravel()[top].mean())


def border_effect(model: AnomalyModel, result: Any) -> dict[str, Any]:
    """The border figures of the module docstring on the evaluation's good images."""
    cells_h = int(model.map_cells[0])
    cell_px = model.image_size // cells_h
    good = np.flatnonzero(~result.labels)
    worst = good[np.argsort(result.image_scores[good])[::-1][:TOP_IMAGES]]
    judged, stitched = [], []
    own_border = border_mask((cells_h, cells_h), [(0, 0, cells_h, cells_h)])
    for i in worst:
        image = load_rgb(result.records[i].path)
        h, w = image.shape[:2]
        if model.metadata.tiling == "none":
            judged.append(top_cells_share(cell_map(result.maps[i], cell_px), own_border))
            continue
        tiles = model.predict(cut_tiles(image, model.metadata.tiling))
        worst_tile = int(np.argmax(tiles.image_scores))
        judged.append(top_cells_share(cell_map(tiles.maps[worst_tile], cell_px), own_border))
        part = cell_map(crop_part_map(result.maps[i], h, w, model.image_size, model.metadata.tiling), cell_px)
        boxes = [(b.top // cell_px, b.left // cell_px, b.height // cell_px, b.width // cell_px)
                 for b in part_map_boxes(h, w, model.image_size, model.metadata.tiling)]
        stitched.append(top_cells_share(part, border_mask(part.shape, boxes)))
    out: dict[str, Any] = {"images": len(worst), "top_cells": TOP_CELLS, "border_cells": BORDER,
                           "share_in_border": round(float(np.mean(judged)), 3),
                           "border_area_share": round(float(own_border.mean()), 3)}
    if stitched:
        out["stitched_share_near_any_tile_edge"] = round(float(np.mean(stitched)), 3)
    return out


def without_outer_border(model: AnomalyModel, result: Any) -> dict[str, float]:
    """Image figures with the score read from the map shown minus its outer ``BORDER`` cells."""
    cell_px = model.image_size // int(model.map_cells[0])
    edge = BORDER * cell_px
    scores = []
    for i, (h, w) in enumerate(result.shapes):
        shown = (result.maps[i] if model.metadata.tiling == "none"
                 else crop_part_map(result.maps[i], h, w, model.image_size, model.metadata.tiling))
        scores.append(float(shown[edge:-edge, edge:-edge].max()))
    values, labels = np.asarray(scores), result.labels
    return {"image_auroc": round(auroc(values, labels), 4),
            "recall_at_1pct": round(recall_at_false_alarm_rate(values, labels, 0.01), 4),
            "recall_at_0.1pct": round(recall_at_false_alarm_rate(values, labels, 0.001), 4)}


def row(name: str, path: Path, folder: Path, out: Path) -> dict[str, Any]:
    model = AnomalyModel.load(path, "cpu")
    started = time.perf_counter()
    result = run_evaluation(model, folder, out / name, batch_size=16, report=False)
    m = result.metrics
    training = model.metadata.training
    return {"model": name, "recipe": training.get("recipe"), "tiling": model.metadata.tiling,
            "image_auroc": m["image_auroc"], "pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"],
            "recall_at_1pct": m["image_recall_at_fpr"]["0.01"], "recall_at_0.1pct": m["image_recall_at_fpr"]["0.001"],
            "best_epoch": training.get("best_epoch"), "epochs_run": training.get("epochs_run"),
            "n_train_samples": training.get("n_train"), "evaluate_s": round(time.perf_counter() - started, 1),
            "border": border_effect(model, result), "without_outer_border": without_outer_border(model, result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="bsdata")
    parser.add_argument("--half", choices=("dev", "test"), required=True)
    parser.add_argument("--model", action="append", required=True, help="name=checkpoint")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folder = half_folder(args.set, args.half, args.out)
    rows = []
    for spec in args.model:
        name, path = spec.split("=", 1)
        rows.append(row(name, Path(path), folder, args.out))
        print(json.dumps(rows[-1]), flush=True)
    (args.out / f"{args.set}-{args.half}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
