"""The training recipe's parts: learning-rate schedule, early stopping's patience and the student's batch-norm
refresh."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from linewatch.detector.model.training.train import (
    MIN_PATIENCE_UPDATES,
    TrainConfig,
    learning_rate,
    patience_epochs,
    refresh_bn_stats,
)


def test_constant_schedule_is_the_configured_rate() -> None:
    config = TrainConfig(lr=0.4, epochs=10)
    assert {learning_rate(config, p) for p in (0.0, 0.5, 3.0, 9.9)} == {0.4}


def test_cosine_warms_up_over_the_first_epoch_then_decays_to_zero() -> None:
    config = TrainConfig(lr=0.4, epochs=11, lr_schedule="cosine")
    warm = [learning_rate(config, p) for p in (0.0, 0.25, 0.5, 0.99)]
    assert warm == sorted(warm) and warm[0] < 0.05 and warm[-1] == pytest.approx(0.396)
    assert learning_rate(config, 1.0) == pytest.approx(0.4)
    assert learning_rate(config, 6.0) == pytest.approx(0.2)
    assert learning_rate(config, 11.0) == pytest.approx(0.0, abs=1e-12)
    decay = [learning_rate(config, p) for p in range(1, 12)]
    assert decay == sorted(decay, reverse=True)


def test_early_stopping_waits_for_enough_student_updates_on_small_sets() -> None:
    assert MIN_PATIENCE_UPDATES == 100
    assert patience_epochs(3, 39) == 3  # magnetic_tile: 609 images at batch 16, three epochs are 117 updates
    assert patience_epochs(3, 12) == 9  # mvtec3d_tire: 191 images
    assert patience_epochs(3, 2) == 50  # a 26-image paper-web set: no early stop within 20 epochs
    assert patience_epochs(0, 2) == 0  # 0 still runs every epoch


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")


def test_refresh_sets_running_stats_to_the_inputs_statistics_without_touching_weights() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.1))
    net[1].running_mean.fill_(7.0)  # stale statistics, as after a few fast-moving SGD steps
    net[1].running_var.fill_(0.01)
    net.eval()  # the refresh must put the mode back as it found it
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    inputs = torch.randn(40, 3, 5, 5) * 3 + 1
    refresh_bn_stats(net, inputs, batch=8, bf16=False, channels_last=False)
    with torch.no_grad():
        features = net[0](inputs)
    expected_mean = features.mean(dim=(0, 2, 3))
    # the average of per-batch variances (unbiased), which is what a cumulative running average holds
    per_batch = torch.stack([features[i:i + 8].var(dim=(0, 2, 3), unbiased=True) for i in range(0, 40, 8)])
    torch.testing.assert_close(net[1].running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, per_batch.mean(dim=0), rtol=1e-4, atol=1e-5)
    assert net[1].momentum == 0.1 and not net.training
    for key, value in weights.items():
        assert torch.equal(net.state_dict()[key], value), key
