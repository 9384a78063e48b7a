"""Tile geometry of long parts and the stitching of tile maps (detector/model/tiling.py): numpy only, no model."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from linewatch.detector.model.tiling import (
    MIN_OVERLAP,
    Tile,
    cut_tiles,
    image_score,
    pad_maps,
    part_map_boxes,
    part_map_shape,
    part_map_to_image,
    stitch_part_map,
    stitch_to_image,
    tile_boxes,
    tile_cell_masks,
    tile_count,
)

pytestmark = pytest.mark.unit

LONG_SHAPES = [(460, 1130), (1130, 460), (100, 150), (64, 1000), (300, 451), (200, 799)]


def _coverage(boxes: list[Tile], height: int, width: int) -> np.ndarray:
    cover = np.zeros((height, width), int)
    for b in boxes:
        cover[b.top:b.top + b.height, b.left:b.left + b.width] += 1
    return cover


@pytest.mark.parametrize(("height", "width"), LONG_SHAPES)
def test_long_images_are_covered_by_square_tiles_flush_with_both_ends(height: int, width: int) -> None:
    boxes = tile_boxes(height, width)
    side = min(height, width)
    assert len(boxes) >= 2
    assert all(b.height == b.width == side for b in boxes)
    assert _coverage(boxes, height, width).min() >= 1
    starts = [b.left if width > height else b.top for b in boxes]
    assert starts[0] == 0 and starts[-1] + side == max(height, width)
    assert all(b.top + b.height <= height and b.left + b.width <= width for b in boxes)


@pytest.mark.parametrize(("height", "width"), LONG_SHAPES)
def test_neighbours_overlap_by_at_least_a_quarter_and_fewer_tiles_would_not(height: int, width: int) -> None:
    boxes = tile_boxes(height, width)
    side = min(height, width)
    starts = [b.left if width > height else b.top for b in boxes]
    overlaps = [(side - (b - a)) / side for a, b in itertools.pairwise(starts)]
    assert min(overlaps) >= MIN_OVERLAP - 1.0 / side  # rounding of the starts moves a tile by half a pixel
    steps = np.diff(starts)
    assert steps.max() - steps.min() <= 1  # evenly spaced
    fewer = len(boxes) - 1
    if fewer >= 2:  # one tile less needs a longer step, so less overlap than asked
        assert (max(height, width) - side) / (fewer - 1) > (1 - MIN_OVERLAP) * side


def test_bsdata_parts_are_three_tiles() -> None:
    assert tile_count(1130, 460) == 3
    assert [b.left for b in tile_boxes(460, 1130)] == [0, 335, 670]


@pytest.mark.parametrize(("height", "width"), [(192, 192), (256, 256), (300, 400), (400, 300), (100, 149)])
def test_square_and_near_square_images_are_one_tile_of_the_whole_image(height: int, width: int) -> None:
    assert tile_boxes(height, width) == [Tile(0, 0, height, width)]
    assert part_map_shape(height, width, 64) == (64, 64)
    image = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    (only,) = cut_tiles(image)
    assert np.array_equal(only, image)


def test_no_tiling_is_one_tile_even_for_long_images() -> None:
    assert tile_boxes(460, 1130, "none") == [Tile(0, 0, 460, 1130)]
    with pytest.raises(ValueError, match="tiling must be one of"):
        tile_boxes(460, 1130, "grid")


def test_square_image_stitches_to_its_one_map_exactly() -> None:
    m = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    assert np.array_equal(stitch_part_map([m], 200, 200, 32), m)
    assert np.allclose(part_map_to_image(m, 32, 32, 32), m)


def test_cut_tiles_are_the_image_pixels_of_their_boxes() -> None:
    image = np.random.default_rng(1).integers(0, 255, (46, 113, 3), dtype=np.uint8)
    for tile, box in zip(cut_tiles(image), tile_boxes(46, 113), strict=True):
        assert tile.shape == (46, 46, 3) and tile.flags.c_contiguous
        assert np.array_equal(tile, image[:, box.left:box.left + 46])


def _tile_maps_with_hot_spot(height: int, width: int, size: int, row: int, col: int) -> list[np.ndarray]:
    """Each tile's (S, S) map: 1 at the image pixel (row, col) where the tile holds it, 0 elsewhere."""
    maps = []
    for box in tile_boxes(height, width):
        m = np.zeros((size, size), np.float32)
        r, c = row - box.top, col - box.left
        if 0 <= r < box.height and 0 <= c < box.width:
            m[r * size // box.height, c * size // box.width] = 1.0
        maps.append(m)
    return maps


@pytest.mark.parametrize(("row", "col"), [(230, 60), (100, 500), (400, 1100), (10, 700)])
def test_stitching_puts_a_hot_spot_at_its_image_coordinates(row: int, col: int) -> None:
    height, width, size = 460, 1130, 46  # 10 image pixels per map cell
    maps = _tile_maps_with_hot_spot(height, width, size, row, col)
    in_image = stitch_to_image(maps, height, width)
    peak = np.unravel_index(int(np.argmax(in_image)), in_image.shape)
    assert abs(peak[0] - row) <= 10 and abs(peak[1] - col) <= 10
    part = stitch_part_map(maps, height, width, size)
    assert part.shape == part_map_shape(height, width, size) == (46, 113)
    back = part_map_to_image(part, height, width, size)
    peak = np.unravel_index(int(np.argmax(back)), back.shape)
    assert abs(peak[0] - row) <= 10 and abs(peak[1] - col) <= 10


def test_overlaps_are_averaged_and_tiles_land_exactly_in_the_part_map() -> None:
    boxes = part_map_boxes(460, 1130, 192)
    assert [b.left for b in boxes][-1] + 192 == part_map_shape(460, 1130, 192)[1]
    part = stitch_part_map([np.full((192, 192), v, np.float32) for v in (1.0, 2.0, 3.0)], 460, 1130, 192)
    first_overlap = boxes[1].left  # columns seen by tiles 0 and 1
    assert part[0, 0] == 1.0 and part[0, first_overlap] == 1.5 and part[0, -1] == 3.0


def test_region_masks_are_cut_like_the_frame() -> None:
    mask = np.zeros((32, 32), np.float32)
    mask[:, 24:] = 1.0  # the right quarter of the squashed frame
    first, middle, last = tile_cell_masks(mask, 460, 1130, 32, "long-axis")
    assert first.max() == 0.0 and last[:, -8:].min() == 1.0 and middle.max() < 1.0
    (whole,) = tile_cell_masks(mask, 300, 300, 32, "long-axis")
    assert np.array_equal(whole, mask)  # one tile: the frame's own mask


def test_image_score_is_the_worst_tile() -> None:
    assert image_score([0.1, 0.7, 0.3]) == pytest.approx(0.7)


def test_padded_batch_maps_crop_back_to_each_image() -> None:
    long_map = np.ones((32, 79), np.float32)
    square_map = np.full((32, 32), 2.0, np.float32)
    batch = pad_maps([long_map, square_map])
    assert batch.shape == (2, 32, 79)
    assert np.all(part_map_to_image(batch[0], 460, 1130, 32) == 1.0)
    assert part_map_to_image(batch[1], 300, 300, 32).shape == (300, 300)
    assert np.all(part_map_to_image(batch[1], 300, 300, 32) == 2.0)
    with pytest.raises(ValueError, match="cannot be the"):
        part_map_to_image(square_map, 460, 1130, 32)
