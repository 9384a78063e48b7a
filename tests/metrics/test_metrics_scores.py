"""Score-level metrics on hand-computed cases (image AUROC, ROC, F1, trapezoid)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linewatch.detector.evaluation.metrics import (
    auroc,
    auroc_standard_error,
    best_f1,
    f1_at,
    f1_score,
    paired_auroc_difference_se,
    rank_correlation,
    roc_curve,
    trapezoid_to,
)


def test_auroc_hand_computed_with_a_tie() -> None:
    # good = 0.1, 0.35, 0.4; defect = 0.8, 0.4. Pairs (defect, good) won:
    # 0.8 beats all 3 goods -> 3; 0.4 beats 0.1 and 0.35 -> 2, ties 0.4 -> 0.5. (3 + 2.5) / (2 * 3) = 11/12.
    scores = [0.1, 0.8, 0.35, 0.4, 0.4]
    labels = [0, 1, 0, 1, 0]
    assert auroc(scores, labels) == pytest.approx(11 / 12, abs=1e-15)


def test_auroc_all_equal_scores_is_one_half() -> None:
    assert auroc(np.full(7, 3.0), [0, 1, 0, 1, 1, 0, 0]) == 0.5


def test_auroc_perfect_and_inverted_detector() -> None:
    labels = np.array([0, 0, 0, 1, 1], bool)
    assert auroc([0.1, 0.2, 0.3, 0.7, 0.9], labels) == 1.0
    assert auroc([0.9, 0.8, 0.7, 0.2, 0.1], labels) == 0.0
    # Perfect except one tie between the best good and the worst defect: 1 - 0.5 / (3 * 2).
    assert auroc([0.1, 0.2, 0.7, 0.7, 0.9], labels) == pytest.approx(1 - 0.5 / 6)


def test_auroc_single_class_is_nan_and_bad_input_is_an_error() -> None:
    assert math.isnan(auroc([0.1, 0.2], [0, 0]))
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="scores but"):
        auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="labels"):
        auroc([0.1, 0.2], [0, 2])


def test_auroc_matches_pair_counting_on_random_scores_with_many_ties() -> None:
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 300).astype(float)  # only 6 distinct values: ties everywhere
    labels = rng.random(300) < 0.3
    d, g = scores[labels][:, None], scores[~labels][None, :]
    expected = ((d > g).sum() + 0.5 * (d == g).sum()) / (d.size * g.size)
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, thresholds = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, abs=1e-12)
    assert thresholds[0] == np.inf and np.all(np.diff(thresholds) < 0)


def test_roc_curve_hand_computed() -> None:
    # Scores 0.9 (defect), 0.5 (good), 0.5 (defect), 0.1 (good). Thresholds inf, 0.9, 0.5, 0.1.
    fpr, tpr, thresholds = roc_curve([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.5, 0.1])


def test_f1_at_threshold_and_best_f1_hand_computed() -> None:
    scores = [0.1, 0.2, 0.3, 0.4]
    labels = [0, 1, 0, 1]
    # t = 0.25 flags 0.3 and 0.4: TP 1, FP 1, FN 1 -> 2 / (2 + 1 + 1) = 0.5.
    assert f1_at(scores, labels, 0.25) == 0.5
    # t = 0.2 flags 0.2, 0.3, 0.4 (>= is inclusive): TP 2, FP 1, FN 0 -> 4 / 5.
    assert f1_at(scores, labels, 0.2) == pytest.approx(0.8)
    # Candidates: 0.4 -> 2/3, 0.3 -> 1/2, 0.2 -> 4/5, 0.1 -> 4/6. Best: 0.8 at 0.2.
    assert best_f1(scores, labels) == (pytest.approx(0.8), 0.2)


def test_best_f1_equals_brute_force_and_prefers_the_highest_threshold() -> None:
    rng = np.random.default_rng(2)
    scores = rng.integers(0, 20, 200).astype(float)
    labels = rng.random(200) < 0.4
    brute = max((f1_at(scores, labels, t), t) for t in np.unique(scores))
    f1, threshold = best_f1(scores, labels)
    assert f1 == pytest.approx(brute[0])
    assert f1_at(scores, labels, threshold) == pytest.approx(f1)
    # Two thresholds give F1 = 1 (nothing lies between 0.5 and 0.8): the higher one is chosen.
    assert best_f1([0.1, 0.5, 0.8, 0.9], [0, 0, 1, 1]) == (1.0, 0.8)


def test_f1_degenerate_cases() -> None:
    assert f1_score([False, False], [False, False]) == 0.0
    assert f1_score([True, True], [False, False]) == 0.0
    assert best_f1([0.1, 0.2], [0, 0]) == (0.0, float("inf"))


def test_trapezoid_to_interpolates_at_the_limit() -> None:
    # Area on [0, 0.2]: 0.5 * (0 + 0.5) * 0.2 = 0.05. y(0.3) = 0.5 + 0.3 * 0.1 / 0.3 = 0.6,
    # area on [0.2, 0.3]: 0.5 * (0.5 + 0.6) * 0.1 = 0.055. Total 0.105.
    assert trapezoid_to([0, 0.2, 0.5, 1], [0, 0.5, 0.8, 1], 0.3) == pytest.approx(0.105)
    # A point exactly at the limit needs no interpolation; vertical steps add no area.
    assert trapezoid_to([0, 0, 0.3, 0.3, 1], [0, 1, 1, 0, 0], 0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="non-decreasing"):
        trapezoid_to([0, 0.5, 0.2], [0, 1, 1], 0.3)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=40))
def test_auroc_equals_pair_counting_for_any_small_input(items: list[tuple[int, bool]]) -> None:
    scores = np.array([s for s, _ in items], float)
    labels = np.array([y for _, y in items], bool)
    d, g = scores[labels][:, None], scores[~labels][None, :]
    if d.size == 0 or g.size == 0:
        assert math.isnan(auroc(scores, labels))
        return
    expected = ((d > g).sum() + 0.5 * (d == g).sum()) / (d.size * g.size)
    assert auroc(scores, labels) == pytest.approx(expected, abs=1e-12)
    fpr, tpr, _ = roc_curve(scores, labels)
    assert np.trapezoid(tpr, fpr) == pytest.approx(expected, abs=1e-12)
    f1, threshold = best_f1(scores, labels)
    assert f1 == pytest.approx(max(f1_at(scores, labels, t) for t in np.unique(scores)))
    assert f1_at(scores, labels, threshold) == pytest.approx(f1)


def test_paired_auroc_difference_se_matches_the_spread_of_the_difference_over_resampled_sets() -> None:
    # Two noisy views of one latent anomaly score: how much auroc(a) - auroc(b) varies from one test set of
    # 40 defects and 60 good items to the next is what the DeLong standard error must estimate from one set.
    rng = np.random.default_rng(7)
    diffs, estimates = [], []
    labels = np.r_[np.ones(40, bool), np.zeros(60, bool)]
    for _ in range(400):
        latent = rng.normal(size=100) + 1.0 * labels
        a, b = latent + rng.normal(scale=0.3, size=100), latent + rng.normal(scale=0.6, size=100)
        diffs.append(auroc(a, labels) - auroc(b, labels))
        estimates.append(paired_auroc_difference_se(a, b, labels))
    assert np.median(estimates) == pytest.approx(np.std(diffs), rel=0.15)


def test_paired_auroc_difference_se_is_zero_for_the_same_ranking_and_nan_without_both_classes() -> None:
    scores = np.array([0.1, 0.9, 0.3, 0.7, 0.2, 0.8])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert paired_auroc_difference_se(scores, scores * 10 + 3, labels) == 0.0  # same order, other scale
    swapped = scores.copy()
    swapped[[2, 3]] = swapped[[3, 2]]  # one defect now ranks below one good item
    assert paired_auroc_difference_se(scores, swapped, labels) > 0.0
    assert math.isnan(paired_auroc_difference_se(scores, scores, np.ones(6)))
    with pytest.raises(ValueError, match="scores"):
        paired_auroc_difference_se(scores, scores[:5], labels)


def test_rank_correlation_hand_computed() -> None:
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks 0 1 2 3 against 1 0 2 3: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    assert rank_correlation([1, 2, 3, 4], [2, 1, 3, 4]) == pytest.approx(0.8)
    assert rank_correlation([5.0], [1.0]) == 1.0


def test_auroc_standard_error_matches_the_spread_of_auroc_over_resampled_sets() -> None:
    rng = np.random.default_rng(11)
    labels = np.r_[np.ones(30, bool), np.zeros(70, bool)]
    aurocs, estimates = [], []
    for _ in range(400):
        scores = rng.normal(size=100) + 0.8 * labels
        aurocs.append(auroc(scores, labels))
        estimates.append(auroc_standard_error(scores, labels))
    assert np.median(estimates) == pytest.approx(np.std(aurocs), rel=0.15)
    assert math.isnan(auroc_standard_error([0.1, 0.2, 0.3], [1, 0, 0]))  # one defect: no spread to estimate
