"""Fixtures of the reliability suite: markers, and a tiny calibrated model trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: fault-injection, bad-input, access and soak suite (issue 8)")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated 64 px model from ``train_synthetic_model`` (trained once per session)."""
    import torch

    from linewatch.detector.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", epochs=1, image_size=64)
