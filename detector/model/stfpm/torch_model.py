"""The STFPM network: frozen pretrained teacher, trainable student, on-device pre-processing and map fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from linewatch.detector.model.stfpm.anomaly_map import fuse_layer_maps
from linewatch.detector.model.stfpm.backbones import get_spec
from linewatch.detector.model.stfpm.loss import layer_distance
from linewatch.errors import InvalidValueError

RESIZE_MODES = ("squash", "letterbox")
# The student learns from scratch in a few hundred SGD steps; with the teacher's TF-style BN momentum
# (0.01) its running statistics would still be mostly their initial values when evaluated.
STUDENT_BN_MOMENTUM = 0.1


PREPROCESS_FLOAT_BYTES = 64 << 20  # largest float copy of input frames preprocess makes at once


def _resize_aa(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _tracing() -> bool:
    """Whether the module is being traced or exported (TorchScript, ONNX, torch.export / dynamo)."""
    compiler = torch.compiler
    exporting = getattr(compiler, "is_exporting", lambda: False)()
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or compiler.is_compiling() or exporting)


def _resize_bounded(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, *size), antialiased bilinear, using bounded memory.

    Small batches take the direct path (float copy, one 2-D resize). Larger ones are resized
    separably, one frame at a time: the horizontal pass runs on row strips converted to float
    one strip at a time, then the (H, S)-sized result is resized vertically. The antialiased
    bilinear filter is separable, so this matches the direct path to float rounding (< 1e-4
    on 0..255 values, measured in tests/detector_service/test_units.py).
    """
    if _tracing():  # exported graphs keep H and W dynamic: no shape arithmetic before this branch
        return _resize_aa(frames.float(), size)
    n, c, h, w = (int(v) for v in frames.shape)
    if n * c * h * w * 4 <= PREPROCESS_FLOAT_BYTES:
        return _resize_aa(frames.float(), size)
    rows = max(1, PREPROCESS_FLOAT_BYTES // (c * w * 4))
    out = []
    for i in range(n):
        frame = frames[i:i + 1]
        strips = [_resize_aa(frame[:, :, top:top + rows].float(), (min(rows, h - top), size[1]))
                  for top in range(0, h, rows)]
        out.append(_resize_aa(torch.cat(strips, dim=2), size))
    return torch.cat(out)


class STFPM(nn.Module):
    """Teacher and student of one architecture; ``forward`` maps uint8 NHWC frames to (scores, maps).

    The teacher stays in eval mode with frozen weights whatever ``train()`` is called with. The
    student has the same architecture, randomly initialised; its batch-norm momentum is PyTorch's
    0.1 (as in the paper's torchvision ResNet), not the TF 0.01 of the lite teacher's definition.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, backbone: str, image_size: int, taps: Sequence[int] | None = None,
                 sigma: float = 0.0, resize_mode: str = "squash", score_top_k: int = 1,
                 tap_weights: Sequence[float] = (), map_taps: Sequence[int] = (),
                 score_taps: Sequence[int] = ()) -> None:
        super().__init__()
        spec = get_spec(backbone)
        if resize_mode not in RESIZE_MODES:
            raise InvalidValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
        self.backbone = backbone
        self.taps = tuple(taps) if taps else spec.default_taps
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        self.resize_mode = resize_mode
        if score_top_k < 1:
            raise InvalidValueError(f"score_top_k must be at least 1, got {score_top_k}")
        self.score_top_k = int(score_top_k)
        self.tap_weights = tuple(float(w) for w in tap_weights)
        if self.tap_weights and (len(self.tap_weights) != len(self.taps)
                                 or not all(math.isfinite(w) and w > 0 for w in self.tap_weights)):
            raise InvalidValueError(f"tap_weights must be one positive number per tap {self.taps}, "
                                    f"got {self.tap_weights}")
        # Two maps from one network: the map shown (``map_taps``, default every tap) and the map the image score
        # is read from (``score_taps``, default the shown one): deep taps can judge large low-contrast regions
        # while the fine ones still show where the defect is.
        self.map_taps, self.score_taps = tuple(map_taps), tuple(score_taps)
        for name, subset in (("map_taps", self.map_taps), ("score_taps", self.score_taps)):
            if not set(subset) <= set(self.taps) or len(set(subset)) != len(subset):
                raise InvalidValueError(f"{name} must be distinct taps among {self.taps}, got {subset}")
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
        """uint8 (N, H, W, 3) RGB -> normalised float (N, 3, S, S) on the frames' device.

        Frames whose float copy would exceed ``PREPROCESS_FLOAT_BYTES`` are resized before they
        become float (see :func:`_resize_bounded`): an 8192x4880 frame no longer costs 480 MB.
        """
        x = frames.permute(0, 3, 1, 2)
        size = self.image_size
        if self.resize_mode == "letterbox" and int(x.shape[-2]) != int(x.shape[-1]):
            h, w = int(x.shape[-2]), int(x.shape[-1])
            # keep the aspect ratio; pad with the edge pixels so borders do not look like defects
            scale = size / max(h, w)
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            x = _resize_bounded(x, (nh, nw))
            top, left = (size - nh) // 2, (size - nw) // 2
            x = F.pad(x, [left, size - nw - left, top, size - nh - top], mode="replicate")
        else:  # always resize (identity at size S): no shape branch, so exported graphs keep H, W dynamic
            x = _resize_bounded(x, (size, size))
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Teacher and student features of normalised input ``x``."""
        with torch.no_grad():
            teacher = self.teacher(x)
        return teacher, self.student(x)

    def maps_from_input(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly maps (N, S, S) of normalised input ``x`` (the maps shown)."""
        return self.scored_maps(x)[0]

    def scored_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps shown, maps the image score is read from), each (N, S, S); the same tensor without score taps."""
        teacher, student = self.features(x)
        layers = [layer_distance(t, s) for t, s in zip(teacher, student, strict=True)]
        maps = self._fuse(layers, self.map_taps)
        return maps, (self._fuse(layers, self.score_taps) if self.score_taps else maps)

    def _fuse(self, layers: list[torch.Tensor], taps: tuple[int, ...]) -> torch.Tensor:
        """The fused product of the layer maps of ``taps`` (all taps when empty), with their fusion weights."""
        picked = [self.taps.index(t) for t in taps] if taps else list(range(len(self.taps)))
        weights = tuple(self.tap_weights[i] for i in picked) if self.tap_weights else ()
        return fuse_layer_maps([layers[i] for i in picked], self.image_size, self.sigma, weights)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """Image score per map: the mean of its ``score_top_k`` largest values (1: the maximum)."""
        flat = maps.flatten(1)
        if self.score_top_k == 1:
            return flat.amax(dim=1)
        return flat.topk(min(self.score_top_k, int(flat.shape[1])), dim=1).values.mean(dim=1)

    def map_cells(self) -> tuple[int, int]:
        """Size of the map shown in feature cells (height, width): the finest feature grid among its taps."""
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.mean.device)
            features = self.teacher(probe)
        shown = [f for tap, f in zip(self.taps, features, strict=True) if not self.map_taps or tap in self.map_taps]
        return max((int(f.shape[-2]), int(f.shape[-1])) for f in shown)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC frames -> (image scores (N,), anomaly maps (N, S, S))."""
        maps, score_maps = self.scored_maps(self.preprocess(frames))
        return self.image_scores(score_maps), maps
