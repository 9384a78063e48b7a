"""Per-product models on a running detector: which model scores a frame, and hot swap between batches.

A frame's ``lw-product`` header (or, without one, the configured default product) names the product;
the registry's active version of (product, line) scores it. :class:`ModelRouter` keeps one
:class:`~linewatch.detector.registry.hotswap.ModelWatcher` per product seen, each polling the registry
and loading a newly promoted version off the hot path. Only the detector's worker thread calls
:meth:`ModelRouter.refresh` and :meth:`ModelRouter.model_for`, and it does so between two batches
(refresh) and inside one (model_for), so a switch splits the stream at a batch boundary: every frame
is scored by exactly one model, and the result names its version.

A product seen for the first time is looked up synchronously (one registry query and, when assigned,
one model load on the worker), so the first frames of a changeover are scored, not lost. A product with
no assigned version has no model: its frames are dead-lettered (``no_model_for_product``) unless a
fallback model is configured; its watcher keeps polling, so a later promotion takes effect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.detector.registry.hotswap import Loader, ModelWatcher, RefusalSink
from linewatch.detector.registry.models import Registry
from linewatch.detector.registry.settings import RoutingConfig

log = logging.getLogger(__name__)
NO_MODEL_REASON = "no_model_for_product"


@dataclass
class _Route:
    watcher: ModelWatcher
    model: Any = None


@dataclass
class Swap:
    """A switch made by :meth:`ModelRouter.refresh` (for the log and the metric)."""

    product: str
    old_version: str | None
    new_version: str


@dataclass
class ModelRouter:
    """Models per product for the worker thread; watchers prepare switches in the background."""

    registry: Registry
    config: RoutingConfig
    loader: Loader
    device: str = "cpu"
    fallback_model: Any = None
    on_refused: Callable[[str, str, str], None] | None = None  # (product, version, why)
    refusal_sinks: Sequence[RefusalSink] = ()  # where standing refusals are shown (metric, operator page)
    _routes: dict[str, _Route] = field(default_factory=dict)
    _known_good: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read at start, so a missing golden sample is a configuration error, not a failure mid-changeover.
        self._known_good = {product: _load_image(path) for product, path in self.config.known_good.items()}

    def model_for(self, product: str | None) -> Any:
        """The model that scores a frame of ``product`` now, or None (dead-letter it)."""
        product = product or self.config.default_product
        if product is None:
            return self.fallback_model
        route = self._routes.get(product)
        if route is None:
            if len(self._routes) >= self.config.max_products:
                log.warning("product %s not followed: already %d products", product, len(self._routes))
                return self.fallback_model if self.config.fallback else None
            route = self._follow(product)
        if route.model is not None:
            return route.model
        return self.fallback_model if self.config.fallback else None

    def refresh(self) -> list[Swap]:
        """Install every model the watchers made ready. Call it between two batches (worker thread)."""
        swaps = []
        for product, route in self._routes.items():
            model = route.watcher.take()
            if model is None:
                continue
            old = str(route.model.model_version) if route.model is not None else None
            route.model = model
            swaps.append(Swap(product, old, str(model.model_version)))
            log.info("product %s: switched from model %s to %s", product, old, model.model_version)
        return swaps

    def versions(self) -> dict[str, str | None]:
        """The version in use per followed product (None: none assigned)."""
        routes = dict(self._routes)  # a copy: other threads (health, tests) may ask while the worker adds
        return {p: (str(r.model.model_version) if r.model is not None else None) for p, r in routes.items()}

    def start(self) -> Any:
        """Follow the default product (if any) now; returns its model when one is assigned."""
        if self.config.default_product is None:
            return None
        return self._follow(self.config.default_product).model

    def stop(self) -> None:
        """End every watcher's polling thread."""
        for route in self._routes.values():
            route.watcher.stop()

    def _follow(self, product: str) -> _Route:
        """Start following ``product``: look its assignment up now, then poll in the background."""
        watcher = ModelWatcher(self.registry, product, self.config.line, device=self.device, poll_s=self.config.poll_s,
                               known_good=self._known_good.get(product), loader=self.loader,
                               on_refused=lambda v, why: self._refused(product, v, why),
                               refusal_sinks=self.refusal_sinks)
        route = self._routes[product] = _Route(watcher)
        watcher.check_once()
        route.model = watcher.take()
        if route.model is None:
            log.warning("product %s has no usable model on line %r yet: its frames are %s", product,
                        self.config.line, "scored by the fallback" if self.config.fallback else "dead-lettered")
        watcher.start()
        return route

    def _refused(self, product: str, version: str, why: str) -> None:
        if self.on_refused is not None:
            self.on_refused(product, version, why)


def _load_image(path: Path) -> np.ndarray:
    from linewatch.common.images import load_rgb

    return load_rgb(path)
