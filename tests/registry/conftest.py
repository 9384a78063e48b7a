"""Fixtures of the registry tests: a throwaway PostgreSQL database per session, a second tiny model.

PostgreSQL: ``LINEWATCH_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``,
trust auth) is the maintenance connection; the session creates ``lw_test_<random>`` there and
drops it at the end. Where no server answers, the tests that need it skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from linewatch.detector.registry.db import Base, Database

ADMIN_URL = os.environ.get("LINEWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a database created for this session (dropped afterwards)."""
    import psycopg

    name = f"lw_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL} ({str(exc).strip().splitlines()[0]}); "
                    "set LINEWATCH_TEST_POSTGRES to a server that trusts this user")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(postgres_url: str) -> Iterator[Database]:
    """The session database with fresh tables: each test starts empty (tables dropped afterwards)."""
    db = Database(postgres_url)
    try:
        yield db
    finally:
        Base.metadata.drop_all(db.engine)
        db.close()


@pytest.fixture(scope="session")
def model_a(tiny_model: Path) -> Path:
    """The session's tiny calibrated synthetic model (seed 0): the version that is active first."""
    return tiny_model


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model (seed 1): another version."""
    from linewatch.detector.model.training.train import train_synthetic_model

    return train_synthetic_model(tmp_path_factory.mktemp("model_b") / "b.safetensors", epochs=1, seed=1)


@pytest.fixture(scope="session")
def model_c(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third tiny model (seed 2): the version promoted mid-stream in the end-to-end test."""
    from linewatch.detector.model.training.train import train_synthetic_model

    return train_synthetic_model(tmp_path_factory.mktemp("model_c") / "c.safetensors", epochs=1, seed=2)
