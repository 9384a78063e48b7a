"""The STFPM network: frozen pretrained teacher, trainable student, on-device pre-processing and map fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from linewatch.detector.stfpm.anomaly_map import fuse_maps
from linewatch.detector.stfpm.backbones import get_spec

RESIZE_MODES = ("squash", "letterbox")
# The student learns from scratch in a few hundred SGD steps; with the teacher's TF-style BN momentum
# (0.01) its running statistics would still be mostly their initial values when evaluated.
STUDENT_BN_MOMENTUM = 0.1


class STFPM(nn.Module):
    """Teacher and student of one architecture; ``forward`` maps uint8 NHWC frames to (scores, maps).

    The teacher stays in eval mode with frozen weights whatever ``train()`` is called with. The
    student has the same architecture, randomly initialised; its batch-norm momentum is PyTorch's
    0.1 (as in the paper's torchvision ResNet), not the TF 0.01 of the lite teacher's definition.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: str, image_size: int, taps: Sequence[int] | None = None,
                 sigma: float = 0.0, resize_mode: str = "squash") -> None:
        super().__init__()
        spec = get_spec(backbone)
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.backbone = backbone
        self.taps = tuple(taps) if taps else spec.default_taps
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        self.resize_mode = resize_mode
        self.teacher = spec.build(self.taps)
        self.student = spec.build(self.taps)
        for module in self.student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = STUDENT_BN_MOMENTUM
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def train(self, mode: bool = True) -> STFPM:
        """Switch the student's mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> normalised float (N, 3, S, S) on the frames' device."""
        x = frames.permute(0, 3, 1, 2).float()
        size = self.image_size
        if self.resize_mode == "letterbox" and int(x.shape[-2]) != int(x.shape[-1]):
            h, w = int(x.shape[-2]), int(x.shape[-1])
            # keep the aspect ratio; pad with the edge pixels so borders do not look like defects
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
            top, left = (size - nh) // 2, (size - nw) // 2
            x = F.pad(x, [left, size - nw - left, top, size - nh - top], mode="replicate")
        else:  # always resize (identity at size S): no shape branch, so exported graphs keep H, W dynamic
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of normalised input ``x``."""
        with torch.no_grad():
            teacher = self.teacher(x)
        return teacher, self.student(x)

    def maps_from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly maps (N, S, S) of normalised input ``x``."""
        teacher, student = self.features(x)
        return fuse_maps(teacher, student, self.image_size, self.sigma)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC frames -> (image scores (N,), anomaly maps (N, S, S)); score = max of the map."""
        maps = self.maps_from_input(self.preprocess(frames))
        return maps.flatten(1).amax(dim=1), maps
