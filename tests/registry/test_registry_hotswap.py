"""The detector-side half of hot swap: a watcher that follows promotions and refuses bad models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from linewatch.detector.model.checkpoint import file_sha256
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.hotswap import ModelWatcher
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.store import FolderStore
from linewatch.ingest.synthetic import render_sample

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(pg_database: Database, tmp_path: Path) -> Registry:
    return Registry(pg_database, FolderStore(tmp_path / "store"))


def test_promotions_are_handed_over_once_each_and_rollback_follows(registry: Registry, model_a: Path,
                                                                   model_b: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    b = registry.register(model_b, product="bracket").version
    watcher = ModelWatcher(registry, "bracket", "line-1")
    assert watcher.check_once() is None and watcher.take() is None  # nothing assigned yet
    registry.promote(a, product="bracket")
    assert watcher.check_once() == a
    assert watcher.take().model_version == a and watcher.take() is None
    assert watcher.check_once() is None  # already running
    registry.promote(b, product="bracket", line="line-1")
    assert watcher.check_once() == b and watcher.take().model_version == b
    registry.rollback(product="bracket", line="line-1")
    assert watcher.check_once() == a and watcher.current_version == b  # switches only when taken
    assert watcher.take().model_version == a and watcher.current_version == a


def test_a_damaged_file_or_a_model_that_fails_the_known_good_image_is_refused(registry: Registry, model_a: Path,
                                                                               model_b: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    b = registry.register(model_b, product="bracket").version
    refusals: list[tuple[str, str]] = []
    watcher = ModelWatcher(registry, "bracket", current_version=a, on_refused=lambda v, why: refusals.append((v, why)))
    registry.promote(b, product="bracket")
    registry.store.path_for(file_sha256(model_b)).write_bytes(b"\0" * 100)  # damaged after the promotion
    assert watcher.check_once() is None and watcher.take() is None
    assert refusals and refusals[0][0] == b and "digest" in refusals[0][1]
    assert watcher.current_version == a

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # nothing like a part
    strict = ModelWatcher(registry, "bracket", known_good=noise, on_refused=lambda v, why: refusals.append((v, why)))
    registry.promote(a, product="bracket")
    assert strict.check_once() is None, "a model that calls noise good must be refused"
    assert "known-good" in refusals[-1][1]


def test_the_polling_thread_makes_a_promotion_ready(registry: Registry, model_a: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    good = render_sample(3, size=64, defect_probability=0.0).image
    watcher = ModelWatcher(registry, "bracket", poll_s=0.2).start()
    try:
        registry.promote(a, product="bracket")
        deadline = time.monotonic() + 60
        model = None
        while model is None and time.monotonic() < deadline:
            model = watcher.take()
            watcher._stop.wait(0.05)
        assert model is not None and model.model_version == a
        assert np.isfinite(model.predict([good]).image_scores).all()
    finally:
        watcher.stop()
