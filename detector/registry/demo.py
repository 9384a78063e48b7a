"""The demo's promotion: register the trained model, promote it, and point the detector at the registry.

``linewatch demo`` calls :func:`promote_for_demo` after training and before starting the detector::

    promotion = promote_for_demo(model.path, a.out / "registry", product=DEMO_PRODUCT)
    env.update(promotion.detector_env)          # the detector follows the registry (hot swap on)
    extra["promotion"] = promotion.summary      # the summary names the version that scored the line

The registry is the embedded SQLite default under the demo's output folder, so the demo needs no
database server; ``linewatch models list --database-url sqlite:///OUT/registry/registry.db`` shows it after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linewatch.detector.registry.models import open_registry

DEMO_PRODUCT = "demo-part"


@dataclass(frozen=True)
class DemoPromotion:
    """What the demo registered and promoted, and how the detector finds it."""

    version: str
    product: str
    database_url: str
    model_store: Path
    summary: dict[str, Any]

    @property
    def detector_env(self) -> dict[str, str]:
        """Environment of a detector that scores the product's frames with the promoted version."""
        return {"LINEWATCH_REGISTRY__DATABASE_URL": self.database_url,
                "LINEWATCH_REGISTRY__MODEL_STORE": str(self.model_store),
                "LINEWATCH_ROUTING__DEFAULT_PRODUCT": self.product}


def promote_for_demo(model: Path, folder: Path, *, product: str = DEMO_PRODUCT, by: str = "linewatch demo",
                     line: str = "") -> DemoPromotion:
    """Register ``model`` for ``product`` in a registry under ``folder`` and promote it (idempotent per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{(folder / 'registry.db').resolve()}"
    store = (folder / "models").resolve()
    registry = open_registry(url, store)
    try:
        record = registry.register(model, product=product, notes="trained by linewatch demo", by=by)
        active = registry.active(product, line)
        if active is None or active.version != record.version:
            registry.promote(record.version, product=product, line=line, by=by, note="demo run")
        summary = {"version": record.version, "product": product, "line": line or "(every line)",
                   "registered_by": record.registered_by, "promoted_by": by,
                   "history": [f"{p.action} {p.version} by {p.by}" for p in registry.history(product, line)],
                   "database_url": url}
    finally:
        registry.db.close()
    return DemoPromotion(record.version, product, url, store, summary)
