"""Inference API used by the streaming detector, ``predict`` and the evaluation.

``AnomalyModel.load(path).predict(frames)`` takes uint8 RGB frames and returns raw image scores,
normalised scores, verdicts and anomaly maps. Resizing and normalisation run on the model's device,
inside ``torch.inference_mode``; the per-layer maps are fused at feature resolution and upsampled once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.detector.calibrate import Calibration, normalise
from linewatch.detector.checkpoint import CheckpointError, file_sha256, load_checkpoint
from linewatch.detector.device import select_device
from linewatch.detector.stfpm.backbones import BackboneError
from linewatch.detector.stfpm.torch_model import STFPM


@dataclass
class Prediction:
    """Model output for N frames."""

    image_scores: np.ndarray  # (N,) float32, raw STFPM score = max of the map
    normalised_scores: np.ndarray  # (N,) float32 in [0, 1]; the image threshold maps to 0.5
    anomalous: np.ndarray  # (N,) bool, image_score >= image_threshold
    maps: np.ndarray  # (N, S, S) float32 anomaly maps at the model input size S


def build_model(metadata: dict[str, Any]) -> STFPM:
    """An (untrained) STFPM shaped as the checkpoint metadata describes."""
    return STFPM(backbone=str(metadata["backbone"]), image_size=int(metadata["image_size"]),
                 taps=[int(t) for t in metadata["taps"]], sigma=float(metadata.get("sigma", 0.0)),
                 resize_mode=str(metadata.get("resize_mode", "squash")))


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
    """A calibrated STFPM model ready for inference."""

    def __init__(self, model: STFPM, metadata: dict[str, Any], model_version: str, device: torch.device,
                 channels_last: bool = False, batch_size: int = 32) -> None:
        self.metadata = metadata
        self.calibration = Calibration.from_dict(metadata["calibration"])
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

    @classmethod
    def load(cls, path: str | Path, device: str | None = "auto", *, channels_last: bool = False) -> AnomalyModel:
        """Load a checkpoint; any unusable file raises :class:`CheckpointError` with a clear message."""
        state, metadata = load_checkpoint(path)
        try:
            model = build_model(metadata)
        except (KeyError, TypeError, ValueError, BackboneError) as exc:
            raise CheckpointError(f"{path}: checkpoint metadata does not describe a model ({exc})") from exc
        if "calibration" not in metadata:
            raise CheckpointError(f"{path}: checkpoint is not calibrated (no thresholds)")
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or extra or wrong:
            raise CheckpointError(f"{path}: weights do not match the {metadata['backbone']} architecture "
                                  f"(missing {missing[:3]}, unexpected {extra[:3]}, wrong shapes {wrong[:3]})")
        model.load_state_dict(state)
        return cls(model, metadata, file_sha256(path)[:12], select_device(device), channels_last=channels_last)

    def map_to_image(self, anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """One (S, S) map in the original image's pixels (H, W): undo the letterbox padding, then resize."""
        import cv2

        h, w = int(shape[0]), int(shape[1])
        m = np.asarray(anomaly_map, np.float32)
        if self.model.resize_mode == "letterbox" and h != w:
            size = self.image_size
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            top, left = (size - nh) // 2, (size - nw) // 2
            m = m[top:top + nh, left:left + nw]
        return cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores -> [0, 1], with the image threshold -> 0.5."""
        return normalise(scores, self.image_threshold, self.calibration.log_scale)

    @torch.inference_mode()
    def _run(self, frames: np.ndarray | Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            if frames.dtype != np.uint8 or frames.shape[-1] != 3:
                raise ValueError(f"a frame batch must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
            batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
            x = self.model.preprocess(batch)
        else:
            # different sizes: resize each on the device, then run one batch
            x = torch.cat([self.model.preprocess(torch.from_numpy(_as_uint8_rgb(f)).to(self.device)[None])
                           for f in frames])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        maps = self.model.maps_from_input(x)
        return maps.flatten(1).amax(dim=1), maps

    def predict(self, frames: np.ndarray | Sequence[np.ndarray]) -> Prediction:
        """Scores, verdicts and maps for uint8 RGB frames: (N, H, W, 3), or a list of (H, W, 3) of any sizes."""
        n = len(frames)
        size = self.image_size
        if n == 0:
            empty = np.zeros((0,), np.float32)
            return Prediction(empty, empty.copy(), np.zeros((0,), bool), np.zeros((0, size, size), np.float32))
        scores, maps = [], []
        for start in range(0, n, self.batch_size):
            s, m = self._run(frames[start:start + self.batch_size])
            scores.append(s.float().cpu().numpy())
            maps.append(m.float().cpu().numpy())
        image_scores = np.concatenate(scores).astype(np.float32)
        return Prediction(image_scores=image_scores, normalised_scores=self.normalise(image_scores),
                          anomalous=image_scores >= self.image_threshold, maps=np.concatenate(maps))
