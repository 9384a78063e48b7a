"""STFPM anomaly map: per-layer distances fused by product at feature resolution, upsampled once."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from linewatch.detector.model.stfpm.loss import layer_distance


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (N, 1, H, W) maps (reflect padding, kernel radius 4 sigma)."""
    radius = max(1, math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(maps, [radius, radius, radius, radius], mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def fuse_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], output_size: int,
              sigma: float = 0.0, weights: Sequence[float] = ()) -> torch.Tensor:
    """Anomaly maps (N, S, S): layer maps upsampled to the finest feature size, multiplied, upsampled to S.

    Fusing at feature resolution and upsampling once is the paper's product of maps up to the
    interpolation order (bilinear commutes with the product only approximately) and is several times
    cheaper than upsampling every layer to the input size. ``sigma`` > 0 adds Gaussian smoothing (not in
    the paper; off by default). ``weights`` (one per layer; empty: all 1) are exponents of the layer
    maps in the product: a weighted geometric fusion, where a larger deep-layer exponent leans the map
    toward the layer that sees large regions while the fine layers still place the defect.
    """
    layers = [layer_distance(t, s) for t, s in zip(teacher, student, strict=True)]
    return fuse_layer_maps(layers, output_size, sigma, weights)


def fuse_layer_maps(layer_maps: Sequence[torch.Tensor], output_size: int, sigma: float = 0.0,
                    weights: Sequence[float] = ()) -> torch.Tensor:
    """:func:`fuse_maps` from per-layer distance maps (N, h, w) (benchmarks score variants from them)."""
    layers = [m.unsqueeze(1) for m in layer_maps]
    size = max((m.shape[-2], m.shape[-1]) for m in layers)
    powers = tuple(weights) or (1.0,) * len(layers)
    if len(powers) != len(layers):
        raise ValueError(f"{len(powers)} fusion weights for {len(layers)} feature layers")
    fused: torch.Tensor | None = None
    for m, power in zip(layers, powers, strict=True):
        if m.shape[-2:] != size:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        if power != 1.0:  # equal weights trace to the plain product (no Power nodes in exported graphs)
            m = m**power  # distances are >= 0, so any real exponent is defined
        fused = m if fused is None else fused * m
    if fused is None:
        raise ValueError("no feature layers to fuse")
    fused = F.interpolate(fused, size=(output_size, output_size), mode="bilinear", align_corners=False)
    if sigma > 0:
        fused = gaussian_blur(fused, sigma)
    return fused.squeeze(1)
