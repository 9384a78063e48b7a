"""Fixtures of the end-to-end tests: a tiny calibrated model, trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def e2e_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px model from ``train_synthetic_model`` (seconds on 2 cores)."""
    import torch

    from linewatch.detector.train import train_synthetic_model

    torch.set_num_threads(2)
    return train_synthetic_model(tmp_path_factory.mktemp("e2e-model") / "tiny.safetensors", epochs=1,
                                 image_size=64)
