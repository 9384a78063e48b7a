"""Hot swap, detector side: learn of promotions, load and check the new model off the hot path.

:class:`ModelWatcher` polls the registry for the version assigned to one (product, line). When it
changes, a background thread loads the checkpoint from the content-addressed store and checks it:

- the digest: the stored file matches its sha256 (store) and the loaded model's version is the one
  assigned (nothing was swapped underneath);
- the shapes: the model scores a frame and returns one finite score and one (S, S) map;
- a known-good image (the product's golden sample, when configured) is not called anomalous.

A model that fails any check is refused: the running one stays, ``refused`` records why and the
``on_refused`` callback fires (the service raises its alert there). The detector's worker calls
:meth:`ModelWatcher.take` between two batches, so the switch happens at a batch boundary: every
frame is scored by exactly one model and every result names it. See README.md for the hook.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from linewatch.detector.checkpoint import CheckpointError
from linewatch.detector.registry.db import ALL_LINES, RegistryError
from linewatch.detector.registry.models import Registry
from linewatch.detector.tiling import part_map_shape

log = logging.getLogger(__name__)
Loader = Callable[[Any, str], Any]


class ModelRefusedError(ValueError):
    """A newly assigned model failed a check; the running model stays."""


def _default_loader(path: Any, device: str) -> Any:
    from linewatch.detector.inference import AnomalyModel

    return AnomalyModel.load(path, device)


def check_model(model: Any, version: str, known_good: np.ndarray | None) -> None:
    """Raise :class:`ModelRefusedError` unless ``model`` is ``version`` and scores sanely."""
    if str(model.model_version) != version:
        raise ModelRefusedError(f"loaded model is {model.model_version}, the registry assigned {version}")
    probe = known_good if known_good is not None else np.full((model.image_size, model.image_size, 3), 128, np.uint8)
    prediction = model.predict([probe])
    size = model.image_size
    tiling = model.metadata.tiling  # a tiled model maps a long probe to its part map, not (S, S)
    height, width = int(probe.shape[0]), int(probe.shape[1])
    expected = (1, size, size) if tiling == "none" else (1, *part_map_shape(height, width, size, tiling))
    if prediction.image_scores.shape != (1,) or prediction.maps.shape != expected:
        raise ModelRefusedError(f"model {version} returned scores {prediction.image_scores.shape} and maps "
                          f"{prediction.maps.shape}; expected (1,) and {expected}")
    if not np.isfinite(prediction.image_scores).all() or not np.isfinite(prediction.maps).all():
        raise ModelRefusedError(f"model {version} returned non-finite scores")
    if known_good is not None and bool(prediction.anomalous[0]):
        raise ModelRefusedError(f"model {version} calls the known-good image anomalous (score "
                          f"{float(prediction.image_scores[0]):.4g} >= threshold {model.image_threshold:.4g})")


class ModelWatcher:
    """Follows the registry's assignment for one (product, line); hands a checked model over once."""

    def __init__(self, registry: Registry, product: str, line: str = ALL_LINES, *, device: str = "cpu",
                 poll_s: float = 5.0, known_good: np.ndarray | None = None, loader: Loader = _default_loader,
                 on_refused: Callable[[str, str], None] | None = None, current_version: str | None = None) -> None:
        self.registry, self.product, self.line = registry, product, line
        self.device, self.poll_s, self.known_good, self.loader = device, poll_s, known_good, loader
        self.on_refused = on_refused
        self.current_version = current_version
        self.refused: dict[str, str] = {}  # version -> why; not retried until assigned again
        self._ready: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_once(self) -> str | None:
        """Look up the assignment; load and check it if it is new. Returns the version made ready, if any."""
        try:
            record = self.registry.active(self.product, self.line)
        except (SQLAlchemyError, RegistryError) as exc:  # an outage must not stop the line: keep the model, retry
            log.warning("model watcher: cannot read the registry: %s", exc)
            return None
        with self._lock:
            pending = self._ready.model_version if self._ready is not None else None
        if record is None or record.version in (self.current_version, pending) or record.version in self.refused:
            return None
        try:
            model = self.loader(self.registry.path(record.version), self.device)
            check_model(model, record.version, self.known_good)
        except (ModelRefusedError, CheckpointError, RegistryError, RuntimeError, ValueError) as exc:
            self.refused[record.version] = str(exc)
            log.error("model %s refused for %s: %s; %s keeps running", record.version, self.product, exc,
                      self.current_version)
            if self.on_refused is not None:
                self.on_refused(record.version, str(exc))
            return None
        with self._lock:
            self._ready = model
        return record.version

    def take(self) -> Any:
        """The checked model to switch to (once), or None. Call it between two batches."""
        with self._lock:
            model, self._ready = self._ready, None
        if model is not None:
            self.current_version = str(model.model_version)
        return model

    def start(self) -> ModelWatcher:
        """Poll every ``poll_s`` seconds in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            self._stop.wait(self.poll_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
