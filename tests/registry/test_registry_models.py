"""Model registry on a real PostgreSQL database (and the SQLite default through the CLI)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from linewatch.deploy.cli import main
from linewatch.detector.model.checkpoint import file_sha256
from linewatch.detector.registry.db import Database
from linewatch.detector.registry.errors import RegistryError
from linewatch.detector.registry.models import Registry, _find_metrics
from linewatch.detector.registry.store import FolderStore
from linewatch.errors import DataError

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(pg_database: Database, tmp_path: Path) -> Registry:
    return Registry(pg_database, FolderStore(tmp_path / "store"))


def _product() -> str:
    return f"bracket-{uuid.uuid4().hex[:6]}"  # the session database is shared: each test its own product


def test_register_records_digest_checkpoint_metadata_and_a_verified_copy(registry: Registry, model_a: Path) -> None:
    product = _product()
    record = registry.register(model_a, product=product, notes="first", by="qe-anna")
    digest = file_sha256(model_a)
    assert record.version == digest[:12] and record.sha256 == digest
    assert record.registered_by == "qe-anna" and record.notes == "first" and record.product == product
    assert record.training["n_train"] > 0 and record.training["data_sha256"]
    assert record.image_threshold == pytest.approx(record.calibration["image_threshold"])
    stored = registry.path(record.version[:6])
    assert stored != model_a and file_sha256(stored) == digest
    # the same file again is the same record; for another product it is refused
    assert registry.register(model_a, product=product).registered_by == "qe-anna"
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(model_a, product=_product())


def test_promote_and_rollback_follow_an_append_only_history(registry: Registry, model_a: Path, model_b: Path) -> None:
    product = _product()
    a = registry.register(model_a, product=product).version
    b = registry.register(model_b, product=product).version
    assert registry.active(product) is None
    with pytest.raises(RegistryError, match="no promotion yet"):
        registry.rollback(product=product)
    registry.promote(a, product=product, by="qe")
    registry.promote(b, product=product, by="qe")
    assert registry.active(product).version == b  # type: ignore[union-attr]
    registry.rollback(product=product, by="qe", note="too many alarms")
    assert registry.active(product).version == a  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="only one version"):
        registry.rollback(product=product)
    actions = [(p.action, p.version) for p in registry.history(product)]
    assert actions == [("promote", a), ("promote", b), ("rollback", a)]


def test_a_line_assignment_overrides_the_product_default(registry: Registry, model_a: Path, model_b: Path) -> None:
    product = _product()
    a = registry.register(model_a, product=product).version
    b = registry.register(model_b, product=product).version
    registry.promote(a, product=product)
    registry.promote(b, product=product, line="line-2")
    assert registry.active(product, "line-1").version == a  # type: ignore[union-attr]
    assert registry.active(product, "line-2").version == b  # type: ignore[union-attr]


def test_promotion_is_refused_for_another_product_or_a_damaged_file(registry: Registry, model_a: Path,
                                                                    tmp_path: Path) -> None:
    product = _product()
    version = registry.register(model_a, product=product).version
    with pytest.raises(RegistryError, match="--force"):
        registry.promote(version, product="other")
    registry.store.path_for(file_sha256(model_a)).write_bytes(b"damaged")
    with pytest.raises(RegistryError, match="does not match its digest"):
        registry.promote(version, product=product)
    assert registry.active(product) is None


def test_metrics_beside_the_model_are_recorded_only_when_they_name_the_version(registry: Registry, model_a: Path,
                                                                               tmp_path: Path) -> None:
    model = tmp_path / "m" / "model.safetensors"
    model.parent.mkdir()
    model.write_bytes(model_a.read_bytes())
    version = file_sha256(model)[:12]
    beside = model.parent / "metrics.json"
    beside.write_text(json.dumps({"model_version": "000000000000", "image_auroc": 0.5}))
    assert _find_metrics(model, version, None) is None  # another model's evaluation
    beside.write_text(json.dumps({"model_version": version, "image_auroc": 0.93}))
    assert registry.register(model, product=_product()).metrics == {"model_version": version, "image_auroc": 0.93}


def test_cli_round_trip_on_the_default_sqlite(tmp_path: Path, model_a: Path, model_b: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the default database lives under ./.linewatch
    monkeypatch.delenv("LINEWATCH_REGISTRY__DATABASE_URL", raising=False)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"image_auroc": 0.91}))
    assert main(["models", "register", str(model_a), "--product", "p1", "--metrics", str(metrics)]) == 0
    assert main(["models", "register", str(model_b), "--product", "p1", "--by", "ci"]) == 0
    a, b = file_sha256(model_a)[:12], file_sha256(model_b)[:12]
    assert main(["models", "promote", a, "--product", "p1"]) == 0
    assert main(["models", "promote", b, "--product", "p1"]) == 0
    assert main(["models", "rollback", "--product", "p1"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--product", "p1", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {row["version"] for row in listed} == {a, b}
    assert main(["models", "show", a]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metrics"] == {"image_auroc": 0.91}
    assert [p["action"] for p in shown["promotions"]] == ["promote", "rollback"]
    assert (tmp_path / ".linewatch" / "registry.db").is_file()
    assert main(["models", "show", "ffff00"]) == DataError.exit_code
    assert "no registered version" in capsys.readouterr().err


def test_rolling_back_a_line_override_returns_the_line_to_the_product_default(registry: Registry, model_a: Path,
                                                                              model_b: Path) -> None:
    product = _product()
    a = registry.register(model_a, product=product).version
    b = registry.register(model_b, product=product).version
    with pytest.raises(RegistryError, match="no promotion yet"):
        registry.rollback(product=product, line="line-2")
    registry.promote(b, product=product, line="line-2")
    with pytest.raises(RegistryError, match="only one version"):
        registry.rollback(product=product, line="line-2")  # no product default to fall back to
    registry.promote(a, product=product)
    assert registry.rollback(product=product, line="line-2").version == a
    assert registry.active(product, "line-2").version == a  # type: ignore[union-attr]
