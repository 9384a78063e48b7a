"""Fixtures of the model tests: torch on two threads (the trained model is the session's ``tiny_model``)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)

