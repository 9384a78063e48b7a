"""Long parts as overlapping square tiles: the one copy of the tile geometry and of the stitching.

Squashing a 1130x460 part into a 192x192 input shrinks its long axis 5.9x, so a thin defect across it
becomes 1-2 px. With ``tiling="long-axis"`` an image whose long side is at least ``MIN_ASPECT`` times its
short side is cut into square tiles of side = the short side, evenly spaced along the long axis, the first
and last flush with the ends, as few as give every neighbouring pair at least ``MIN_OVERLAP`` of a tile in
common. Each tile goes through the model as a frame of its own; an image near square is one tile (the
whole image, squashed: the untiled path).

Two coordinate systems: a :class:`Tile` box is in image pixels; the *part map* is the stitched anomaly map
of the whole part at model scale (the short side = the model input size S, so a tile is exactly S x S
there). ``AnomalyModel.predict`` returns part maps for tiled models; :func:`part_map_to_image` maps one back
to image pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

TILINGS = ("none", "long-axis")
MIN_ASPECT = 1.5  # below this the squash costs at most a 1.5x shrink of one axis: one tile, as before
MIN_OVERLAP = 0.25  # a defect cut by one tile's edge lies at least a quarter tile inside its neighbour


@dataclass(frozen=True)
class Tile:
    """A box of an image in pixels: rows top..top+height, columns left..left+width."""

    top: int
    left: int
    height: int
    width: int

    def cut(self, image: np.ndarray) -> np.ndarray:
        """This box of an (H, W, ...) image (a view)."""
        return image[self.top:self.top + self.height, self.left:self.left + self.width]


def is_long(height: int, width: int, min_aspect: float = MIN_ASPECT) -> bool:
    """Whether an (H, W) image is long enough to tile."""
    return max(height, width) >= min_aspect * min(height, width)


def tile_count(long_side: int, short_side: int, min_overlap: float = MIN_OVERLAP) -> int:
    """The fewest square tiles of side ``short_side`` covering ``long_side`` with at least ``min_overlap``.

    n evenly spaced tiles step (L - s) / (n - 1); an overlap of at least ``min_overlap`` x s needs a step of
    at most (1 - min_overlap) x s.
    """
    if long_side <= short_side:
        return 1
    return 1 + math.ceil((long_side - short_side) / ((1.0 - min_overlap) * short_side) - 1e-9)


def _offsets(long_side: int, side: int, count: int) -> list[int]:
    """``count`` tile starts along an axis: evenly spaced, the first at 0 and the last flush with the end."""
    if count == 1:
        return [0]
    step = (long_side - side) / (count - 1)
    return [round(i * step) for i in range(count)]


def tile_boxes(height: int, width: int, tiling: str = "long-axis", min_aspect: float = MIN_ASPECT,
               min_overlap: float = MIN_OVERLAP) -> list[Tile]:
    """The tiles of an (H, W) image, in order along the long axis; one box of the whole image when untiled."""
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}, got {tiling!r}")
    if tiling == "none" or not is_long(height, width, min_aspect):
        return [Tile(0, 0, height, width)]
    side = min(height, width)
    long_side = max(height, width)
    starts = _offsets(long_side, side, tile_count(long_side, side, min_overlap))
    if width >= height:
        return [Tile(0, start, side, side) for start in starts]
    return [Tile(start, 0, side, side) for start in starts]


def cut_tiles(image: np.ndarray, tiling: str = "long-axis") -> list[np.ndarray]:
    """The tiles of one (H, W, C) image (contiguous copies, ready to batch)."""
    return [np.ascontiguousarray(t.cut(image)) for t in tile_boxes(image.shape[0], image.shape[1], tiling)]


def part_map_shape(height: int, width: int, map_size: int, tiling: str = "long-axis") -> tuple[int, int]:
    """Shape of the part map of an (H, W) image: (S, S) when one tile, else the part at S per short side."""
    if len(tile_boxes(height, width, tiling)) == 1:
        return map_size, map_size
    scale = map_size / min(height, width)
    return round(height * scale), round(width * scale)


def part_map_boxes(height: int, width: int, map_size: int, tiling: str = "long-axis") -> list[Tile]:
    """The tiles of an (H, W) image in part-map coordinates (each exactly S x S)."""
    boxes = tile_boxes(height, width, tiling)
    if len(boxes) == 1:
        return [Tile(0, 0, map_size, map_size)]
    scale = map_size / min(height, width)
    # round(x - S) == round(x) - S: the last box ends exactly at the part map's edge
    return [Tile(round(b.top * scale), round(b.left * scale), map_size, map_size) for b in boxes]


def stitch(tile_maps: Sequence[np.ndarray], boxes: Sequence[Tile], shape: tuple[int, int]) -> np.ndarray:
    """One (H, W) map from each tile's map resized onto its box, the mean where boxes overlap.

    Mean, not max: a tile's outermost cells see zero padding in the backbone and read higher on good parts
    than its interior (the border effect); in an overlap, a cell near one tile's edge is well inside the
    other, so the mean halves that artefact where max would keep it. A real defect in an overlap is seen by
    both tiles and stays high in the mean. The image score does not depend on this choice (it is the max
    over the tiles' own scores, :func:`image_score`).
    """
    if len(tile_maps) != len(boxes):
        raise ValueError(f"{len(tile_maps)} tile maps for {len(boxes)} boxes")
    total = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    for tile_map, box in zip(tile_maps, boxes, strict=True):
        m = np.asarray(tile_map, np.float32)
        if m.shape != (box.height, box.width):
            m = np.asarray(cv2.resize(m, (box.width, box.height), interpolation=cv2.INTER_LINEAR), np.float32)
        total[box.top:box.top + box.height, box.left:box.left + box.width] += m
        weight[box.top:box.top + box.height, box.left:box.left + box.width] += 1.0
    if not weight.all():
        raise ValueError(f"the boxes do not cover the {shape} map")
    return total / weight


def stitch_to_image(tile_maps: Sequence[np.ndarray], height: int, width: int,
                    tiling: str = "long-axis") -> np.ndarray:
    """The tiles' maps of an (H, W) image stitched in image pixels."""
    return stitch(tile_maps, tile_boxes(height, width, tiling), (height, width))


def stitch_part_map(tile_maps: Sequence[np.ndarray], height: int, width: int, map_size: int,
                    tiling: str = "long-axis") -> np.ndarray:
    """The tiles' (S, S) maps of an (H, W) image stitched into its part map (model scale)."""
    return stitch(tile_maps, part_map_boxes(height, width, map_size, tiling),
                  part_map_shape(height, width, map_size, tiling))


def image_score(tile_scores: Sequence[float] | np.ndarray) -> float:
    """A part's score: its worst tile (a defect anywhere in the part makes the part defective)."""
    return float(np.max(np.asarray(tile_scores)))


def pad_maps(maps: Sequence[np.ndarray]) -> np.ndarray:
    """Part maps of one batch as one (N, Hmax, Wmax) array, each in its top-left corner, zero beyond.

    Frames of one size (one camera) give one shape and no padding; mixed sizes keep one array (the
    ``Prediction`` contract), and :func:`part_map_to_image` crops each back by its image's shape.
    """
    height = max(m.shape[0] for m in maps)
    width = max(m.shape[1] for m in maps)
    out = np.zeros((len(maps), height, width), np.float32)
    for i, m in enumerate(maps):
        out[i, :m.shape[0], :m.shape[1]] = m
    return out


def crop_part_map(part_map: np.ndarray, height: int, width: int, map_size: int,
                  tiling: str = "long-axis") -> np.ndarray:
    """The part map of an (H, W) image without the batch padding of :func:`pad_maps`."""
    map_h, map_w = part_map_shape(height, width, map_size, tiling)
    m = np.asarray(part_map, np.float32)
    if m.shape[0] < map_h or m.shape[1] < map_w:
        raise ValueError(f"a part map of {m.shape} cannot be the {(map_h, map_w)} map of an {(height, width)} image")
    return m[:map_h, :map_w]


def part_map_to_image(part_map: np.ndarray, height: int, width: int, map_size: int,
                      tiling: str = "long-axis") -> np.ndarray:
    """A part map (possibly batch-padded) in the (H, W) pixels of its image (float32)."""
    m = crop_part_map(part_map, height, width, map_size, tiling)
    if m.shape == (height, width):
        return m
    return np.asarray(cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR), np.float32)


def tiles_of_images(images: Sequence[np.ndarray], tiling: str) -> tuple[list[np.ndarray], list[int]]:
    """Every image's tiles, in order, one list for all (one batch), and how many tiles each image gave."""
    tiles: list[np.ndarray] = []
    counts: list[int] = []
    for image in images:
        cut = cut_tiles(image, tiling)
        tiles += cut
        counts.append(len(cut))
    return tiles, counts


def per_image(tile_values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Split values of all tiles (in :func:`tiles_of_images` order) into one block per image."""
    bounds = np.cumsum([0, *counts])
    return [tile_values[bounds[i]:bounds[i + 1]] for i in range(len(counts))]


def merge_tiles(tile_scores: np.ndarray, tile_maps: np.ndarray, shapes: Sequence[tuple[int, int]],
                counts: Sequence[int], map_size: int, tiling: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per image: the max of its tiles' scores and its stitched part map (model scale)."""
    scores = np.array([image_score(s) for s in per_image(np.asarray(tile_scores), counts)], np.float32)
    maps = [stitch_part_map(list(m), h, w, map_size, tiling)
            for m, (h, w) in zip(per_image(np.asarray(tile_maps), counts), shapes, strict=True)]
    return scores, maps


def concat_maps(batches: Sequence[np.ndarray]) -> np.ndarray:
    """``Prediction.maps`` of several calls as one array: a plain concatenation when their maps share a
    shape (untiled models, or frames of one size), else every map padded as :func:`pad_maps` does."""
    if len({b.shape[1:] for b in batches}) <= 1:
        return np.concatenate(batches)
    return pad_maps([m for b in batches for m in b])


def frame_map(anomaly_map: np.ndarray, height: int, width: int, map_size: int, tiling: str) -> np.ndarray:
    """One ``Prediction.maps`` entry as the map of its (H, W) frame: untiled maps as they are, part maps
    without their batch padding (so the map's aspect ratio is the frame's)."""
    if tiling == "none":
        return np.asarray(anomaly_map, np.float32)
    return crop_part_map(anomaly_map, height, width, map_size, tiling)


def tile_cell_masks(mask: np.ndarray, height: int, width: int, map_size: int, tiling: str) -> list[np.ndarray]:
    """A frame's (S, S) region mask (cells of the squashed frame, ``detector/model/roi.py``) as one (S, S) mask
    per tile: back to frame pixels, cut like the frame, area-averaged onto each tile's cells.

    Regions are drawn on whole frames, and callers build their masks for the squashed frame; this keeps
    that interface, at the squashed map's resolution along the long axis (coarser than a tile's cells there).
    """
    boxes = tile_boxes(height, width, tiling)
    if len(boxes) == 1:
        return [np.asarray(mask, np.float32)]
    full = cv2.resize(np.asarray(mask, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return [np.asarray(cv2.resize(np.ascontiguousarray(b.cut(full)), (map_size, map_size),
                                  interpolation=cv2.INTER_AREA), np.float32) for b in boxes]
