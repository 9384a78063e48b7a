"""Where a tiled model's good parts score high, and what scoring each cell by one tile only would change.

For one half of a set (``benchmarks/splits``): every image's tiles go through the model (its own ``predict`` on
the cut tiles). Each tile's map is split into bands of ``BAND`` model-map columns/rows: the tile's edges that
lie inside the part (seams, where a neighbouring tile sees the same pixels from its interior), the part's two
ends (the first tile's outer edge and the last's), the top and bottom of the image, and the interior. For the
``TOP_IMAGES`` highest-scoring good images, the share of their worst tile's ``TOP_CELLS`` top cells in each
band, beside each band's share of the area.

Then two image scores on the same tile maps: the product's (the worst tile's own score: every cell of every
tile counts) and *owner* scoring: each cell of the part is judged only by the tile whose centre is nearest to
it along the long axis (so no cell is judged from within ``overlap / 2`` of a seam), the score the max of the
owned cells. Image AUROC and recall at 1% / 0.1% false alarms for both.

    cd benchmarks && PYTHONPATH=. ../.venv/bin/python tiling_seams.py --set bsdata --half dev \
        --model ../runs/recipes/bsdata/tiled.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tiling_accuracy import SHARED

import common
from linewatch.common.images import load_rgb
from linewatch.detector.evaluation.metrics import auroc, recall_at_false_alarm_rate
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.model.tiling import cut_tiles, part_map_boxes

BAND = 2  # cells of the map shown
TOP_IMAGES = 10
TOP_CELLS = 5


def owner_masks(height: int, width: int, size: int, tiling: str) -> list[np.ndarray]:
    """Per tile, an (S, S) mask of the model-scale pixels it owns: those nearer its centre than any other's."""
    boxes = part_map_boxes(height, width, size, tiling)
    along_width = width >= height
    starts = np.array([b.left if along_width else b.top for b in boxes], float)
    centres = starts + size / 2
    masks = []
    for start in starts:
        position = start + np.arange(size) + 0.5
        nearest = np.argmin(np.abs(position[:, None] - centres[None, :]), axis=1)
        owned = nearest == int(np.flatnonzero(starts == start)[0])
        line = np.broadcast_to(owned[None, :] if along_width else owned[:, None], (size, size))
        masks.append(np.asarray(line, np.float32))
    return masks


def bands(n_tiles: int, index: int, cells: int, along_width: bool) -> np.ndarray:
    """Band label per cell of tile ``index``: 0 interior, 1 seam, 2 part end, 3 image top/bottom (or sides)."""
    label = np.zeros((cells, cells), np.int8)
    across = np.zeros((cells, cells), bool)
    across[:BAND, :] = across[-BAND:, :] = True
    if not along_width:
        across = across.T
    first = np.zeros((cells, cells), bool)
    last = np.zeros((cells, cells), bool)
    first[:, :BAND], last[:, -BAND:] = True, True
    if not along_width:
        first, last = first.T, last.T
    label[first] = 2 if index == 0 else 1
    label[last] = 2 if index == n_tiles - 1 else 1
    label[across] = 3
    return label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", default="bsdata")
    parser.add_argument("--half", choices=("dev", "test"), required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AnomalyModel.load(args.model, "cpu")
    tiling, size = model.metadata.tiling, model.image_size
    cells = int(model.map_cells[0])
    cell_px = size // cells
    rels = json.loads((common.SPLITS / f"{args.set}.json").read_text())[args.half]
    product, owner, labels, worst = [], [], [], []
    for rel in rels:
        image = load_rgb(SHARED / args.set / args.set / rel)
        h, w = image.shape[:2]
        tiles = model.predict(cut_tiles(image, tiling))
        masks = owner_masks(h, w, size, tiling)
        product.append(float(tiles.image_scores.max()))
        owner.append(float(max((m * mask).max() for m, mask in zip(tiles.maps, masks, strict=True))))
        labels.append(Path(rel).parent.name != "good")
        index = int(np.argmax(tiles.image_scores))
        cell_map = tiles.maps[index].reshape(cells, cell_px, cells, cell_px).mean(axis=(1, 3))
        worst.append((product[-1], labels[-1], bands(len(tiles.image_scores), index, cells, w >= h), cell_map))
    y = np.array(labels)
    goods = sorted((s, b, m) for s, lab, b, m in ((s, lab, b, m) for s, lab, b, m in worst) if not lab)[-TOP_IMAGES:]
    shares = np.zeros(4)
    for _, band, cell_map in goods:
        top = np.argsort(cell_map.ravel())[::-1][:TOP_CELLS]
        shares += np.bincount(band.ravel()[top], minlength=4) / TOP_CELLS
    area = np.bincount(bands(3, 1, cells, True).ravel(), minlength=4) / cells**2
    result = {"machine": common.machine(), "set": args.set, "half": args.half, "model": str(args.model),
              "bands": ["interior", "seam", "part end", "image top/bottom"],
              "top_cell_share_worst_good": [round(float(v), 3) for v in shares / len(goods)],
              "area_share_middle_tile": [round(float(v), 3) for v in area]}
    for name, scores in (("product", product), ("owner", owner)):
        s = np.array(scores)
        result[name] = {"image_auroc": round(auroc(s, y), 4),
                        "recall_at_1pct": round(recall_at_false_alarm_rate(s, y, 0.01), 4),
                        "recall_at_0.1pct": round(recall_at_false_alarm_rate(s, y, 0.001), 4)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
