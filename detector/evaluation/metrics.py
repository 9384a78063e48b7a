"""Anomaly-detection metrics as MVTec AD defines them (numpy and OpenCV only).

Score-level metrics work on one score per item (images, or pixels in tests):

- :func:`auroc`: exact; ties count one half, i.e. P(s_defect > s_good) + 0.5 * P(s_defect == s_good);
- :func:`roc_curve`: one point per distinct score, from (0, 0) to (1, 1);
- :func:`f1_score`, :func:`f1_at`, :func:`best_f1`: an item is flagged when its score is >= the threshold;
- :func:`trapezoid_to` (from pixel_metrics): area under a curve up to ``x_max``, interpolated there.

Pixel-level metrics over whole data sets (pixel AUROC, AUPRO) stream through
:class:`detector.pixel_metrics.PixelAccumulator`, re-exported here.

Undefined metrics (only one class present, no ground-truth region) are ``nan``, not errors: a
per-type breakdown can legitimately have them. Malformed input (shape mismatch, non-finite scores)
raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from linewatch.detector.evaluation.pixel_metrics import PixelAccumulator, quantile_edges, trapezoid_to

__all__ = [
    "PixelAccumulator",
    "auroc",
    "auroc_standard_error",
    "best_f1",
    "f1_at",
    "f1_score",
    "paired_auroc_difference_se",
    "quantile_edges",
    "rank_correlation",
    "recall_at_false_alarm_rate",
    "roc_curve",
    "trapezoid_to",
]


def _scores_labels(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 scores and bool labels (True = defect), validated."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            raise ValueError("labels must be bool or 0/1")
        y = y.astype(bool)
    return s, y


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Exact area under the ROC curve (Mann-Whitney U / (n_defect * n_good)), ties counted as 1/2.

    Args:
        scores: higher means more anomalous.
        labels: True (or 1) for defective items.

    Returns:
        AUROC in [0, 1]; ``nan`` when either class is empty.
    """
    s, y = _scores_labels(scores, labels)
    good = np.sort(s[~y])
    defect = s[y]
    if good.size == 0 or defect.size == 0:
        return float("nan")
    # For each defect score: goods strictly below it, and goods equal to it.
    below = np.searchsorted(good, defect, side="left")
    not_above = np.searchsorted(good, defect, side="right")
    wins = below.sum(dtype=np.float64) + 0.5 * (not_above - below).sum(dtype=np.float64)
    return float(wins / (float(good.size) * float(defect.size)))


def auroc_standard_error(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Standard error of :func:`auroc` on a set of this size and make-up (DeLong; ``nan`` with fewer than two
    items in either class): how far AUROC could move between test sets drawn alike, e.g. whether a model is
    better than chance (0.5) by more than the set can tell."""
    s, y = _scores_labels(scores, labels)
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan")
    defect, good = _placements(s[y], s[~y])
    return float(np.sqrt(defect.var(ddof=1) / m + good.var(ddof=1) / n))


def paired_auroc_difference_se(scores_a: npt.ArrayLike, scores_b: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Standard error of ``auroc(scores_a) - auroc(scores_b)`` for two scorers of the same items (DeLong).

    DeLong, DeLong and Clarke-Pearson (Biometrics 1988): each defect's and each good item's share of wins
    ("placement values") under both scorers; the difference's variance is built from their covariances, so
    two scorers that rank the items alike have a small standard error even when the set is small, and a
    scorer whose near-tied pairs flip at random has a larger one. It tells a real change of accuracy from
    the reshuffling of near ties on a set of this size. ``nan`` when either class is empty.
    """
    a, y = _scores_labels(scores_a, labels)
    b, _ = _scores_labels(scores_b, labels)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} scores for one scorer but {b.size} for the other")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        return float("nan")
    placements = [_placements(s[y], s[~y]) for s in (a, b)]
    defect_diff = placements[0][0] - placements[1][0]  # per defect: its win share under a minus under b
    good_diff = placements[0][1] - placements[1][1]
    variance = defect_diff.var(ddof=1) / m + good_diff.var(ddof=1) / n
    return float(np.sqrt(max(variance, 0.0)))


def _placements(defect: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per defect, the share of good items it outscores; per good item, the share of defects above it (ties 1/2)."""
    wins = (defect[:, None] > good[None, :]) + 0.5 * (defect[:, None] == good[None, :])
    return wins.mean(axis=1), wins.mean(axis=0)


def rank_correlation(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman's rank correlation of two scorings of the same items (ties broken by order: scores are
    continuous); 1.0 for fewer than two items."""
    x, z = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != z.shape:
        raise ValueError(f"{x.size} scores against {z.size}")
    if x.size < 2:
        return 1.0
    ranks_x, ranks_z = np.argsort(np.argsort(x)), np.argsort(np.argsort(z))
    return float(np.corrcoef(ranks_x, ranks_z)[0, 1])


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for thresholds at each distinct score (flag when score >= threshold).

    Returns:
        ``(fpr, tpr, thresholds)``, thresholds descending, starting at (0, 0) with threshold +inf
        and ending at (1, 1). The trapezoid area under these points equals :func:`auroc`.
    """
    s, y = _scores_labels(scores, labels)
    n_def, n_good = int(y.sum()), int((~y).sum())
    if n_def == 0 or n_good == 0:
        raise ValueError("ROC curve needs both good and defective items")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    last_of_run = np.r_[np.diff(s_sorted) != 0, True]  # one point per distinct score
    fpr = np.r_[0.0, fp[last_of_run] / n_good]
    tpr = np.r_[0.0, tp[last_of_run] / n_def]
    return fpr, tpr, np.r_[np.inf, s_sorted[last_of_run]]


def f1_score(flagged: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """F1 of boolean decisions against labels: 2TP / (2TP + FP + FN); 0.0 when that is 0/0."""
    p = np.asarray(flagged, dtype=bool).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    if p.shape != y.shape:
        raise ValueError(f"{p.size} decisions but {y.size} labels")
    tp = int(np.sum(p & y))
    denominator = 2 * tp + int(np.sum(p & ~y)) + int(np.sum(~p & y))
    return 2 * tp / denominator if denominator else 0.0


def f1_at(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> float:
    """F1 when items with score >= ``threshold`` are flagged."""
    s, y = _scores_labels(scores, labels)
    return f1_score(s >= threshold, y)


def best_f1(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """The F1-optimal threshold over all distinct scores (flag when score >= threshold).

    Returns:
        ``(f1, threshold)``; among equally good thresholds the highest (fewest alarms) wins.
        ``(0.0, inf)`` when there are no defective items.
    """
    s, y = _scores_labels(scores, labels)
    n_def = int(y.sum())
    if n_def == 0 or s.size == 0:
        return 0.0, float("inf")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_run]
    flagged = np.arange(1, s.size + 1)[last_of_run]
    f1 = 2 * tp / (flagged + n_def)  # 2TP / (2TP + FP + FN), FP + TP = flagged, TP + FN = n_def
    best = int(np.argmax(f1))  # first maximum = highest threshold
    return float(f1[best]), float(s_sorted[last_of_run][best])


def recall_at_false_alarm_rate(scores: npt.ArrayLike, labels: npt.ArrayLike, rate: float) -> float:
    """Share of defective images scoring above the threshold that lets ``rate`` of good images through.

    The threshold is the good scores' (1 - rate) quantile taken as the next observed score above it
    (``method="higher"``), and a defect must score strictly above it: with ties or few good images the
    measured false-alarm rate is at most ``rate``. NaN without good or defective images.
    """
    s, y = _scores_labels(scores, labels)
    if y.all() or not y.any():
        return float("nan")
    threshold = np.quantile(s[~y], 1.0 - rate, method="higher")
    return float(np.mean(s[y] > threshold))
