"""Shared fixtures: one real local broker and one real Redis per test session.

``LINEWATCH_FULL=1`` switches the slow suites (training, fault injection, soak) from
their reduced size to full size; see the README.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from linewatch.deploy.local import LocalStack, start_local_stack

FULL_SIZE = os.environ.get("LINEWATCH_FULL") == "1"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic_tile" / "magnetic_tile"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The real broker (Tansu) and Redis, started once for the whole session."""
    local = start_local_stack(tmp_path_factory.mktemp("stack"))
    yield local
    local.stop()


@pytest.fixture
def bootstrap(stack: LocalStack) -> str:
    """``bootstrap.servers`` of the session's broker."""
    return stack.bootstrap_servers


@pytest.fixture
def redis_url(stack: LocalStack) -> str:
    """URL of the session's Redis."""
    return stack.redis_url


@pytest.fixture
def unique() -> str:
    """A short unique name for topics, groups and Redis key prefixes of one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def magnetic_tile() -> Path:
    """The real magnetic_tile data set; the test is skipped when it is absent."""
    if not (SHARED_DATA / "train" / "good").is_dir():
        pytest.skip(f"real data set not found at {SHARED_DATA} (only present beside a linewatch checkout in CI)")
    return SHARED_DATA
