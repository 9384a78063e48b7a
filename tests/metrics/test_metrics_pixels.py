"""Pixel AUROC and AUPRO: hand-computed cases, an independent reference, and the binning bound."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linewatch.detector.evaluation.metrics import PixelAccumulator, auroc, quantile_edges, trapezoid_to

# 3x4 map with two ground-truth regions: A = {(0,0), (0,1)} (area 2) and B = {(2,3)} (area 1).
MASK = np.array([[1, 1, 0, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 1]], bool)
SCORES = np.array([[0.9, 0.5, 0.1, 0.1],
                   [0.1, 0.6, 0.1, 0.1],
                   [0.1, 0.1, 0.2, 0.7]])


def exact(maps: list[np.ndarray], masks: list[np.ndarray]) -> PixelAccumulator:
    """Every distinct score is an edge, so the accumulator is exact."""
    acc = PixelAccumulator(np.unique(np.concatenate([m.ravel() for m in maps])))
    for m, k in zip(maps, masks, strict=True):
        acc.add(m, k)
    return acc


def reference_aupro(maps: list[np.ndarray], masks: list[np.ndarray], limit: float = 0.3) -> float:
    """Straight from the definition: loop over thresholds, regions and images."""
    regions = []  # (image index, boolean region mask)
    for i, k in enumerate(masks):
        n, labels = cv2.connectedComponents(k.astype(np.uint8), connectivity=8)
        regions += [(i, labels == r) for r in range(1, n)]
    n_ok = sum(int((~k).sum()) for k in masks)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        fprs.append(sum(int(((m >= t) & ~k).sum()) for m, k in zip(maps, masks, strict=True)) / n_ok)
        pros.append(float(np.mean([(maps[i][r] >= t).mean() for i, r in regions])))
    return trapezoid_to([*fprs, 1.0], [*pros, 1.0], limit) / limit


def test_hand_computed_pixel_auroc_and_aupro() -> None:
    acc = exact([SCORES], [MASK])
    # Good pixels: 0.1 x7, 0.2, 0.6. Defect pixels 0.9 and 0.7 beat all 9, 0.5 beats 8: 26 / 27.
    assert acc.auroc() == pytest.approx(26 / 27, abs=1e-15)
    assert acc.auroc_error_bound() == 0.0
    assert acc.regions == 2 and acc.n_good == 9 and acc.n_defect == 3
    # (FPR, PRO) by threshold: 0.9 -> (0, (1/2 + 0)/2 = .25); 0.7 -> (0, .75); 0.6 -> (1/9, .75);
    # 0.5 -> (1/9, 1); 0.2 -> (2/9, 1); 0.1 -> (1, 1). Area to 0.3: .75 * 1/9 + 1 * (0.3 - 1/9).
    expected = (0.75 / 9 + 0.3 - 1 / 9) / 0.3
    assert acc.aupro() == pytest.approx(expected, abs=1e-12)
    assert acc.aupro() == pytest.approx(reference_aupro([SCORES], [MASK]), abs=1e-12)
    fpr, tpr, pro, thresholds = acc.curves()
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 9, 1 / 9, 2 / 9, 1, 1])
    np.testing.assert_allclose(pro, [0, 0.25, 0.75, 0.75, 1, 1, 1, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1, 1])
    assert thresholds[0] == np.inf and thresholds[-1] == -np.inf
    # Pixel F1 at 0.6: flags 0.9, 0.6, 0.7 -> TP 2, FP 1, FN 1 -> 4 / 6.
    assert acc.f1_at(0.6) == pytest.approx(2 / 3)


def test_regions_are_8_connected_and_averaged_over_regions_not_pixels() -> None:
    # Diagonal pixels (0,0), (1,1) form ONE 8-connected region of area 2; (3,3) is a second region.
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[3, 3] = True
    scores = np.full((4, 4), 0.5)
    scores[0, 0], scores[1, 1], scores[3, 3] = 0.9, 0.1, 0.1
    acc = exact([scores], [mask])
    assert acc.regions == 2
    # At 0.9: PRO = (1/2 + 0) / 2 = 0.25 (4-connectivity would give 1/3, pixel recall 1/3);
    # FPR jumps 0 -> 1 at 0.5, PRO stays 0.25 until threshold 0.1. AUPRO = 0.25.
    assert acc.aupro() == pytest.approx(0.25, abs=1e-12)


def test_empty_mask_of_a_defective_image_adds_good_pixels_but_no_region() -> None:
    acc = exact([SCORES, np.full((3, 4), 0.15)], [MASK, np.zeros((3, 4), bool)])
    assert acc.regions == 2 and acc.n_good == 9 + 12 and acc.n_defect == 3
    # Every PRO step now happens at FPR 0 or above 0.3 except 0.6 -> FPR 1/21 and 0.2 -> 2/21.
    expected = (0.75 / 21 + 0.3 - 1 / 21) / 0.3
    assert acc.aupro() == pytest.approx(expected, abs=1e-12)


def test_perfect_inverted_and_constant_maps() -> None:
    truth = [MASK]
    assert exact([MASK * 1.0], truth).auroc() == 1.0
    assert exact([MASK * 1.0], truth).aupro() == 1.0
    assert exact([1.0 - MASK], truth).auroc() == 0.0
    assert exact([1.0 - MASK], truth).aupro() == 0.0
    const = exact([np.full((3, 4), 0.3)], truth)
    # All pixels tied: AUROC 1/2; the only curve points are (0, 0) and (1, 1), so PRO(0.3) = 0.3
    # on the straight line and AUPRO = 0.5 * 0.3 * 0.3 / 0.3 = 0.15.
    assert const.auroc() == 0.5
    assert const.aupro() == pytest.approx(0.15)


def test_undefined_metrics_are_nan_and_bad_input_raises() -> None:
    acc = exact([np.zeros((2, 2))], [np.zeros((2, 2), bool)])
    assert math.isnan(acc.auroc()) and math.isnan(acc.aupro())
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2)), np.zeros((2, 3), bool))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((2, 2), np.nan), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="not a bin edge"):
        acc.f1_at(0.123)
    with pytest.raises(ValueError, match="increasing"):
        PixelAccumulator([0.2, 0.1])


def random_maps(seed: int, n: int = 24, size: int = 48) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Heavy-tailed maps (like STFPM's products of distances) with blob defects brighter on average."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(int(rng.integers(0, 4)) if i % 3 else 0):
            centre = tuple(int(c) for c in rng.integers(0, size, 2))
            cv2.circle(mask, centre, int(rng.integers(1, 8)), 1, -1)
        noise = rng.lognormal(0.0, 1.0, (size, size))
        score = cv2.GaussianBlur(noise + 2.0 * mask * rng.random(), (0, 0), 1.5)
        score[rng.random((size, size)) < 0.05] = 0.0  # a lump of exactly tied scores
        maps.append(score.astype(np.float32))
        masks.append(mask.astype(bool))
    return maps, masks


def test_exact_accumulator_matches_independent_references() -> None:
    maps, masks = random_maps(3, n=8, size=24)
    acc = exact(maps, masks)
    flat = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([k.ravel() for k in masks])
    assert acc.auroc() == pytest.approx(auroc(flat, truth), abs=1e-12)
    assert acc.aupro() == pytest.approx(reference_aupro(maps, masks), abs=1e-12)
    assert acc.aupro_error_bound() == 0.0


def test_binning_error_is_within_its_bound_and_below_1e3() -> None:
    maps, masks = random_maps(4)
    flat = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([k.ravel() for k in masks])
    exact_auroc = auroc(flat, truth)
    exact_aupro = exact(maps, masks).aupro()
    # Edges from a 1-in-7 subsample, as evaluate() picks them from the model-size maps.
    for n_edges in (64, 1024, 65536):
        acc = PixelAccumulator(quantile_edges(flat[::7], n_edges))
        for m, k in zip(maps, masks, strict=True):
            acc.add(m, k)
        assert abs(acc.auroc() - exact_auroc) <= acc.auroc_error_bound() + 1e-12
        assert abs(acc.aupro() - exact_aupro) <= acc.aupro_error_bound() + 1e-12
    # Default resolution: both bounds (hence both errors) below 1e-3.
    assert acc.auroc_error_bound() < 1e-3 and acc.aupro_error_bound() < 1e-3
    assert abs(acc.auroc() - exact_auroc) < 1e-3


def test_groups_merge_into_the_pooled_result() -> None:
    maps, masks = random_maps(5, n=6, size=16)
    edges = quantile_edges(np.concatenate([m.ravel() for m in maps]))
    first, second, pooled = PixelAccumulator(edges), PixelAccumulator(edges), PixelAccumulator(edges)
    for i, (m, k) in enumerate(zip(maps, masks, strict=True)):
        (first if i < 3 else second).add(m, k)
        pooled.add(m, k)
    merged = first.copy()
    merged += second
    assert merged.auroc() == pooled.auroc() and merged.aupro() == pooled.aupro()
    assert first.n_good + second.n_good == pooled.n_good


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3))
def test_exact_accumulator_matches_the_definition_on_random_tied_maps(seed: int, n_maps: int) -> None:
    rng = np.random.default_rng(seed)
    maps = [rng.integers(0, 5, (6, 7)).astype(np.float32) for _ in range(n_maps)]
    masks = [rng.random((6, 7)) < 0.25 for _ in range(n_maps)]
    acc = exact(maps, masks)
    flat = np.concatenate([m.ravel() for m in maps])
    truth = np.concatenate([k.ravel() for k in masks])
    if truth.all() or not truth.any():
        return
    assert acc.auroc() == pytest.approx(auroc(flat, truth), abs=1e-12)
    assert acc.aupro() == pytest.approx(reference_aupro(maps, masks), abs=1e-12)
