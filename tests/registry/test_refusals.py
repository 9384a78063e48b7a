"""Refused models that people see: a bad promotion becomes a metric, a Redis record and the page's banner,
while the previous model keeps scoring; a rollback or a good promotion clears all three."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from pydantic import SecretStr

from linewatch.common import cache_keys as ck
from linewatch.common.redis_settings import RedisSettings
from linewatch.detector.model.checkpoint import CheckpointError, file_sha256
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.errors import RegistryError
from linewatch.detector.registry.hotswap import (
    ModelRefusedError,
    RedisRefusalBoard,
    Refusal,
    RefusalReason,
    check_model,
    refusal_reason,
)
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.routing import ModelRouter
from linewatch.detector.registry.settings import RoutingConfig
from linewatch.detector.registry.store import FolderStore
from linewatch.detector.service.metrics import DetectorMetrics
from linewatch.ingest.synthetic import render_sample

TOKEN = "Vq3-Rk8sWm2_Lp9xTz4bNc7yHd1fJg6aQe5uKo0iZr2"  # 43 chars, like secrets.token_urlsafe(32)
REFUSED = "linewatch_detector_model_refused"


# --- unit: the reason is a short fixed set, whatever the exception -------------------------------------

@pytest.mark.parametrize(("exc", "reason"), [
    (RegistryError("model file 1a2b does not match its digest (damaged)"), RefusalReason.MODEL_FILE),
    (CheckpointError("x.safetensors failed its integrity check"), RefusalReason.CHECKPOINT),
    (ModelRefusedError(RefusalReason.KNOWN_GOOD, "calls the known-good image anomalous"), RefusalReason.KNOWN_GOOD),
    (RuntimeError("CUDA out of memory"), RefusalReason.LOAD_ERROR),
    (ValueError("unsupported backend"), RefusalReason.LOAD_ERROR),
])
def test_every_refusal_has_a_reason_from_the_fixed_set(exc: Exception, reason: RefusalReason) -> None:
    assert refusal_reason(exc) is reason


def fake_model(version: str, scores: np.ndarray, maps: np.ndarray) -> Any:
    """A model whose warm-up output is given (the checks themselves are under test, not a network)."""
    prediction = SimpleNamespace(image_scores=scores, maps=maps, anomalous=np.zeros(len(scores), bool))
    return SimpleNamespace(model_version=version, image_size=8, image_threshold=1.0, predict=lambda _: prediction,
                           metadata=SimpleNamespace(tiling="none"))


@pytest.mark.parametrize(("model", "reason"), [
    (fake_model("other", np.zeros(1), np.zeros((1, 8, 8))), RefusalReason.VERSION_MISMATCH),
    (fake_model("v1", np.zeros(2), np.zeros((1, 8, 8))), RefusalReason.OUTPUT_SHAPE),
    (fake_model("v1", np.array([np.nan]), np.zeros((1, 8, 8))), RefusalReason.NON_FINITE),
])
def test_each_failed_warm_up_check_names_its_reason(model: Any, reason: RefusalReason) -> None:
    with pytest.raises(ModelRefusedError) as refused:
        check_model(model, "v1", None)
    assert refused.value.reason is reason


def test_the_gauge_has_one_series_per_product_while_its_refusal_stands() -> None:
    metrics = DetectorMetrics()
    value = metrics.registry.get_sample_value
    first = Refusal("bracket", "", "aaaa1111", RefusalReason.MODEL_FILE, "damaged", 1)
    metrics.refusal_stands(first)
    metrics.refusal_stands(first)  # a refresh changes nothing
    assert value(REFUSED, {"product": "bracket", "version": "aaaa1111", "reason": "model_file"}) == 1
    metrics.refusal_stands(Refusal("bracket", "", "bbbb2222", RefusalReason.KNOWN_GOOD, "noisy", 2))
    assert value(REFUSED, {"product": "bracket", "version": "aaaa1111", "reason": "model_file"}) is None
    assert value(REFUSED, {"product": "bracket", "version": "bbbb2222", "reason": "known_good"}) == 1
    metrics.refusal_cleared("bracket", "")
    assert REFUSED + "{" not in generate_latest(metrics.registry).decode()  # gone, not 0: the alert resolves


# --- integration: a real hot swap with a damaged checkpoint in a SQLite registry ----------------------

def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``condition`` until it is truthy (the watcher thread works in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[tuple[Registry, Registry]]:
    """One SQLite registry seen from two hosts: the engineers' (registers and promotes, its store intact) and
    the detector's (its own copy of the store, made by the test). Damaging the detector's copy before a
    promotion gives a bad checkpoint the detector meets at hot swap, with no race against its watcher."""
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    yield Registry(db, FolderStore(tmp_path / "store")), Registry(db, FolderStore(tmp_path / "detector-store"))
    db.close()


@pytest.fixture
def alerts_app(redis_url: str, unique: str) -> Iterator[tuple[TestClient, Any, str]]:
    """The real operator API on the session's Redis (heatmap-cache prefix of this test); the client, Redis
    and prefix. Every key with ``unique`` in it is deleted afterwards (the ``unique`` fixture)."""
    from linewatch.alerts.api import create_app
    from linewatch.alerts.metrics import AlertsMetrics
    from linewatch.alerts.settings import AlertsSettings

    redis = RedisSettings(url=redis_url, key_prefix=f"lwtest-{unique}")
    settings = AlertsSettings(redis=redis, api_token=SecretStr(TOKEN))
    with TestClient(create_app(settings, AlertsMetrics())) as http:
        http.headers["Authorization"] = f"Bearer {TOKEN}"
        yield http, redis.client(), redis.key_prefix


def refusals_on_the_page(http: TestClient) -> list[dict[str, Any]]:
    response = http.get("/api/model-refusals")
    assert response.status_code == 200, response.text
    return list(response.json()["refusals"])


def test_a_damaged_promotion_is_shown_everywhere_and_the_previous_model_keeps_scoring(
        registries: tuple[Registry, Registry], alerts_app: tuple[TestClient, Any, str], model_a: Path,
        model_b: Path, model_c: Path) -> None:
    http, redis, prefix = alerts_app
    registry, detector_registry = registries
    a = registry.register(model_a, product="bracket").version
    b = registry.register(model_b, product="bracket").version
    c = registry.register(model_c, product="bracket").version
    shutil.copytree(registry.store.root, detector_registry.store.root)
    detector_registry.store.path_for(file_sha256(model_b)).write_bytes(b"\0" * 100)  # b damaged on the detector
    registry.promote(a, product="bracket")
    metrics = DetectorMetrics()
    # As the detector wires it: the gauge and the Redis board are the watchers' refusal sinks.
    board = RedisRefusalBoard(redis, prefix, ttl_s=1.0)
    from linewatch.detector.model.inference import AnomalyModel

    router = ModelRouter(detector_registry, RoutingConfig(default_product="bracket", poll_s=0.1),
                         lambda path, device: AnomalyModel.load(path, device), refusal_sinks=(metrics, board))
    frames = [render_sample(seed, size=64).image for seed in range(4)]
    key = ck.model_refusal_key(prefix, "bracket", "")
    refused_b = {"product": "bracket", "version": b, "reason": "model_file"}
    try:
        assert router.start().model_version == a
        expected = router.model_for("bracket").predict(frames).image_scores

        registry.promote(b, product="bracket")
        wait_for(lambda: metrics.registry.get_sample_value(REFUSED, refused_b) == 1, "the refusal metric")
        # The Redis record, refreshed while the refusal stands (TTL 1 s, waited for longer).
        time.sleep(1.5)
        record = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}
        assert {k: record[k] for k in ("product", "line", "version", "reason")} == {**refused_b, "line": ""}
        assert "digest" in record["detail"] and 0 < redis.pttl(key) <= 1000
        assert [(r["product"], r["version"], r["reason"], r["running_version"]) for r in refusals_on_the_page(http)
                ] == [("bracket", b, "model_file", a)]
        # The previous model keeps scoring, unchanged, and no switch is offered to the worker.
        assert router.refresh() == [] and router.versions() == {"bracket": a}
        np.testing.assert_allclose(router.model_for("bracket").predict(frames).image_scores, expected, rtol=1e-5)

        registry.promote(c, product="bracket")  # a good model: switched to, the refusal cleared
        wait_for(lambda: router.refresh(), "the switch to the good model")
        assert router.versions() == {"bracket": c}
        wait_for(lambda: refusals_on_the_page(http) == [], "the banner's record cleared")
        assert REFUSED + "{" not in generate_latest(metrics.registry).decode() and not redis.exists(key)

        registry.rollback(product="bracket")  # back to b: checked again, refused again, c keeps scoring
        wait_for(lambda: metrics.registry.get_sample_value(REFUSED, refused_b) == 1, "the second refusal")
        assert [r["version"] for r in refusals_on_the_page(http)] == [b]
        assert router.refresh() == [] and router.versions() == {"bracket": c}
        registry.rollback(product="bracket")  # back to a, a good model: the refusal is cleared again
        wait_for(lambda: router.refresh(), "the switch back to the first model")
        assert router.versions() == {"bracket": a}
        wait_for(lambda: refusals_on_the_page(http) == [], "the record cleared after the rollback")
        assert metrics.registry.get_sample_value(REFUSED, refused_b) is None
    finally:
        router.stop()


def test_an_expired_record_leaves_the_page(alerts_app: tuple[TestClient, Any, str]) -> None:
    """A detector that dies while refusing stops refreshing its record: it expires and the banner goes."""
    http, redis, prefix = alerts_app
    board = RedisRefusalBoard(redis, prefix, ttl_s=0.3)
    board.refusal_stands(Refusal("gear", "line-2", "cccc3333", RefusalReason.KNOWN_GOOD, "noisy", time.time_ns()))
    assert [(r["product"], r["line"], r["reason"], r["running_version"]) for r in refusals_on_the_page(http)] == [
        ("gear", "line-2", "known_good", "")]  # refused on its first assignment: no model of its own runs
    wait_for(lambda: refusals_on_the_page(http) == [], "the record expiring", timeout_s=5)
    assert not redis.exists(ck.model_refusals_key(prefix))
