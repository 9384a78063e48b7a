"""The detector's consumer loop: Kafka consumer group -> micro-batches -> model -> outputs.

Threads: the consumer thread (this loop) polls, builds batches and submits their decode to
the decode pool; one worker thread runs the model and produces outputs, so decoding of batch
k+1 overlaps inference of batch k; one thread writes heatmaps to Redis.

Delivery guarantee: at least once, exactly once after deduplication by (camera, sequence).
``enable.auto.offset.store=false``: an offset is stored only when every output of every
earlier frame of its partition has been acknowledged by the broker (:mod:`linewatch.common.kafka.commit`);
``enable.auto.commit=true`` then commits only those stored offsets every second, and we
commit synchronously on partition revoke and at shutdown (after draining the batch in flight).
A SIGKILL loses at most the uncommitted tail, which the next owner reprocesses.

Hostile input never stops a partition: every record is validated on decode (ids, key, capture
time, sizes, allow-list) and leaves as outputs or a dead letter (see outputs.py); a batch also
closes at ``max_batch_pixels``. A worker that dies anyway ends the process promptly: the
consumer thread never blocks on it, /healthz and /readyz turn 503, and ``run`` raises
(``linewatch detect`` exits 1) so the orchestrator restarts it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any, cast

from confluent_kafka import Consumer, Message

from linewatch.common.kafka import Assignment, CommitGate, TopicPartitionKey, commit_stored, records, store_ready
from linewatch.detector.service.batcher import Batcher
from linewatch.detector.service.decoding import (
    Decoder,
    PendingBatch,
    Record,
    RecordPolicy,
    header_pixels,
    select_decode_backend,
)
from linewatch.detector.service.health import HealthServer, HealthState
from linewatch.detector.service.heatmap_cache import HeatmapCache
from linewatch.detector.service.metrics import DetectorMetrics
from linewatch.detector.service.outputs import OutputProducer
from linewatch.detector.service.processing import BatchProcessor
from linewatch.detector.service.settings import DetectorSettings

log = logging.getLogger(__name__)

_Work = tuple[list[Record], PendingBatch, int]
_PUT_WAIT_S = 0.1  # how often a consumer waiting for the worker checks that it is still alive


class DetectorService:
    """One detector process's worth of state; :meth:`run` blocks until ``stop_event`` is set."""

    def __init__(self, settings: DetectorSettings, stop_event: threading.Event | None = None,
                 model: Any = None) -> None:
        self.settings = settings
        self.stop_event = stop_event or threading.Event()
        self.metrics = DetectorMetrics()
        self.health = HealthState()
        self.tracker = CommitGate()
        self.ready_event = threading.Event()
        self.health_port: int | None = None
        self.model = model
        self.router: Any = None  # registry.routing.ModelRouter when a registry is configured
        self._batcher: Batcher[Record] = Batcher(settings.max_batch_size, settings.max_wait_ms / 1000,
                                                 max_weight=settings.max_batch_pixels)
        self._work: queue.Queue[_Work | None] = queue.Queue(maxsize=1)
        self._worker_error: BaseException | None = None
        self._worker: threading.Thread | None = None
        self._consumer: Consumer | None = None
        self._assignment: Assignment | None = None
        self._outputs: OutputProducer | None = None
        self._decoder: Decoder | None = None

    @property
    def assignment(self) -> set[TopicPartitionKey]:
        """The partitions this detector owns now."""
        return self._assignment.partitions if self._assignment is not None else set()

    def _load_model(self) -> Any:
        import torch

        from linewatch.detector.model.backends import load_model

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)
        model = load_model(self.settings.model, self.settings.backend, self.settings.device,
                           threads=self.settings.torch_threads or None)
        log.info("model %s (%s at %d px) on %s, %s backend", model.model_version, model.metadata.backbone,
                 model.image_size, model.device, getattr(model, "backend", "torch"))
        return model

    def run(self) -> None:
        """Serve until stopped; raises when an output could not be delivered or the worker crashed."""
        s = self.settings
        health_server = None
        if s.metrics_port is not None:
            health_server = HealthServer(self.health, self.metrics.registry, s.metrics_host, s.metrics_port).start()
            self.health_port = health_server.port
        try:
            self.router = self._open_router()
            routed = self.router.start() if self.router is not None else None
            if self.model is None:  # the `model` file is not needed when the registry assigns the default product
                self.model = routed if routed is not None and not s.routing.fallback else self._load_model()
            if self.router is not None:
                self.router.fallback_model = self.model
            self.health.model_loaded = True
            backend = select_decode_backend(s.decode_mode, self.model.device.type)
            self._decoder = decoder = Decoder(s.decode_workers, backend, self.model.device, self._record_policy())
            cache = HeatmapCache(s.redis, self.metrics, per_camera=s.heatmaps_per_camera, ttl_s=s.heatmap_ttl_s,
                                 breach_ttl_s=s.breach_ttl_s, map_size=s.heatmap_map_size,
                                 overlay_max_side=s.overlay_max_side,
                                 colour_scale=2 * float(self.model.pixel_threshold),
                                 queue_batches=s.cache_queue_batches, camera_ttl_s=s.camera_key_ttl_s,
                                 stall_after_s=s.heatmap_stall_s).start()
            self._outputs = OutputProducer(s.producer_config(), self.tracker, results_topic=s.topics.results,
                                           breaches_topic=s.topics.breaches, dead_letters_topic=s.topics.dead_letters,
                                           retries=s.delivery_retries)
            processor = BatchProcessor(self.model, self._outputs, self.tracker, self.metrics, cache,
                                       s.camera_thresholds, router=self.router, regions=s.regions())
            self._worker = worker = threading.Thread(target=self._work_loop, args=(processor, cache),
                                                     name="detector-infer", daemon=True)
            worker.start()
            try:
                self._consume(decoder)
            finally:
                self.health.stopping = True
                self._shutdown(decoder, worker)
                cache.close()
        finally:
            if self.router is not None:
                self.router.stop()
            if health_server is not None:
                health_server.stop()
        if self._worker_error is not None:
            raise RuntimeError(f"detector worker failed: {self._worker_error}") from self._worker_error
        if self._outputs.fatal_error:
            raise RuntimeError(self._outputs.fatal_error)

    def _open_router(self) -> Any:
        """Per-product models that follow the registry's promotions; None when no registry is configured."""
        s = self.settings
        if s.registry is None:
            return None
        from linewatch.detector.model.backends import load_model
        from linewatch.detector.registry.hotswap import RedisRefusalBoard
        from linewatch.detector.registry.models import open_registry
        from linewatch.detector.registry.routing import ModelRouter

        def loader(path: Any, device: str) -> Any:
            return load_model(path, s.backend, device, threads=s.torch_threads or None)

        log.info("models follow the registry at %s (line %r, every %.0f s)", s.registry.database_url.split("@")[-1],
                 s.routing.line, s.routing.poll_s)
        # A refusal is shown while it stands: this detector's gauge (the LinewatchModelRefused alert) and a
        # Redis record the operator page reads (its banner).
        board = RedisRefusalBoard.for_polling(s.redis.client(), s.redis.key_prefix, s.routing.poll_s)
        return ModelRouter(open_registry(s.registry.database_url, s.registry.model_store), s.routing, loader,
                           device=s.device, on_refused=self._model_refused, refusal_sinks=(self.metrics, board))

    def _model_refused(self, product: str, version: str, why: str) -> None:
        """A promoted model failed to load or its checks: alert (metric + ERROR log); the old one keeps running."""
        self.metrics.model_refusals.labels(product=product, version=version).inc()
        log.error("ALERT: model %s promoted for product %s was refused and is not used: %s", version, product, why)

    def _switch_models(self) -> None:
        """Install newly promoted models; called by the worker between two batches (the switch point)."""
        if self.router is None:
            return
        for swap in self.router.refresh():
            self.metrics.model_swaps.labels(product=swap.product).inc()

    def _record_policy(self) -> RecordPolicy:
        s = self.settings
        allowed = frozenset(s.camera_allow_list) if s.camera_allow_list is not None else None
        return RecordPolicy(max_side=s.max_side, max_pixels=s.max_pixels,
                            max_future_skew_ns=int(s.max_future_skew_s * 1e9), allowed_cameras=allowed)

    def _worker_failed(self) -> bool:
        """True once the worker thread has died (with or without a recorded error)."""
        worker = self._worker
        return self._worker_error is not None or (worker is not None and not worker.is_alive())

    def _consume(self, decoder: Decoder) -> None:
        s = self.settings
        config = s.consumer_config()
        config["error_cb"] = lambda err: log.warning("kafka: %s", err)
        if s.statistics_interval_ms:
            config["stats_cb"] = self.metrics.observe_statistics
        self._consumer = consumer = Consumer(config)
        self._assignment = Assignment(consumer, self.tracker, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                      on_lost=self._on_lost)
        self._assignment.subscribe([s.topics.frames])
        log.info("consuming %s as group %s (batch <= %d, wait <= %.0f ms)", s.topics.frames, s.group_id,
                 s.max_batch_size, s.max_wait_ms)
        while not self.stop_event.is_set():
            self.health.beat()
            if self._worker_failed() or (self._outputs and self._outputs.fatal_error):
                self.health.fail("detector worker failed" if self._worker_failed() else "an output was lost")
                break
            self._store_ready()
            left = self._batcher.time_left()
            if left is None:  # empty batch: wait for its first frame, which starts the clock
                msg = consumer.poll(0.1)
                self._accept([msg] if msg is not None else [])
            elif left > 0:
                self._accept(consumer.consume(num_messages=self._batcher.room, timeout=left))
            if self._batcher.ready():
                self._dispatch(decoder, self._batcher.take())

    def _accept(self, messages: list[Message]) -> None:
        now_ns = time.time_ns()
        for msg in records(messages):
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            generation = self.tracker.track((topic, partition), offset)
            record = Record(topic=topic, partition=partition, offset=offset, key=msg.key(), value=msg.value(),
                            headers=cast(Any, msg.headers()), timestamp_ms=msg.timestamp()[1], received_ns=now_ns,
                            generation=generation)
            self.metrics.frames_consumed.inc()
            weight = min(header_pixels(record.headers), self.settings.max_pixels)  # bigger ones are refused undecoded
            if not self._batcher.fits(weight) and self._decoder is not None:
                self._dispatch(self._decoder, self._batcher.take())  # pixel budget reached: close the batch
            self._batcher.add(record, weight)

    def _dispatch(self, decoder: Decoder, records: list[Record]) -> None:
        """Hand a closed batch to the worker; gives up (the frames stay uncommitted) if the worker died."""
        if not records:
            return
        item = (records, decoder.submit(records), time.time_ns())
        self._observe_waits(records, item[2])
        while not self._worker_failed():
            try:
                self._work.put(item, timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                continue
        log.error("detector worker is dead; %d frames left uncommitted for the next owner", len(records))

    def _observe_waits(self, records: list[Record], closed_ns: int) -> None:
        """Per-frame waits before the model (broker -> poll, poll -> batch closed), for the stage breakdown."""
        fetch = self.metrics.frame_wait_seconds.labels(stage="fetch")
        batch = self.metrics.frame_wait_seconds.labels(stage="batch")
        for record in records:
            fetch.observe(max(0.0, record.received_ns / 1e9 - record.timestamp_ms / 1e3))
            batch.observe(max(0.0, (closed_ns - record.received_ns) / 1e9))

    def _work_loop(self, processor: BatchProcessor, cache: HeatmapCache) -> None:
        assert self._outputs is not None
        if self.settings.torch_threads:
            import torch

            # OpenMP thread counts are per calling thread: set it where the model runs.
            torch.set_num_threads(self.settings.torch_threads)
        while True:
            try:
                item = self._work.get(timeout=0.05)
            except queue.Empty:
                self._outputs.poll(0)
                self._switch_models()  # idle is a batch boundary too: switch now, not with the next frame
                continue
            try:
                if item is None:
                    return
                self._outputs.begin_batch(item[0])
                failure = None
                try:
                    self._switch_models()  # between batches: this batch and all later ones use the new models
                    processor.process(*item)
                except Exception as exc:  # a record that breaks processing must not crash-loop the detector
                    log.exception("processing failed on a batch of %d frames; those without outputs are "
                                  "dead-lettered", len(item[0]))
                    failure = f"{type(exc).__name__}: {exc}"
                # Outputs leave in record order; results whose heatmap write was skipped say so.
                self._outputs.end_batch(cache.take_skipped().__contains__, failure)
                self._outputs.poll(0)
            except BaseException as exc:
                log.exception("detector worker failed")
                self._worker_error = exc
                self.health.fail(f"detector worker failed: {type(exc).__name__}")
                return
            finally:
                self._work.task_done()

    def _drain(self, timeout_s: float = 30.0) -> None:
        """Wait until every dispatched batch is processed and every output acknowledged (bounded)."""
        deadline = time.monotonic() + timeout_s
        with self._work.all_tasks_done:
            while self._work.unfinished_tasks and not self._worker_failed():
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("batches still unprocessed after %.0fs; not waiting longer", timeout_s)
                    break
                self._work.all_tasks_done.wait(min(_PUT_WAIT_S, left))
        if self._outputs is not None:
            left = self._outputs.flush(timeout_s)
            if left:
                log.warning("%d outputs still unacknowledged after %.0fs", left, timeout_s)

    def _store_ready(self) -> None:
        if self._consumer is not None:
            store_ready(self._consumer, self.tracker)

    def _commit(self) -> None:
        if self._consumer is not None:
            store_ready(self._consumer, self.tracker)
            commit_stored(self._consumer)

    def _on_assign(self, tps: list[TopicPartitionKey]) -> None:
        self.health.assigned = True
        self.ready_event.set()
        log.info("assigned %s", sorted(p for _, p in tps))

    def _on_revoke(self, tps: list[TopicPartitionKey]) -> None:
        revoked = set(tps)
        # Frames of the open batch from revoked partitions were never stored: the next owner re-reads them.
        # The gate forgets these partitions after this hook (:class:`Assignment`), once they are committed.
        self._batcher.drop(keep=lambda r: (r.topic, r.partition) not in revoked)
        self._drain()
        self._commit()
        log.info("revoked %s", sorted(p for _, p in revoked))

    def _on_lost(self, tps: list[TopicPartitionKey]) -> None:
        lost = set(tps)
        self._batcher.drop(keep=lambda r: (r.topic, r.partition) not in lost)
        log.warning("lost partitions %s (session timed out); their uncommitted frames will be reprocessed",
                    sorted(p for _, p in lost))

    def _shutdown(self, decoder: Decoder, worker: threading.Thread) -> None:
        """Process the open batch, drain, commit, leave the group."""
        if not self._worker_failed() and not (self._outputs and self._outputs.fatal_error):
            self._dispatch(decoder, self._batcher.take())
            self._drain()
            self._commit()
        if worker.is_alive():
            with contextlib.suppress(queue.Full):
                self._work.put(None, timeout=30)
            worker.join(30)
        decoder.close()
        if self._consumer is not None:
            self._consumer.close()
        log.info("detector stopped")


def run_detector(settings: DetectorSettings, stop_event: threading.Event | None = None) -> None:
    """Run a detector until ``stop_event`` is set (blocking). Used by ``linewatch detect``, demo and tests."""
    DetectorService(settings, stop_event).run()
