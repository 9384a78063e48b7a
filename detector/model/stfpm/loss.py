"""STFPM training loss.

Per layer: 0.5 * ||t^ - s^||^2 per position (t^, s^ L2-normalised along channels), averaged over the
batch and the positions; the layer losses are summed. The factor 0.5 is the paper's (and its anomaly
map's), so the loss of a layer equals the mean of that layer's anomaly map; the official code also
sums over the batch, which silently scales the learning rate with the batch size, so we average.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812


def layer_distance(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """0.5 * squared L2 distance of channel-normalised features, per position: (N, C, H, W) -> (N, H, W)."""
    t = F.normalize(teacher.float(), dim=1)
    s = F.normalize(student.float(), dim=1)
    return 0.5 * (t - s).pow(2).sum(dim=1)


def stfpm_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the per-position distance averaged over batch and positions."""
    if len(teacher) != len(student) or not teacher:
        raise ValueError(f"need matching non-empty feature lists, got {len(teacher)} and {len(student)}")
    return torch.stack([layer_distance(t, s).mean() for t, s in zip(teacher, student, strict=True)]).sum()
