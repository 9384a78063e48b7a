"""``predict`` of a tiled model: each frame's tiles through the model's own ``_run``, merged back per frame.

Every runtime (torch, ONNX Runtime, OpenVINO) differs only in ``_run``, so a tiled model goes the same path
on all of them: the tiles of a whole micro-batch are one ``_run`` call (one batch of T >= N model inputs),
each tile judged against its frame's threshold. Per frame, the image score is the worst tile's; since the
calibrated head's normalisation is monotonic in the score for a given threshold, the frame's normalised
score is its tiles' maximum too, and it is anomalous when any tile is. The map is the stitched part map
(``detector/model/tiling.py``), batch-padded to one array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from linewatch.detector.model.tiling import pad_maps, per_image, stitch_part_map, tile_boxes, tile_cell_masks

# (tiles, thresholds (T,) on the device, masks (T, S, S) or None) -> [scores, normalised, anomalous, maps] per tile
TileRunner = Callable[[Any, torch.Tensor, np.ndarray | None], list[np.ndarray]]


def _frame_shape(frame: Any) -> tuple[int, int]:
    return int(frame.shape[0]), int(frame.shape[1])


def cut_batch(frames: np.ndarray | Sequence[np.ndarray] | torch.Tensor, tiling: str) -> tuple[Any, list[int]]:
    """The tiles of every frame in one batch of the frames' own kind, and the tile count per frame.

    A uint8 (N, H, W, 3) array or tensor gives tiles of one size: they stay one array / tensor (the tensor
    on its device: the GPU decode path cuts on the GPU). A list of frames gives a list of tiles.
    """
    tiles: list[Any] = []
    counts: list[int] = []
    for i in range(len(frames)):
        frame = frames[i]
        boxes = tile_boxes(*_frame_shape(frame), tiling)
        tiles += [frame[b.top:b.top + b.height, b.left:b.left + b.width] for b in boxes]
        counts.append(len(boxes))
    if isinstance(frames, torch.Tensor):
        return torch.stack(tiles).contiguous(), counts
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        return np.ascontiguousarray(np.stack(tiles)), counts
    return [np.ascontiguousarray(t) for t in tiles], counts


def run_tiled(run: TileRunner, frames: Any, thresholds: np.ndarray, map_size: int, tiling: str,
              device: torch.device, masks: np.ndarray | None = None) -> list[np.ndarray]:
    """[scores (N,), normalised (N,), anomalous (N,), part maps (N, Hm, Wm)] of N frames, their tiles run
    as one batch by ``run`` (the model's ``_run``); ``masks`` (N, S, S) region masks of the squashed frames."""
    tiles, counts = cut_batch(frames, tiling)
    shapes = [_frame_shape(frames[i]) for i in range(len(frames))]
    per_tile = torch.from_numpy(np.repeat(np.asarray(thresholds, np.float32), counts)).to(device)
    tile_masks = None if masks is None else np.ascontiguousarray(np.stack(
        [t for mask, (h, w) in zip(masks, shapes, strict=True) for t in tile_cell_masks(mask, h, w, map_size, tiling)]))
    scores, normalised, anomalous, maps = run(tiles, per_tile, tile_masks)
    part_maps = [stitch_part_map(list(m), h, w, map_size, tiling)
                 for m, (h, w) in zip(per_image(np.asarray(maps, np.float32), counts), shapes, strict=True)]
    return [np.array([s.max() for s in per_image(np.asarray(scores), counts)], np.float32),
            np.array([s.max() for s in per_image(np.asarray(normalised), counts)], np.float32),
            np.array([a.any() for a in per_image(np.asarray(anomalous), counts)], bool),
            pad_maps(part_maps)]
