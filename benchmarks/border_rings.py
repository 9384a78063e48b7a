"""What-if: does dividing each map cell by how high good parts read at its distance from the edge help?

The border effect of a recipe: the highest-scoring good images light up at the map's edge (the network's zero
padding, a part's edge that moves). Per checkpoint of ``runs/recipes`` (``recipe_table.py``): the maps of the
good images the training held out give, per ring of cells at distance 0, 1, ... ``RINGS - 1`` from the map's
edge and for the interior, the 99th percentile of the good values; the *ring-normalised* map divides each cell
by its ring's value over the interior's. Image score = max of the map, as the product's (top-1, map shown)
rule; for recipes that score other taps than they show, the what-if scores the map shown. On one half: image
AUROC and recall at 1% false alarms for the product's scores and for both maps' maxima, and the border share
(of the 10 worst good images' top 5 cells, within 2 cells of the edge).

    cd benchmarks && PYTHONPATH=. ../.venv/bin/python border_rings.py --set bsdata --recipe fine --half dev
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from recipe_table import checkpoint
from tiling_accuracy import SHARED

import common
from linewatch.common.images import list_train_good, load_rgb
from linewatch.detector.evaluation.metrics import auroc, recall_at_false_alarm_rate
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.tiling import frame_map
from linewatch.detector.model.training.train import TrainConfig, held_out_indices

RINGS = 3
BORDER = 2


def cell_maps(model: AnomalyModel, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Product scores and the maps shown averaged over feature cells (one value per cell)."""
    cell_px = model.image_size // int(model.map_cells[0])
    scores, maps = [], []
    for start in range(0, len(images), 8):
        batch = images[start:start + 8]
        prediction = model.predict(batch)
        scores.append(prediction.image_scores)
        for m, image in zip(prediction.maps, batch, strict=True):
            shown = frame_map(m, image.shape[0], image.shape[1], model.image_size, model.metadata.tiling)
            h, w = shown.shape[0] // cell_px, shown.shape[1] // cell_px
            maps.append(shown[:h * cell_px, :w * cell_px].reshape(h, cell_px, w, cell_px).mean(axis=(1, 3)))
    return np.concatenate(scores), maps


def ring_of(shape: tuple[int, int]) -> np.ndarray:
    """Per cell: its distance from the map's edge, capped at ``RINGS`` (the interior)."""
    rows = np.minimum(np.arange(shape[0]), np.arange(shape[0])[::-1])
    cols = np.minimum(np.arange(shape[1]), np.arange(shape[1])[::-1])
    return np.minimum(np.minimum(rows[:, None], cols[None, :]), RINGS)


def ring_scales(goods: list[np.ndarray]) -> np.ndarray:
    """Per ring, the 99th percentile of good cells over the interior's."""
    values = [np.concatenate([m[ring_of(m.shape) == r] for m in goods]) for r in range(RINGS + 1)]
    high = np.array([np.percentile(v, 99) for v in values])
    return high / high[RINGS]


def border_share(scores: np.ndarray, maps: list[np.ndarray], labels: np.ndarray) -> float:
    good = np.flatnonzero(~labels)
    worst = good[np.argsort(scores[good])[::-1][:10]]
    shares = []
    for i in worst:
        top = np.argsort(maps[i].ravel())[::-1][:5]
        shares.append(float((ring_of(maps[i].shape).ravel()[top] < BORDER).mean()))
    return round(float(np.mean(shares)), 3)


def figures(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"image_auroc": round(auroc(scores, labels), 4),
            "recall_at_1pct": round(recall_at_false_alarm_rate(scores, labels, 0.01), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--half", choices=("dev", "test"), default="dev")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = checkpoint(args.set, args.recipe)
    model = AnomalyModel.load(path, "cpu")
    config = model.metadata.training["config"]
    records = list_train_good(common.dataset(args.set))
    held_out = held_out_indices(len(records), TrainConfig(seed=config["seed"], val_fraction=config["val_fraction"]))
    _, good_maps = cell_maps(model, [load_rgb(records[int(i)].path) for i in held_out])
    scales = ring_scales(good_maps)
    rels = json.loads((common.SPLITS / f"{args.set}.json").read_text())[args.half]
    labels = np.array([Path(rel).parent.name != "good" for rel in rels])
    scores, maps = cell_maps(model, [load_rgb(SHARED / args.set / args.set / rel) for rel in rels])
    normalised = [m / scales[ring_of(m.shape)] for m in maps]
    result = {"machine": common.machine(), "set": args.set, "recipe": args.recipe, "half": args.half,
              "ring_scales": [round(float(s), 3) for s in scales],
              "product": {**figures(scores, labels), "border_share": border_share(scores, maps, labels)},
              "map_max": figures(np.array([m.max() for m in maps]), labels),
              "ring_normalised": {**figures(np.array([m.max() for m in normalised]), labels),
                                  "border_share": border_share(np.array([m.max() for m in normalised]), normalised,
                                                               labels)}}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
