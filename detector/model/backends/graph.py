"""The shared wrapper for exported graphs: ``AnomalyModel``'s pre-processing, chunking and results,
with the network and calibrated head run by an ONNX Runtime or OpenVINO graph instead of torch."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from linewatch.detector.model.inference import AnomalyModel, Frames

# (pixels (N, 3, S, S) float32, thresholds (N,) float32, masks (N, S, S) float32)
#   -> scores, normalised, anomalous, maps
GraphRunner = Callable[[np.ndarray, np.ndarray, np.ndarray], list[np.ndarray]]


class GraphModel(AnomalyModel):
    """An :class:`AnomalyModel` whose network and head run in an exported graph.

    Only ``_run`` differs from the torch runtime: the inputs come from the same ``_inputs``
    (``STFPM.preprocess``), and ``predict``'s batching, thresholds, region masks and :class:`Prediction`
    are inherited; thresholds and masks are graph inputs of the exported head.
    """

    backend: str = "graph"
    precision: str = "fp32"

    def attach(self, runner: GraphRunner, backend: str, precision: str) -> GraphModel:
        """Use ``runner`` for the network and head; returns self."""
        self._runner = runner
        self.backend = backend
        self.precision = precision
        return self

    @torch.inference_mode()
    def _run(self, frames: Frames, thresholds: torch.Tensor | None, masks: np.ndarray | None) -> list[np.ndarray]:
        pixels = np.ascontiguousarray(self._inputs(frames).float().cpu().numpy())
        n = pixels.shape[0]
        per_frame = (np.full(n, self.image_threshold, np.float32) if thresholds is None
                     else np.ascontiguousarray(thresholds.float().cpu().numpy().reshape(n)))
        # the graph always takes masks: all ones (every cell counts) when no region is set
        cells = np.ones((n, self.image_size, self.image_size), np.float32) if masks is None else masks
        return self._runner(pixels, per_frame, cells)
