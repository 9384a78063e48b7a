"""Calibration from defect-free images: thresholds, score statistics and a normalised score.

- image threshold: the (1 - target false-alarm rate) quantile of held-out good image scores;
- pixel threshold: the (1 - pixel false-positive rate) quantile of held-out good map values, capped at
  the image threshold so every anomalous image has a non-empty defect region;
- ``log_scale``: the spread of good log-scores, which scales the normalised score (a logistic in
  log-score centred on the threshold, computed in detector/model/stfpm/calibrated.py) so typical good parts
  sit well below 0.5 and clear defects near 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class Calibration:
    """Thresholds and statistics stored in the checkpoint."""

    image_threshold: float
    pixel_threshold: float
    target_false_alarm_rate: float
    pixel_false_positive_rate: float
    log_scale: float
    score_stats: dict[str, float] = field(default_factory=dict)
    # 90% bootstrap interval of the image threshold: how much the quantile of a few hundred good
    # images can move; wide intervals call for `linewatch calibrate` on more good frames
    threshold_interval: tuple[float, float] | None = None
    f1_threshold: float | None = None
    f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in names}
        if values.get("threshold_interval") is not None:
            low, high = values["threshold_interval"]
            values["threshold_interval"] = (float(low), float(high))
        return cls(**values)


def score_stats(scores: np.ndarray) -> dict[str, float]:
    """Count, mean, std, min, max and quantiles of image scores."""
    s = np.asarray(scores, np.float64)
    quantiles = np.quantile(s, [0.5, 0.95, 0.99])
    return {"n": float(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(quantiles[0]), "p95": float(quantiles[1]),
            "p99": float(quantiles[2])}


def calibrate(good_scores: np.ndarray, good_maps: np.ndarray, target_false_alarm_rate: float = 0.01,
              pixel_false_positive_rate: float = 0.001) -> Calibration:
    """Thresholds from held-out good images' scores (N,) and maps (N, S, S)."""
    scores = np.asarray(good_scores, np.float64)
    if scores.size == 0:
        raise ValueError("calibration needs at least one held-out good image")
    if not 0 < target_false_alarm_rate < 1 or not 0 < pixel_false_positive_rate < 1:
        raise ValueError("false-alarm rates must be in (0, 1)")
    image_threshold = float(np.quantile(scores, 1 - target_false_alarm_rate, method="higher"))
    pixels = np.asarray(good_maps, np.float32).ravel()
    pixel_threshold = min(float(np.quantile(pixels, 1 - pixel_false_positive_rate)), image_threshold)
    log_scores = np.log(np.maximum(scores, _EPS))
    log_scale = float(max(log_scores.std(), 0.05))  # floor: a handful of near-equal scores must not make a step
    return Calibration(image_threshold=image_threshold, pixel_threshold=pixel_threshold,
                       target_false_alarm_rate=target_false_alarm_rate,
                       pixel_false_positive_rate=pixel_false_positive_rate, log_scale=log_scale,
                       score_stats=score_stats(scores),
                       threshold_interval=threshold_interval(scores, target_false_alarm_rate))


def threshold_interval(scores: np.ndarray, target_false_alarm_rate: float, level: float = 0.9,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval (``level``) of the (1 - rate) quantile of good scores."""
    s = np.asarray(scores, np.float64)
    rng = np.random.default_rng(seed)
    draws = s[rng.integers(0, s.size, size=(resamples, s.size))]
    quantiles = np.quantile(draws, 1 - target_false_alarm_rate, axis=1, method="higher")
    low, high = np.quantile(quantiles, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``score >= threshold`` against boolean ``labels`` (True = defect)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    if s.shape != y.shape or not y.any():
        raise ValueError("need matching scores and labels with at least one defect")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, _EPS), 0.0)
    f1 = np.where(last, f1, -1.0)
    best = int(np.argmax(f1))
    return float(s[best]), float(f1[best])
