"""Fixtures of the model tests: one tiny synthetic model per session (a few seconds on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a calibrated model trained on synthetic good parts (image size 64)."""
    from linewatch.detector.train import train_synthetic_model

    return train_synthetic_model(tmp_path_factory.mktemp("model") / "synthetic.safetensors")
