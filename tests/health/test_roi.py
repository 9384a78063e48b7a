"""Regions of interest and ignore masks (detector/model/roi.py): pure functions, no services."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.detector.model.roi import (
    CameraMasks,
    RoiConfig,
    RoiError,
    cell_mask,
    image_mask,
    masked_score,
    pixel_polygons,
)

pytestmark = pytest.mark.unit

S = 16
LABEL = [(0.0, 0.0), (0.25, 0.0), (0.25, 0.25), (0.0, 0.25)]  # a sticker in the top-left corner


def spot_map(row: int, col: int, value: float = 5.0) -> np.ndarray:
    """A good part's map (low everywhere) with one hot cell."""
    anomaly_map = np.full((S, S), 0.2, np.float32)
    anomaly_map[row, col] = value
    return anomaly_map


def test_ignore_mask_removes_a_false_alarm_inside_it_and_keeps_a_defect_outside() -> None:
    mask = cell_mask(RoiConfig(exclude=[LABEL]), (256, 256), S)
    threshold = 1.0
    label_alarm, defect = spot_map(1, 2), spot_map(10, 12)
    assert masked_score(label_alarm, np.ones((S, S))) >= threshold  # unmasked: a false alarm
    assert masked_score(label_alarm, mask) < threshold
    assert masked_score(defect, mask) == pytest.approx(5.0)
    both = np.maximum(label_alarm, defect)
    assert masked_score(both, mask) == pytest.approx(5.0)


def test_cells_follow_coverage_and_include_then_exclude() -> None:
    roi = RoiConfig(include=[[(0, 0), (1, 0), (1, 0.5), (0, 0.5)]], exclude=[LABEL])
    mask = cell_mask(roi, (100, 100), 4)
    assert mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    half = RoiConfig(exclude=[[(0, 0), (0.1, 0), (0.1, 1), (0, 1)]], min_cover=0.5)
    assert cell_mask(half, (64, 64), 4)[:, 0].tolist() == [1, 1, 1, 1]  # 44 % of column 0 excluded: still counts
    assert cell_mask(half.model_copy(update={"min_cover": 0.6}), (64, 64), 4)[:, 0].tolist() == [0, 0, 0, 0]


def test_letterbox_puts_the_image_in_the_middle_and_padding_never_counts() -> None:
    roi = RoiConfig(exclude=[[(0.5, 0), (1, 0), (1, 1), (0.5, 1)]])  # right half of a wide image
    mask = cell_mask(roi, (50, 200), 8, "letterbox")  # image rows 3..4 of 8 after letterboxing
    assert mask[:3].sum() == 0 and mask[5:].sum() == 0
    assert mask[3:5, :4].all() and not mask[3:5, 4:].any()
    squash = cell_mask(roi, (50, 200), 8, "squash")
    assert squash[:, :4].all() and not squash[:, 4:].any()


def test_pixel_units_and_whole_frame() -> None:
    pixels = RoiConfig(units="pixels", frame_size=(100, 100), exclude=[[(0, 0), (50, 0), (50, 100), (0, 100)]])
    assert image_mask(pixels, 100, 100)[:, :50].sum() == 0 and image_mask(pixels, 100, 100)[:, 51:].all()
    # a frame of another size (a camera resize) scales the pixel polygons instead of shifting them
    assert image_mask(pixels, 50, 200)[:, :100].sum() == 0 and image_mask(pixels, 50, 200)[:, 101:].all()
    assert cell_mask(RoiConfig(), (30, 40), 4).all()
    assert pixel_polygons([LABEL], "normalised", 200, 400)[0].tolist() == [[0, 0], [100, 0], [100, 50], [0, 50]]


@pytest.mark.parametrize(("bad", "why"), [
    ({"exclude": [[(0, 0), (1, 1)]]}, "a polygon needs at least 3"),
    ({"include": [[(0, 0), (2, 0), (0, 1)]]}, "outside 0..1"),
    ({"units": "pixels", "frame_size": (10, 10), "exclude": [[(-1, 0), (5, 0), (0, 5)]]}, "outside the 10x10 frame"),
    ({"units": "pixels", "exclude": [[(1, 0), (5, 0), (0, 5)]]}, "needs frame_size"),
    ({"exlude": [[(0, 0), (1, 0), (0, 1)]]}, "Extra inputs"),  # a typo must not mean "no mask"
])
def test_impossible_regions_are_refused(bad: dict, why: str) -> None:
    with pytest.raises((RoiError, ValueError), match=why):
        RoiConfig.model_validate(bad)


def test_camera_masks_are_cached_per_camera_and_frame_size() -> None:
    masks = CameraMasks({"cam-1": RoiConfig(exclude=[LABEL]), "cam-2": RoiConfig()})
    assert masks.mask("cam-2", (64, 64), S, "squash") is None  # whole frame: no mask at all
    assert masks.batch([("cam-2", (64, 64)), ("cam-9", (64, 64))], S, "squash") is None
    first = masks.mask("cam-1", (64, 64), S, "squash")
    assert first is not None and first is masks.mask("cam-1", (64, 64), S, "squash")
    assert masks.mask("cam-1", (64, 128), S, "letterbox") is not first
    batch = masks.batch([("cam-1", (64, 64)), ("cam-9", (64, 64))], S, "squash")
    assert batch is not None and batch.shape == (2, S, S)
    assert batch[0].tolist() == first.tolist() and batch[1].all()
