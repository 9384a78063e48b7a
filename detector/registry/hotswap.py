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

A refusal *stands* while the registry still assigns the refused version: the watcher hands it to its
:class:`RefusalSink` objects (the detector's Prometheus gauge, :class:`RedisRefusalBoard` for the
operator page) on every poll, and tells them it is cleared once the assignment moves on (a good model
promoted, or a rollback). Its reason is one of :class:`RefusalReason`, a short fixed set, so it can be
a metric label; the exception text goes to the log and the page only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from linewatch.common import cache_keys as ck
from linewatch.detector.model.checkpoint import CheckpointError
from linewatch.detector.model.tiling import part_map_shape
from linewatch.detector.registry.db import ALL_LINES
from linewatch.detector.registry.errors import RegistryError
from linewatch.detector.registry.models import Registry
from linewatch.errors import ModelError

log = logging.getLogger(__name__)
Loader = Callable[[Any, str], Any]
DETAIL_MAX_CHARS = 500  # the exception text on the page: enough for a path and a cause, not a traceback


class RefusalReason(StrEnum):
    """Why a model was refused: a Prometheus label, so a short fixed set and never free text."""

    MODEL_FILE = "model_file"  # missing from the model store, or its bytes do not match the registered digest
    CHECKPOINT = "checkpoint"  # unreadable, edited metadata or weights, or metadata that describes no model
    VERSION_MISMATCH = "version_mismatch"  # the file loaded is another version than the one assigned
    OUTPUT_SHAPE = "output_shape"  # the warm-up frame did not give one score and one (S, S) map
    NON_FINITE = "non_finite"  # the warm-up frame gave NaN or infinite scores
    KNOWN_GOOD = "known_good"  # the product's golden sample was called anomalous
    LOAD_ERROR = "load_error"  # anything else the loader raised (device, backend, out of memory)


class ModelRefusedError(ModelError, ValueError):
    """A newly assigned model failed a check; the running model stays."""

    def __init__(self, reason: RefusalReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def refusal_reason(exc: Exception) -> RefusalReason:
    """The :class:`RefusalReason` of an exception raised while loading or checking a model."""
    if isinstance(exc, ModelRefusedError):
        return exc.reason
    if isinstance(exc, CheckpointError):
        return RefusalReason.CHECKPOINT
    if isinstance(exc, RegistryError):  # the store's digest check, or the version vanished from the registry
        return RefusalReason.MODEL_FILE
    return RefusalReason.LOAD_ERROR


@dataclass(frozen=True)
class Refusal:
    """A promoted model this detector will not use; ``running_version`` keeps scoring (None: no model yet)."""

    product: str
    line: str
    version: str
    reason: RefusalReason
    detail: str
    since_ns: int
    running_version: str | None = None


class RefusalSink(Protocol):
    """Where a standing refusal is shown. Called from watcher threads; must not block for long."""

    def refusal_stands(self, refusal: Refusal) -> None:
        """The refusal still stands (called again on every poll: refresh whatever expires)."""

    def refusal_cleared(self, product: str, line: str) -> None:
        """The registry no longer assigns the refused version of (product, line)."""


class RedisRefusalBoard:
    """Standing refusals in Redis for the operator page: one hash per (product, line) and an index set.

    Both expire after ``ttl_s`` unless refreshed, so a detector that dies or is redeployed without the
    registry moving on does not leave a banner behind for ever. ``ttl_s`` must exceed the poll period.
    """

    def __init__(self, client: Any, prefix: str, ttl_s: float = 60.0) -> None:
        self.client, self.prefix, self.ttl_s = client, prefix, ttl_s

    @classmethod
    def for_polling(cls, client: Any, prefix: str, poll_s: float) -> RedisRefusalBoard:
        """A board whose records outlive a few polls, so one slow poll does not make the banner blink."""
        return cls(client, prefix, ttl_s=max(60.0, 4 * poll_s))

    def refusal_stands(self, refusal: Refusal) -> None:
        key, index = self._key(refusal.product, refusal.line), ck.model_refusals_key(self.prefix)
        ttl_ms = int(self.ttl_s * 1000)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping=refusal_fields(refusal))
        pipe.pexpire(key, ttl_ms)
        pipe.sadd(index, key)
        pipe.pexpire(index, ttl_ms)  # every writer refreshes it with the same TTL: it outlives each hash
        pipe.execute()

    def refusal_cleared(self, product: str, line: str) -> None:
        key = self._key(product, line)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key)
        pipe.srem(ck.model_refusals_key(self.prefix), key)
        pipe.execute()

    def _key(self, product: str, line: str) -> str:
        return ck.model_refusal_key(self.prefix, product, line)


def refusal_fields(refusal: Refusal) -> dict[str, str]:
    """The hash fields of :func:`cache_keys.model_refusal_key` for one refusal."""
    return {ck.FIELD_REFUSAL_PRODUCT: refusal.product, ck.FIELD_REFUSAL_LINE: refusal.line,
            ck.FIELD_REFUSAL_VERSION: refusal.version, ck.FIELD_REFUSAL_REASON: refusal.reason.value,
            ck.FIELD_REFUSAL_DETAIL: refusal.detail[:DETAIL_MAX_CHARS],
            ck.FIELD_REFUSAL_SINCE_NS: str(refusal.since_ns),
            ck.FIELD_REFUSAL_RUNNING_VERSION: refusal.running_version or ""}


def _default_loader(path: Any, device: str) -> Any:
    from linewatch.detector.model.inference import AnomalyModel

    return AnomalyModel.load(path, device)


def check_model(model: Any, version: str, known_good: np.ndarray | None) -> None:
    """Raise :class:`ModelRefusedError` unless ``model`` is ``version`` and scores sanely."""
    if str(model.model_version) != version:
        raise ModelRefusedError(RefusalReason.VERSION_MISMATCH,
                                f"loaded model is {model.model_version}, the registry assigned {version}")
    probe = known_good if known_good is not None else np.full((model.image_size, model.image_size, 3), 128, np.uint8)
    prediction = model.predict([probe])
    size = model.image_size
    tiling = model.metadata.tiling  # a tiled model maps a long probe to its part map, not (S, S)
    height, width = int(probe.shape[0]), int(probe.shape[1])
    expected = (1, size, size) if tiling == "none" else (1, *part_map_shape(height, width, size, tiling))
    if prediction.image_scores.shape != (1,) or prediction.maps.shape != expected:
        raise ModelRefusedError(RefusalReason.OUTPUT_SHAPE,
                                f"model {version} returned scores {prediction.image_scores.shape} and maps "
                                f"{prediction.maps.shape}; expected (1,) and {expected}")
    if not np.isfinite(prediction.image_scores).all() or not np.isfinite(prediction.maps).all():
        raise ModelRefusedError(RefusalReason.NON_FINITE, f"model {version} returned non-finite scores")
    if known_good is not None and bool(prediction.anomalous[0]):
        raise ModelRefusedError(RefusalReason.KNOWN_GOOD,
                                f"model {version} calls the known-good image anomalous (score "
                                f"{float(prediction.image_scores[0]):.4g} >= threshold {model.image_threshold:.4g})")


class ModelWatcher:
    """Follows the registry's assignment for one (product, line); hands a checked model over once."""

    def __init__(self, registry: Registry, product: str, line: str = ALL_LINES, *, device: str = "cpu",
                 poll_s: float = 5.0, known_good: np.ndarray | None = None, loader: Loader = _default_loader,
                 on_refused: Callable[[str, str], None] | None = None, current_version: str | None = None,
                 refusal_sinks: Sequence[RefusalSink] = ()) -> None:
        self.registry, self.product, self.line = registry, product, line
        self.device, self.poll_s, self.known_good, self.loader = device, poll_s, known_good, loader
        self.on_refused = on_refused
        self.current_version = current_version
        self.refused: dict[str, str] = {}  # version -> why; not retried while it stays assigned
        self.refusal_sinks = tuple(refusal_sinks)
        self.standing: Refusal | None = None  # the refusal of the version the registry assigns now, if any
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
        self._clear_refusal_unless_assigned(record.version if record is not None else None)
        with self._lock:
            pending = self._ready.model_version if self._ready is not None else None
        if record is None or record.version in (self.current_version, pending) or record.version in self.refused:
            return None
        try:
            model = self.loader(self.registry.path(record.version), self.device)
            check_model(model, record.version, self.known_good)
        except (ModelRefusedError, CheckpointError, RegistryError, RuntimeError, ValueError) as exc:
            self._refuse(record.version, exc)
            return None
        with self._lock:
            self._ready = model
        return record.version

    def _refuse(self, version: str, exc: Exception) -> None:
        self.refused[version] = str(exc)
        self.standing = Refusal(self.product, self.line, version, refusal_reason(exc), str(exc), time.time_ns(),
                                running_version=self.current_version)
        log.error("model %s refused for %s (%s): %s; %s keeps running", version, self.product,
                  self.standing.reason.value, exc, self.current_version)
        self._tell_sinks_it_stands()
        if self.on_refused is not None:
            self.on_refused(version, str(exc))

    def _clear_refusal_unless_assigned(self, assigned: str | None) -> None:
        """The registry moved on from a refused version (a new promotion, a rollback): the refusal is over.

        The version is forgotten too, so that promoting it again loads and checks it again.
        """
        if self.standing is None or self.standing.version == assigned:
            return
        log.info("model %s is no longer assigned to %s: its refusal is cleared", self.standing.version, self.product)
        self.refused.pop(self.standing.version, None)
        self.standing = None
        for sink in self.refusal_sinks:
            self._call_sink(sink.refusal_cleared, self.product, self.line)

    def _tell_sinks_it_stands(self) -> None:
        if self.standing is not None:
            for sink in self.refusal_sinks:
                self._call_sink(sink.refusal_stands, self.standing)

    @staticmethod
    def _call_sink(method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except Exception as exc:  # a Redis outage must not stop hot swap: the next poll tells the sink again
            log.warning("cannot publish a model refusal: %s", exc)

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
            self._tell_sinks_it_stands()  # refreshes the expiring copies, also through a registry outage
            self._stop.wait(self.poll_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the polling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
