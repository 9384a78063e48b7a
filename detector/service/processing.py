"""From a decoded batch to outputs: model per size group, results, breaches, dead letters, heatmaps."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from linewatch.common.kafka import CommitGate
from linewatch.detector.events import Breach, FrameResult, Latency
from linewatch.detector.model.inference import InferenceModel, Prediction
from linewatch.detector.model.roi import CameraMasks, RoiConfig
from linewatch.detector.model.tiling import frame_map
from linewatch.detector.service.decoding import (
    DecodedFrame,
    PendingBatch,
    Record,
    Rejected,
    group_by_size,
    stack_images,
)
from linewatch.detector.service.heatmap_cache import HeatmapCache, HeatmapEntry
from linewatch.detector.service.metrics import DetectorMetrics
from linewatch.detector.service.outputs import OutputProducer
from linewatch.detector.service.region import summarise_region

log = logging.getLogger(__name__)
NO_MODEL_REASON = "no_model_for_product"  # dead-letter reason: the frame's product has no assigned model


class BatchProcessor:
    """Runs one closed batch end to end; every record leaves as outputs or a dead letter."""

    def __init__(self, model: InferenceModel, outputs: OutputProducer, tracker: CommitGate,
                 metrics: DetectorMetrics, cache: HeatmapCache | None,
                 camera_thresholds: Mapping[str, float] | None = None, router: Any = None,
                 regions: Mapping[str, RoiConfig] | None = None) -> None:
        self.model = model
        self._router = router  # registry.routing.ModelRouter: a model per lw-product; None: ``model`` for all
        self._camera_thresholds = dict(camera_thresholds or {})
        self._masks = CameraMasks(regions or {})  # each camera's ignore mask, built once per frame size
        self._outputs = outputs
        self._tracker = tracker
        self._metrics = metrics
        self._cache = cache

    def process(self, records: Sequence[Record], pending: PendingBatch, closed_ns: int) -> None:
        """Wait for the batch's decode, run the model, produce every output, release the frames."""
        start = time.perf_counter()
        outcomes = pending.result()
        self._metrics.stage_seconds.labels(stage="decode_wait").observe(time.perf_counter() - start)
        self._metrics.batch_size.observe(len(records))
        frames: list[DecodedFrame] = []
        for outcome in outcomes:
            if isinstance(outcome, Rejected):
                self._reject(outcome)
            else:
                frames.append(outcome)
        entries: list[HeatmapEntry] = []
        for model, routed in self._route(frames):
            for group in group_by_size(routed):
                entries.extend(self._run_group(group, closed_ns, model))
        if self._cache is not None:
            self._cache.submit(entries)

    def _reject(self, rejected: Rejected) -> None:
        log.info("dead-lettering %s[%d]@%d: %s", rejected.record.topic, rejected.record.partition,
                 rejected.record.offset, rejected.message)
        self._outputs.dead_letter(rejected)
        self._metrics.dead_letters.labels(reason=rejected.reason).inc()
        self._tracker.release((rejected.record.topic, rejected.record.partition), rejected.record.offset)

    def _route(self, frames: list[DecodedFrame]) -> list[tuple[InferenceModel, list[DecodedFrame]]]:
        """Frames grouped by the model that scores them; frames of a product without one are dead-lettered."""
        if self._router is None:
            return [(self.model, frames)] if frames else []
        by_product: dict[str | None, list[DecodedFrame]] = {}
        for frame in frames:
            by_product.setdefault(frame.meta.product, []).append(frame)
        routes = []
        for product, group in by_product.items():
            model = self._router.model_for(product)
            if model is not None:
                routes.append((model, group))
                continue
            for frame in group:
                self._reject(Rejected(frame.record, NO_MODEL_REASON, f"no model is assigned to product {product!r}"))
        return routes

    def _run_group(self, group: list[DecodedFrame], closed_ns: int, model: InferenceModel) -> list[HeatmapEntry]:
        start = time.perf_counter()
        try:
            thresholds = [self._camera_thresholds.get(f.meta.camera_id, model.image_threshold) for f in group]
            masks = self._masks.batch([(f.meta.camera_id, (f.meta.height, f.meta.width)) for f in group],
                                      model.image_size, model.metadata.resize_mode)
            prediction = model.predict(stack_images(group), thresholds, masks=masks)
        except Exception as exc:  # one bad group must not stop the service; its frames stay retrievable
            log.exception("model failed on a group of %d frames", len(group))
            for frame in group:
                self._reject(Rejected(frame.record, "inference_error", f"{type(exc).__name__}: {exc}"))
            return []
        inference_s = time.perf_counter() - start
        self._metrics.stage_seconds.labels(stage="inference").observe(inference_s)
        start = time.perf_counter()
        entries = []
        cache_up = self._cache is not None and self._cache.available
        for i, frame in enumerate(group):
            entry = self._emit(frame, prediction, i, inference_s * 1000, closed_ns, cache_up, model)
            if entry is not None:
                entries.append(entry)
        self._metrics.stage_seconds.labels(stage="produce").observe(time.perf_counter() - start)
        return entries

    def _emit(self, frame: DecodedFrame, prediction: Prediction, i: int, inference_ms: float, closed_ns: int,
              cache_up: bool, model: InferenceModel) -> HeatmapEntry | None:
        meta, record = frame.meta, frame.record
        anomalous = bool(prediction.anomalous[i])
        anomaly_map = frame_map(prediction.maps[i], meta.height, meta.width, model.image_size, model.metadata.tiling)
        now_ns = time.time_ns()
        fields: dict[str, Any] = {
            "camera_id": meta.camera_id, "line_id": meta.line_id, "sequence": meta.sequence,
            "capture_ns": meta.capture_ns, "image_score": float(prediction.image_scores[i]),
            "normalised_score": float(np.clip(prediction.normalised_scores[i], 0.0, 1.0)),
            "anomalous": anomalous, "threshold": _threshold(prediction, i, model.image_threshold),
            "model_version": str(model.model_version),
            "heatmap_key": self._cache.key_for(meta.camera_id, meta.sequence) if cache_up and self._cache else None,
            "latency": Latency(queue_ms=max(0.0, closed_ns / 1e6 - record.timestamp_ms),
                               decode_ms=frame.decode_ms, inference_ms=inference_ms,
                               end_to_end_ms=max(0.0, (now_ns - meta.capture_ns) / 1e6)),
            "product": meta.product, "label": meta.label, "defect_type": meta.defect_type,
            "source_id": meta.source_id,
            "partition": record.partition, "offset": record.offset, "processed_ns": now_ns,
        }
        if anomalous:
            region = summarise_region(anomaly_map, float(model.pixel_threshold), (meta.width, meta.height))
            result: FrameResult = Breach(**fields, region=region)
        else:
            result = FrameResult(**fields)
        self._outputs.result(result, record)
        self._tracker.release((record.topic, record.partition), record.offset)
        labels = {"line": meta.line_id, "camera": meta.camera_id}
        self._metrics.frames_processed.labels(**labels).inc()
        if anomalous:
            self._metrics.frames_anomalous.labels(**labels).inc()
        self._metrics.end_to_end_seconds.observe(result.latency.end_to_end_ms / 1000)
        if self._cache is None:
            return None
        # Entries go to the cache even while it is down: its writer uses them to probe for recovery.
        image = frame.image if isinstance(frame.image, np.ndarray) else frame.image.cpu().numpy()
        return HeatmapEntry(camera_id=meta.camera_id, line_id=meta.line_id, sequence=meta.sequence,
                            capture_ns=meta.capture_ns, image_score=result.image_score,
                            normalised_score=result.normalised_score, anomalous=anomalous,
                            anomaly_map=anomaly_map, image=image)


def _threshold(prediction: Prediction, i: int, default: float) -> float:
    """The image threshold frame ``i`` was judged by (a per-camera one where configured)."""
    return float(prediction.thresholds[i]) if prediction.thresholds is not None else float(default)
