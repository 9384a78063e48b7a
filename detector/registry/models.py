"""Register, list, show, promote and roll back model versions.

A version is the first 12 hex digits of the checkpoint file's sha256, the same string the detector
writes as ``model_version`` in every result, so audit rows join the registry without a mapping.
Promotions are an append-only history per (product, line): ``promote`` pushes a version, ``rollback``
pops the latest one and re-activates the one before. The active version of a (product, line) is
the top of that stack; a line with an empty stack (no history, or its override rolled back) uses
the product's every-line stack.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from linewatch.detector.model.checkpoint import CheckpointError, file_sha256, load_checkpoint
from linewatch.detector.registry.db import ALL_LINES, Database, ModelVersion, Promotion
from linewatch.detector.registry.errors import RegistryError
from linewatch.detector.registry.store import FolderStore

FEEDBACK_MANIFEST = "feedback_manifest.json"  # written by `dataset export --feedback`, read by register


def current_user() -> str:
    """The OS user running the command (``unknown`` where the platform cannot tell)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER", "unknown")


def _read_metadata(path: Path) -> dict[str, Any]:
    """Checkpoint metadata, verified (a damaged or edited file is refused before it is registered)."""
    _state, metadata = load_checkpoint(path)
    if "calibration" not in metadata:
        raise CheckpointError(f"{path}: checkpoint is not calibrated (no thresholds); it cannot be registered")
    return metadata


def _find_metrics(model: Path, version: str, given: Path | None) -> dict[str, Any] | None:
    """metrics.json given explicitly, else one beside the model that names this version."""
    if given is not None:
        try:
            return dict(json.loads(given.read_text()))
        except (OSError, ValueError) as exc:
            raise RegistryError(f"cannot read metrics {given}: {exc}") from exc
    for candidate in (model.parent / "metrics.json", model.with_suffix("") / "metrics.json"):
        try:
            metrics = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(metrics, dict) and metrics.get("model_version") == version:
            return metrics
    return None


def _feedback_ids(trained_on: Path | None) -> list[int]:
    """Feedback ids of an exported data set (its manifest), so a version records what it learnt from."""
    if trained_on is None:
        return []
    manifest = trained_on / FEEDBACK_MANIFEST
    try:
        return [int(i) for i in json.loads(manifest.read_text()).get("feedback_ids", [])]
    except (OSError, ValueError, AttributeError) as exc:
        raise RegistryError(f"{manifest}: not a feedback export manifest ({exc})") from exc


class Registry:
    """The model registry: records in a database, files in a content-addressed store."""

    def __init__(self, db: Database, store: FolderStore) -> None:
        self.db, self.store = db, store

    def register(self, model: Path, *, product: str, notes: str = "", by: str | None = None,
                 metrics: Path | None = None, trained_on: Path | None = None) -> ModelVersion:
        """Verify ``model``, copy it into the store and record it (idempotent for the same product)."""
        product = _name(product, "product")
        metadata = _read_metadata(model)
        sha256 = file_sha256(model)
        version = sha256[:12]
        with self.db.session() as session:
            existing = session.get(ModelVersion, version)
            if existing is not None:
                if existing.product != product:
                    raise RegistryError(f"version {version} is already registered for product {existing.product!r}")
                return existing
        stored = self.store.put(model, sha256)
        calibration = dict(metadata["calibration"])
        record = ModelVersion(
            version=version, sha256=sha256, product=product, backbone=str(metadata.get("backbone", "")),
            image_size=int(metadata.get("image_size", 0)),
            image_threshold=float(calibration["image_threshold"]),
            pixel_threshold=float(calibration["pixel_threshold"]),
            tensor_sha256=str(metadata["tensor_sha256"]), metadata_sha256=str(metadata["metadata_sha256"]),
            calibration=calibration,
            training={**metadata.get("training", {}), "versions": metadata.get("versions", {})},
            metrics=_find_metrics(model, version, metrics), feedback_ids=_feedback_ids(trained_on), notes=notes,
            registered_by=by or current_user(), store_path=str(stored), size_bytes=stored.stat().st_size)
        with self.db.session() as session:
            session.add(record)
        return record

    def get(self, version: str) -> ModelVersion:
        """The version named by its full 12 digits or a unique prefix (at least 4 digits)."""
        version = version.strip().lower()
        if len(version) < 4:
            raise RegistryError(f"version {version!r} is too short; give at least 4 hex digits")
        with self.db.session() as session:
            found = session.scalars(select(ModelVersion).where(ModelVersion.version.startswith(version[:12]))
                                    .limit(2)).all()
        if not found:
            raise RegistryError(f"no registered version {version!r}")
        if len(found) > 1:
            raise RegistryError(f"version prefix {version!r} is ambiguous; give more digits")
        return found[0]

    def versions(self, product: str | None = None) -> list[ModelVersion]:
        """Registered versions, newest first, optionally of one product."""
        query = select(ModelVersion).order_by(ModelVersion.registered_at.desc())
        if product:
            query = query.where(ModelVersion.product == product)
        with self.db.session() as session:
            return list(session.scalars(query).all())

    def path(self, version: str) -> Path:
        """The verified model file of a version."""
        return self.store.get(self.get(version).sha256)

    def history(self, product: str, line: str = ALL_LINES) -> list[Promotion]:
        """The promotion history of one (product, line), oldest first."""
        with self.db.session() as session:
            return list(session.scalars(select(Promotion).where(Promotion.product == product, Promotion.line == line)
                                        .order_by(Promotion.id)).all())

    def active(self, product: str, line: str = ALL_LINES) -> ModelVersion | None:
        """The version assigned to ``line`` of ``product`` (its own history, else the every-line one)."""
        for scope in dict.fromkeys((line, ALL_LINES)):
            stack = _effective_stack(self.history(product, scope))
            if stack:
                return self.get(stack[-1])
        return None

    def promote(self, version: str, *, product: str, line: str = ALL_LINES, by: str | None = None,
                note: str = "", force: bool = False) -> Promotion:
        """Make ``version`` the active one of (product, line); refuses another product's model unless forced."""
        record = self.get(version)
        if record.product != product and not force:
            raise RegistryError(f"version {record.version} was registered for product {record.product!r}, not "
                                f"{product!r}; pass --force to promote it anyway")
        self.store.get(record.sha256)  # refuse a promotion whose file is gone or damaged
        return self._append(product, line, record.version, "promote", by, note)

    def rollback(self, *, product: str, line: str = ALL_LINES, by: str | None = None, note: str = "") -> Promotion:
        """Re-activate the version that was active before the latest promotion of (product, line).

        Rolling back a line's only promotion removes the line's override: the line follows the
        product's every-line assignment again (the rollback row names that version).
        """
        stack = _effective_stack(self.history(product, line))
        where = f"product {product!r}" + (f" line {line!r}" if line else "")
        if len(stack) >= 2:
            return self._append(product, line, stack[-2], "rollback", by, note)
        fallback = _effective_stack(self.history(product, ALL_LINES)) if line != ALL_LINES and stack else []
        if fallback:
            return self._append(product, line, fallback[-1], "rollback", by, note)
        raise RegistryError(f"nothing to roll back to for {where}: "
                            f"{'no promotion yet' if not stack else 'only one version was ever active'}")

    def _append(self, product: str, line: str, version: str, action: str, by: str | None, note: str) -> Promotion:
        entry = Promotion(product=_name(product, "product"), line=line, version=version, action=action,
                          by=by or current_user(), note=note)
        with self.db.session() as session:
            session.add(entry)
        return entry


def _effective_stack(history: list[Promotion]) -> list[str]:
    """Replay the history: promote pushes, rollback pops (its row names the version it re-activated)."""
    stack: list[str] = []
    for entry in history:
        if entry.action == "promote":
            stack.append(entry.version)
        elif entry.action == "rollback" and stack:
            stack.pop()
    return stack


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not value or len(value) > 200:
        raise RegistryError(f"{what} must be 1 to 200 characters, got {value!r}")
    return value


def open_registry(database_url: str, model_store: Path) -> Registry:
    """A registry on ``database_url`` with its files under ``model_store``."""
    return Registry(Database(database_url), FolderStore(model_store))
