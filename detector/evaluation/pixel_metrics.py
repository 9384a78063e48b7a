"""Pixel AUROC and AUPRO over a whole data set, streamed one anomaly map at a time.

Memory stays O(number of bins), whatever the number of pixels (magnetic_tile: 62 M pixels at
image resolution). Each pixel score ``v`` goes into one of ``2K + 1`` bins defined by ``K``
sorted thresholds ``edges``: bin ``2i + 1`` holds ``v == edges[i]`` exactly and bin ``2i`` the
open interval ``(edges[i-1], edges[i])``. Three histograms are kept: defect-free pixels, defective
pixels, and defective pixels weighted by 1 / (area of their ground-truth region).

Exactness:

- Pixel AUROC is exact except that a defective and a defect-free pixel in the same *open* bin count
  as a tie (1/2). :meth:`PixelAccumulator.auroc_error_bound` returns the exact worst case of that
  error, 0.5 * sum over open bins of n_defect * n_good / (N_defect * N_good). With edges at 65 536
  quantiles of the scores it is ~1e-5; when every score is an edge (small data) it is 0.
- The PRO curve is MVTec's curve evaluated exactly at every edge (flag when score >= edge). AUPRO is
  its trapezoid up to FPR 0.3; omitting the curve points inside open bins changes each segment's
  area by at most half its bounding box, summed in :meth:`PixelAccumulator.aupro_error_bound`.

AUPRO as in the MVTec AD evaluation: ground-truth regions are 8-connected components of each mask;
PRO(t) = mean over all regions of the data set of (region pixels with score >= t) / region area;
FPR(t) is over the defect-free pixels of all images (including those of defective images); the PRO
curve, from (0, 0) to (1, 1), is integrated over FPR in [0, 0.3] and divided by 0.3.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

DEFAULT_BINS = 65536


def quantile_edges(sample: npt.ArrayLike, n_edges: int = DEFAULT_BINS,
                   extra: npt.ArrayLike | None = None) -> np.ndarray:
    """Thresholds at ``n_edges`` evenly spaced quantiles of ``sample``, plus ``extra`` values.

    Quantiles are taken as actual sample values (no interpolation) so heavily repeated scores
    become exact edges. Pass ``extra`` thresholds (e.g. a calibrated pixel threshold) to make
    counts at them exact.
    """
    values = np.sort(np.asarray(sample, dtype=np.float64).ravel())
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot choose bin edges from an empty sample")
    picks = np.linspace(0, values.size - 1, min(n_edges, values.size)).round().astype(np.int64)
    edges = np.unique(values[picks])
    if extra is not None:
        edges = np.union1d(edges, np.asarray(extra, dtype=np.float64).ravel())
    return edges


def trapezoid_to(x: npt.ArrayLike, y: npt.ArrayLike, x_max: float) -> float:
    """Trapezoid area under ``y(x)`` for x in [x[0], x_max]; y is interpolated linearly at ``x_max``.

    ``x`` must be non-decreasing (repeated x, i.e. vertical steps, are allowed). This is how the
    MVTec AD evaluation integrates the PRO curve up to an FPR limit.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError("x and y must be 1-D arrays of the same length")
    if np.any(np.diff(xs) < 0):
        raise ValueError("x must be non-decreasing")
    keep = xs <= x_max
    area = float(np.sum(0.5 * (ys[keep][1:] + ys[keep][:-1]) * np.diff(xs[keep])))
    n_in = int(keep.sum())
    if 0 < n_in < xs.size and xs[n_in - 1] < x_max:
        # The curve crosses x_max between points n_in-1 and n_in: add the partial trapezoid.
        x0, x1, y0, y1 = xs[n_in - 1], xs[n_in], ys[n_in - 1], ys[n_in]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


class PixelAccumulator:
    """Streaming histograms for pixel AUROC, the PRO curve and pixel F1. Add maps with :meth:`add`."""

    def __init__(self, edges: npt.ArrayLike) -> None:
        self.edges = np.asarray(edges, dtype=np.float64).ravel()
        if self.edges.size == 0 or np.any(np.diff(self.edges) <= 0) or not np.all(np.isfinite(self.edges)):
            raise ValueError("edges must be finite, strictly increasing and non-empty")
        n_bins = 2 * self.edges.size + 1
        self.good = np.zeros(n_bins, np.int64)
        self.defect = np.zeros(n_bins, np.int64)
        self.region_weight = np.zeros(n_bins, np.float64)
        self.regions = 0

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value: ``2i + 1`` if equal to ``edges[i]``, else ``2i`` for the open bin below it."""
        v = values.astype(np.float64, copy=False)
        below = np.searchsorted(self.edges, v, side="left")  # number of edges < v
        on_edge = self.edges[np.minimum(below, self.edges.size - 1)] == v
        return 2 * below + on_edge

    def add(self, score_map: npt.ArrayLike, mask: npt.ArrayLike) -> None:
        """Add one anomaly map and its ground-truth mask (same 2-D shape; mask True = defect)."""
        scores = np.asarray(score_map)
        truth = np.asarray(mask, dtype=bool)
        if scores.ndim != 2 or scores.shape != truth.shape:
            raise ValueError(f"map shape {scores.shape} and mask shape {truth.shape} must be equal and 2-D")
        if not np.all(np.isfinite(scores)):
            raise ValueError("anomaly map contains NaN or infinity")
        n_bins = self.good.size
        bins = self.bin_index(scores)
        self.good += np.bincount(bins[~truth], minlength=n_bins)
        if not truth.any():
            return
        self.defect += np.bincount(bins[truth], minlength=n_bins)
        n_labels, labels = cv2.connectedComponents(truth.astype(np.uint8), connectivity=8)
        areas = np.bincount(labels.ravel(), minlength=n_labels).astype(np.float64)
        weights = 1.0 / areas[labels[truth]]
        self.region_weight += np.bincount(bins[truth], weights=weights, minlength=n_bins)
        self.regions += n_labels - 1

    def __iadd__(self, other: PixelAccumulator) -> PixelAccumulator:
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("cannot merge accumulators with different edges")
        self.good += other.good
        self.defect += other.defect
        self.region_weight += other.region_weight
        self.regions += other.regions
        return self

    def copy(self) -> PixelAccumulator:
        """An independent copy (to merge groups without changing this one)."""
        clone = PixelAccumulator(self.edges)
        clone += self
        return clone

    @property
    def n_good(self) -> int:
        """Defect-free pixels added."""
        return int(self.good.sum())

    @property
    def n_defect(self) -> int:
        """Defective pixels added."""
        return int(self.defect.sum())

    def auroc(self) -> float:
        """Pixel AUROC pooled over all added pixels (``nan`` if either class is empty)."""
        n_good, n_def = self.n_good, self.n_defect
        if n_good == 0 or n_def == 0:
            return float("nan")
        good_below = np.cumsum(self.good) - self.good
        wins = np.sum(self.defect * (good_below + 0.5 * self.good), dtype=np.float64)
        return float(wins / (float(n_good) * float(n_def)))

    def auroc_error_bound(self) -> float:
        """Largest possible |binned - exact| pixel AUROC (only open bins hold unresolved pairs)."""
        n_good, n_def = self.n_good, self.n_defect
        if n_good == 0 or n_def == 0:
            return 0.0
        open_pairs = np.sum(self.good[0::2].astype(np.float64) * self.defect[0::2])
        return float(0.5 * open_pairs / (float(n_good) * float(n_def)))

    def _at_or_above(self, hist: np.ndarray) -> np.ndarray:
        """For each edge, the histogram mass with score >= that edge."""
        tail = np.cumsum(hist[::-1])[::-1]
        return tail[1::2]

    def curves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(fpr, tpr, pro, thresholds)``, thresholds descending from +inf to -inf.

        One point per edge plus the end points (0, 0) and (1, 1). ``pro`` is ``nan`` everywhere
        when no region was added, ``tpr`` when no defective pixel was.
        """
        n_good, n_def = self.n_good, self.n_defect
        fp = self._at_or_above(self.good)[::-1].astype(np.float64)
        tp = self._at_or_above(self.defect)[::-1].astype(np.float64)
        pro_sum = self._at_or_above(self.region_weight)[::-1]
        fpr = np.r_[0.0, fp / n_good if n_good else np.full(fp.size, np.nan), 1.0]
        tpr = np.r_[0.0, tp / n_def if n_def else np.full(tp.size, np.nan), 1.0]
        pro = np.r_[0.0, np.clip(pro_sum / self.regions, 0, 1) if self.regions else np.full(fp.size, np.nan), 1.0]
        thresholds = np.r_[np.inf, self.edges[::-1], -np.inf]
        return fpr, tpr, pro, thresholds

    def aupro(self, fpr_limit: float = 0.3) -> float:
        """Normalised area under the PRO curve for FPR in [0, fpr_limit] (``nan`` without regions)."""
        if self.regions == 0 or self.n_good == 0:
            return float("nan")
        fpr, _, pro, _ = self.curves()
        return trapezoid_to(fpr, pro, fpr_limit) / fpr_limit

    def aupro_error_bound(self, fpr_limit: float = 0.3) -> float:
        """Worst-case change of :meth:`aupro` from curve points missing inside open bins."""
        if self.regions == 0 or self.n_good == 0:
            return 0.0
        fpr, _, pro, _ = self.curves()
        # Segment k joins point k and k+1; it hides points iff the open bin it crosses is non-empty.
        open_mass = (self.good[0::2] + self.defect[0::2])[::-1]
        hidden = open_mass > 0
        in_range = fpr[:-1] < fpr_limit
        boxes = np.diff(fpr) * np.diff(pro)
        return float(0.5 * np.sum(boxes[hidden & in_range]) / fpr_limit)

    def f1_at(self, threshold: float) -> float:
        """Pixel F1 when pixels with score >= ``threshold`` are flagged; ``threshold`` must be an edge."""
        hits = np.flatnonzero(self.edges == threshold)
        if hits.size == 0:
            raise ValueError(f"threshold {threshold} is not a bin edge; pass it in quantile_edges(extra=...)")
        i = int(hits[0])
        tp = float(self._at_or_above(self.defect)[i])
        fp = float(self._at_or_above(self.good)[i])
        denominator = tp + fp + self.n_defect
        return 2 * tp / denominator if denominator else 0.0
