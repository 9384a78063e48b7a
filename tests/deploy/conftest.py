"""Fixtures of the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deploy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny calibrated model from ``train_synthetic_model`` (seconds on 2 cores)."""
    import torch

    from linewatch.detector.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("model") / "tiny.safetensors", epochs=1, image_size=64)
