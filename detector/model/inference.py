"""The one inference path: uint8 frames -> calibrated scores, verdicts and anomaly maps.

The service, ``evaluate``, ``predict``, the demo and the benchmarks all call :meth:`AnomalyModel.predict`.
It takes a list of (H, W, 3) frames of any sizes, a uint8 (N, H, W, 3) numpy batch, or a uint8 NHWC
torch tensor already on the model's device (the GPU decode path). Resizing and input scaling run on the
device inside ``torch.inference_mode``; scores, normalisation and verdicts come from
:class:`~linewatch.detector.model.stfpm.calibrated.CalibratedSTFPM`, the same module the exports trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from linewatch.detector.model.calibrate import Calibration
from linewatch.detector.model.checkpoint import CheckpointError, file_sha256, load_checkpoint
from linewatch.detector.model.device import select_device
from linewatch.detector.model.geometry import map_to_image
from linewatch.detector.model.metadata import MetadataError, ModelMetadata
from linewatch.detector.model.stfpm.backbones import BackboneError
from linewatch.detector.model.stfpm.calibrated import CalibratedSTFPM
from linewatch.detector.model.stfpm.torch_model import STFPM
from linewatch.detector.model.tiled_inference import run_tiled
from linewatch.detector.model.tiling import pad_maps, part_map_to_image

Frames = np.ndarray | Sequence[np.ndarray] | torch.Tensor


@dataclass
class Prediction:
    """Model output for N frames."""

    image_scores: np.ndarray  # (N,) float32 raw STFPM image scores (see ModelMetadata.score_top_k)
    normalised_scores: np.ndarray  # (N,) float32 in [0, 1]; each frame's threshold maps to 0.5
    anomalous: np.ndarray  # (N,) bool, image_score >= threshold
    # (N, S, S) float32 anomaly maps at the model input size S. A tiled model (metadata.tiling != "none")
    # gives each frame's part map instead: its tiles' maps stitched at model scale (short side S, e.g.
    # (192, 472) for a 460x1130 frame; (S, S) for a near-square frame), in the top-left corner of an
    # (N, Hmax, Wmax) array padded with zeros when the frames' shapes differ. ``map_to_image`` undoes both.
    maps: np.ndarray
    thresholds: np.ndarray | None = None  # (N,) the image threshold each frame was judged by


class InferenceModel(Protocol):
    """What the service, evaluate, predict and the demo need of a model, whatever runs it."""

    metadata: ModelMetadata
    model_version: str
    image_threshold: float
    pixel_threshold: float
    image_size: int
    device: torch.device

    def predict(self, frames: Frames, thresholds: Sequence[float] | np.ndarray | None = None,
                masks: np.ndarray | None = None) -> Prediction:
        """Calibrated scores, verdicts and maps of uint8 RGB frames; ``masks`` (N, S, S) zero ignored cells."""
        ...

    def map_to_image(self, anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One map of ``Prediction.maps`` in the original image's (H, W) pixels."""
        ...


def build_model(metadata: ModelMetadata) -> STFPM:
    """An (untrained) STFPM shaped as the checkpoint metadata describes."""
    return STFPM(backbone=metadata.backbone, image_size=metadata.image_size, taps=list(metadata.taps),
                 sigma=metadata.sigma, resize_mode=metadata.resize_mode, score_top_k=metadata.score_top_k,
                 tap_weights=metadata.tap_weights, map_taps=metadata.map_taps, score_taps=metadata.score_taps)


def _as_uint8_rgb(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 3) or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"a frame must be (H, W, 3) RGB or (H, W) grayscale, got shape {frame.shape}")
    return np.repeat(frame, 3, axis=2) if frame.shape[2] == 1 else frame


class AnomalyModel:
    """A calibrated STFPM on a device (the torch runtime of :class:`InferenceModel`)."""

    def __init__(self, model: STFPM, metadata: ModelMetadata, model_version: str, device: torch.device,
                 channels_last: bool = False, batch_size: int = 32) -> None:
        self.metadata = metadata
        self.calibration: Calibration = metadata.calibration
        self.backbone = model.backbone
        self.image_size = model.image_size
        self.image_threshold = float(self.calibration.image_threshold)
        self.pixel_threshold = float(self.calibration.pixel_threshold)
        self.model_version = model_version
        self.device = device
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.model = model.to(device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.calibrated = CalibratedSTFPM(self.model, self.calibration).to(device).eval()

    @classmethod
    def load(cls, path: str | Path, device: str | None = "auto", *, channels_last: bool = False) -> AnomalyModel:
        """Load a checkpoint; any unusable file raises :class:`CheckpointError` with a clear message."""
        state, raw = load_checkpoint(path)
        if "calibration" not in raw:
            raise CheckpointError(f"{path}: checkpoint is not calibrated (no thresholds)")
        try:
            metadata = ModelMetadata.from_dict(raw)
            model = build_model(metadata)
        except (MetadataError, BackboneError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint metadata does not describe a model ({exc})") from exc
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or extra or wrong:
            raise CheckpointError(f"{path}: weights do not match the {metadata.backbone} architecture "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]})")
        model.load_state_dict(state)
        return cls(model, metadata, file_sha256(path)[:12], select_device(device), channels_last=channels_last)

    @property
    def map_cells(self) -> tuple[int, int]:
        """Fused map size in feature cells (height, width)."""
        return self.metadata.map_cells if all(self.metadata.map_cells) else self.model.map_cells()

    def map_to_image(self, anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One map of ``Prediction.maps`` in the original image's pixels (H, W): undo the letterbox padding
        (or, for a tiled model, the batch padding of the part map), then resize."""
        if self.metadata.tiling != "none":
            return part_map_to_image(anomaly_map, int(shape[0]), int(shape[1]), self.image_size,
                                     self.metadata.tiling)
        return map_to_image(anomaly_map, shape, self.metadata.resize_mode)

    def _inputs(self, frames: Frames) -> torch.Tensor:
        """Pre-processed (N, 3, S, S) input on the device."""
        if isinstance(frames, torch.Tensor):
            if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"a frame tensor must be uint8 (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
            x = self.model.preprocess(frames.to(self.device))
        elif isinstance(frames, np.ndarray) and frames.ndim == 4:
            if frames.dtype != np.uint8 or frames.shape[-1] != 3:
                raise ValueError(f"a frame batch must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
            x = self.model.preprocess(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))
        else:  # different sizes: resize each on the device, then run one batch
            x = torch.cat([self.model.preprocess(torch.from_numpy(_as_uint8_rgb(f)).to(self.device)[None])
                           for f in frames])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def _run(self, frames: Frames, thresholds: torch.Tensor | None, masks: np.ndarray | None) -> list[np.ndarray]:
        maps, score_maps = self.model.scored_maps(self._inputs(frames))
        cells = None if masks is None else torch.from_numpy(masks).to(self.device)
        return [t.float().cpu().numpy() if t.dtype != torch.bool else t.cpu().numpy()
                for t in self.calibrated.head(maps, thresholds, cells, score_maps)]

    def _checked_masks(self, masks: np.ndarray | None, n: int) -> np.ndarray | None:
        """``masks`` as contiguous float32 (N, S, S), or a clear error naming the expected shape."""
        if masks is None:
            return None
        masks = np.ascontiguousarray(masks, dtype=np.float32)
        if masks.shape != (n, self.image_size, self.image_size):
            raise ValueError(f"masks must be (N, S, S) = ({n}, {self.image_size}, {self.image_size}) "
                             f"for {n} frames, got {masks.shape}")
        return masks

    def predict(self, frames: Frames, thresholds: Sequence[float] | np.ndarray | None = None,
                masks: np.ndarray | None = None) -> Prediction:
        """Scores, verdicts and maps for uint8 RGB frames; ``thresholds`` (N,) overrides the image threshold.

        ``masks`` (N, S, S) of 0/1 over the model's map (``detector.roi``): cells at 0 are ignored. For a tiled
        model they are still masks of the squashed frame; each tile gets its part of them.
        """
        n = len(frames)
        tiled = self.metadata.tiling != "none"
        if n == 0:
            empty = np.zeros((0,), np.float32)
            return Prediction(empty, empty.copy(), np.zeros((0,), bool),
                              np.zeros((0, self.image_size, self.image_size), np.float32), empty.copy())
        per_frame = (np.full(n, self.image_threshold, np.float32) if thresholds is None
                     else np.asarray(thresholds, np.float32).reshape(n))
        cells = self._checked_masks(masks, n)
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, self.batch_size):
            end = start + self.batch_size
            if tiled:  # the chunk's tiles run as one batch; per frame: worst tile, stitched map
                parts.append(run_tiled(self._run, frames[start:end], per_frame[start:end], self.image_size,
                                       self.metadata.tiling, self.device, None if cells is None else cells[start:end]))
                continue
            chunk = torch.from_numpy(per_frame[start:end]).to(self.device)
            parts.append(self._run(frames[start:end], chunk, None if cells is None else cells[start:end]))
        scores, normalised, anomalous = (np.concatenate([p[i] for p in parts]) for i in range(3))
        maps = pad_maps([m for p in parts for m in p[3]]) if tiled else np.concatenate([p[3] for p in parts])
        return Prediction(image_scores=scores.astype(np.float32), normalised_scores=normalised.astype(np.float32),
                          anomalous=anomalous.astype(bool), maps=maps.astype(np.float32, copy=False),
                          thresholds=per_frame)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores -> [0, 1] with the image threshold -> 0.5 (the calibrated head's rule)."""
        with torch.inference_mode():
            tensor = torch.as_tensor(np.asarray(scores, np.float32), device=self.device)
            return self.calibrated.normalise(tensor).float().cpu().numpy()
