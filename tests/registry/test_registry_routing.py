"""Per-product routing on the detector side (ModelRouter over an embedded SQLite registry) and lw-product."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from linewatch.detector.model.checkpoint import file_sha256
from linewatch.detector.model.inference import AnomalyModel
from linewatch.detector.registry.models import Registry, open_registry
from linewatch.detector.registry.routing import ModelRouter
from linewatch.detector.registry.settings import RoutingConfig
from linewatch.ingest.settings import CameraSettings
from linewatch.ingest.wire import WireFormatError, decode_headers, encode_frame

pytestmark = pytest.mark.unit


def _load(path: Path, device: str) -> AnomalyModel:
    return AnomalyModel.load(path, device)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return open_registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "store")


def _router(registry: Registry, **config: object) -> ModelRouter:
    refusals: list[tuple[str, str, str]] = []
    router = ModelRouter(registry, RoutingConfig.model_validate({"poll_s": 3600, **config}), _load,
                         on_refused=lambda *args: refusals.append(args))
    router.refusals = refusals  # type: ignore[attr-defined]
    return router


def test_each_product_gets_its_assigned_model_and_unassigned_ones_none_or_the_fallback(
        registry: Registry, model_a: Path, model_b: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    b = registry.register(model_b, product="gear").version
    registry.promote(a, product="bracket")
    registry.promote(b, product="gear")
    router = _router(registry, default_product="gear")
    try:
        assert router.start().model_version == b
        assert router.model_for("bracket").model_version == a
        assert router.model_for(None).model_version == b, "frames without lw-product are the default product's"
        assert router.model_for("hinge") is None, "no assigned model: the frame is dead-lettered"
        assert router.versions() == {"gear": b, "bracket": a, "hinge": None}
    finally:
        router.stop()
    fallback = _router(registry, fallback=True)
    fallback.fallback_model = sentinel = object()
    try:
        assert fallback.model_for("hinge") is sentinel and fallback.model_for(None) is sentinel
        assert fallback.model_for("bracket").model_version == a
    finally:
        fallback.stop()


def test_a_promotion_switches_only_at_refresh_and_a_refused_one_keeps_the_old_model(
        registry: Registry, model_a: Path, model_b: Path, model_c: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    c = registry.register(model_c, product="bracket").version
    b = registry.register(model_b, product="bracket").version
    registry.promote(a, product="bracket")
    router = _router(registry)
    try:
        assert router.model_for("bracket").model_version == a
        registry.promote(c, product="bracket", line="line-1")  # a line's own promotion: not this detector's line
        registry.promote(c, product="bracket")
        watcher = router._routes["bracket"].watcher
        assert watcher.check_once() == c  # the background poll, made deterministic
        assert router.model_for("bracket").model_version == a, "no switch inside a batch"
        swaps = router.refresh()
        assert [(s.product, s.old_version, s.new_version) for s in swaps] == [("bracket", a, c)]
        assert router.model_for("bracket").model_version == c and router.refresh() == []

        registry.promote(b, product="bracket")
        registry.store.path_for(file_sha256(model_b)).write_bytes(b"\0" * 64)  # damaged in the store
        assert watcher.check_once() is None and router.refresh() == []
        assert router.model_for("bracket").model_version == c, "the running model stays"
        assert router.refusals == [("bracket", b, router.refusals[0][2])]  # type: ignore[attr-defined]
        assert "digest" in router.refusals[0][2]  # type: ignore[attr-defined]
    finally:
        router.stop()


def test_the_polling_thread_picks_up_an_assignment_for_a_product_first_seen_without_one(
        registry: Registry, model_a: Path) -> None:
    a = registry.register(model_a, product="bracket").version
    router = _router(registry, poll_s=0.1)
    try:
        assert router.model_for("bracket") is None
        registry.promote(a, product="bracket")
        deadline = time.monotonic() + 60
        while not router.refresh() and time.monotonic() < deadline:
            router._routes["bracket"].watcher._stop.wait(0.05)
        assert router.model_for("bracket").model_version == a
    finally:
        router.stop()


def test_products_beyond_the_limit_are_not_followed(registry: Registry) -> None:
    router = _router(registry, max_products=2)
    try:
        assert [router.model_for(p) for p in ("p1", "p2", "p3")] == [None, None, None]
        assert set(router.versions()) == {"p1", "p2"}
    finally:
        router.stop()


def test_a_missing_known_good_image_is_a_configuration_error(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises((OSError, ValueError)):
        _router(registry, known_good={"bracket": tmp_path / "missing.png"})


def test_lw_product_round_trips_and_follows_the_id_rule() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    frame = encode_frame(image, camera_id="cam-1", line_id="line-1", sequence=1, capture_ns=1, product="bracket.v2")
    assert ("lw-product", b"bracket.v2") in frame.headers
    assert decode_headers(frame.headers).product == "bracket.v2"
    plain = encode_frame(image, camera_id="cam-1", line_id="line-1", sequence=1, capture_ns=1)
    assert decode_headers(plain.headers).product is None
    for bad in (b"a/b", b"", b"-x", b"x" * 65, "br\u00e4cket".encode()):
        with pytest.raises(WireFormatError) as info:
            decode_headers([*plain.headers, ("lw-product", bad)])
        assert info.value.reason in ("bad_product", "bad_header")
    with pytest.raises(WireFormatError):
        encode_frame(image, camera_id="cam-1", line_id="line-1", sequence=1, capture_ns=1, product="a b")
    assert CameraSettings(product="gear").product == "gear"
    with pytest.raises(ValidationError):
        CameraSettings(product="gear/1")


def test_the_demo_registers_and_promotes_its_model_and_a_detector_from_its_env_follows_it(
        model_a: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linewatch.detector.registry.demo import promote_for_demo
    from linewatch.detector.service.settings import DetectorSettings

    first = promote_for_demo(model_a, tmp_path / "registry")
    again = promote_for_demo(model_a, tmp_path / "registry")  # a second demo run with the cached model
    assert first.version == again.version == file_sha256(model_a)[:12]
    assert again.summary["history"] == [f"promote {first.version} by linewatch demo"], "promoted once"
    for name, value in first.detector_env.items():
        monkeypatch.setenv(name, value)
    settings = DetectorSettings()
    assert settings.registry is not None and settings.routing.default_product == "demo-part"
    router = ModelRouter(open_registry(settings.registry.database_url, settings.registry.model_store),
                         settings.routing, _load)
    try:
        assert router.start().model_version == first.version
    finally:
        router.stop()
