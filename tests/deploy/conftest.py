"""Fixtures of the deploy tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def deploy_model(tiny_model: Path) -> Path:
    """The session's tiny calibrated model (``tiny_model`` of tests/conftest.py)."""
    return tiny_model
