"""STFPM with its calibration inside: uint8 frames -> (scores, normalised scores, verdicts, maps).

The one place where the image score rule, the normalisation and the verdict are computed. The torch
runtime calls it and every export traces it, so no runtime re-implements calibration.
"""

from __future__ import annotations

import torch
from torch import nn

from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.stfpm.torch_model import STFPM

_EPS = 1e-12


class CalibratedSTFPM(nn.Module):
    """The network plus its image threshold and score scale (buffers, so they travel with exports)."""

    threshold: torch.Tensor
    log_scale: torch.Tensor

    def __init__(self, model: STFPM, calibration: Calibration) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("threshold", torch.tensor(float(calibration.image_threshold)), persistent=False)
        self.register_buffer("log_scale", torch.tensor(max(float(calibration.log_scale), 1e-6)), persistent=False)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 NHWC frames -> image scores (N,), normalised scores (N,), anomalous (N,), maps (N, S, S)."""
        maps, score_maps = self.model.scored_maps(self.model.preprocess(frames))
        return self.head(maps, score_maps=score_maps)

    def head(self, maps: torch.Tensor, thresholds: torch.Tensor | None = None, masks: torch.Tensor | None = None,
             score_maps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Scores, normalised scores and verdicts of fused maps; ``thresholds`` (N,) overrides per frame.

        ``masks`` (N, S, S) of 0/1 (``detector/model/roi.py``): cells outside a camera's regions are zeroed
        before the score, so they count toward nothing (score, verdict, breach region, returned map).
        ``score_maps``: what the image score is read from when the model scores with other taps than it shows
        (``STFPM.scored_maps``); default ``maps``.
        Normalised score: a logistic in log-score centred on the threshold (-> 0.5), scaled by the spread
        of the good calibration scores, so per-frame thresholds keep "0.5 = the threshold" true.
        """
        maps = maps.float()
        score_maps = maps if score_maps is None else score_maps.float()
        if masks is not None:
            maps, score_maps = maps * masks.to(maps), score_maps * masks.to(maps)
        scores = self.model.image_scores(score_maps)
        threshold = self.threshold if thresholds is None else thresholds.to(scores)
        return scores, self.normalise(scores, threshold), scores >= threshold, maps

    def normalise(self, scores: torch.Tensor, threshold: torch.Tensor | None = None) -> torch.Tensor:
        """Raw image scores -> [0, 1], monotonically, with ``threshold`` (default: the calibrated one) -> 0.5."""
        threshold = self.threshold if threshold is None else threshold
        z = (torch.log(scores.clamp_min(_EPS)) - torch.log(threshold.clamp_min(_EPS))) / self.log_scale
        return torch.sigmoid(z.clamp(-60.0, 60.0))
