"""Fixtures of the detector service tests: a tiny model trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A calibrated 64 px model from ``train_synthetic_model`` (trained once per session)."""
    import torch

    from linewatch.detector.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", epochs=1, image_size=64)
