"""Prometheus metrics of one detector (its own registry, so tests can run several per process)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from linewatch.detector.registry.hotswap import Refusal

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DetectorMetrics:
    """The metric names every dashboard expects (see the working rules)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.frames_consumed = Counter("linewatch_detector_frames_consumed", "Frame records consumed.", registry=reg)
        self.frames_processed = Counter("linewatch_detector_frames_processed", "Frames scored by the model.",
                                        ["line", "camera"], registry=reg)
        self.frames_anomalous = Counter("linewatch_detector_frames_anomalous", "Frames judged anomalous.",
                                        ["line", "camera"], registry=reg)
        self.dead_letters = Counter("linewatch_detector_dead_letters", "Records sent to the dead-letter topic.",
                                    ["reason"], registry=reg)
        self.batch_size = Histogram("linewatch_detector_batch_size", "Frames per micro-batch.",
                                    buckets=_BATCH_BUCKETS, registry=reg)
        self.stage_seconds = Histogram("linewatch_detector_stage_seconds", "Time per pipeline stage and batch.",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=reg)
        # Per frame, before the batch reaches the model: broker append -> polled ("fetch"; includes
        # fetch.wait.max.ms holds and the consumer's prefetch queue), polled -> batch closed ("batch").
        self.frame_wait_seconds = Histogram("linewatch_detector_frame_wait_seconds", "Waits of each frame before "
                                            "its batch closes.", ["stage"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.end_to_end_seconds = Histogram("linewatch_detector_end_to_end_seconds",
                                            "Capture time to result produced.", buckets=_LATENCY_BUCKETS,
                                            registry=reg)
        self.consumer_lag = Gauge("linewatch_detector_consumer_lag", "Messages behind the partition end.",
                                  ["topic", "partition"], registry=reg)
        self.redis_errors = Counter("linewatch_detector_redis_errors", "Failed Redis writes or pings.",
                                    registry=reg)
        self.heatmap_writes_skipped = Counter("linewatch_detector_heatmap_writes_skipped",
                                              "Heatmaps not cached (Redis down or behind).", registry=reg)
        self.model_swaps = Counter("linewatch_detector_model_swaps", "Switches to a newly promoted model.",
                                   ["product"], registry=reg)
        self.model_refusals = Counter("linewatch_detector_model_refusals", "Promoted models refused (load or sanity "
                                      "check failed; the old model keeps running).", ["product", "version"],
                                      registry=reg)
        # 1 while a refusal stands; labels bounded: one series per followed product, reason a short enum.
        self.model_refused = Gauge("linewatch_detector_model_refused", "1 while the model the registry assigns "
                                   "to a product is refused (the detector keeps the model it had).",
                                   ["product", "version", "reason"], registry=reg)
        self._lag_series: set[tuple[str, str]] = set()  # (topic, partition) this detector exports lag for
        self._refused_series: dict[str, tuple[str, str]] = {}  # product -> (version, reason) exported

    def refusal_stands(self, refusal: Refusal) -> None:
        """Export the standing refusal of its product, replacing the product's earlier one (a RefusalSink)."""
        series = (refusal.version, refusal.reason.value)
        earlier = self._refused_series.get(refusal.product)
        if earlier is not None and earlier != series:
            self.model_refused.remove(refusal.product, *earlier)
        self.model_refused.labels(refusal.product, *series).set(1)
        self._refused_series[refusal.product] = series

    def refusal_cleared(self, product: str, line: str) -> None:
        """Drop the product's refusal series: absent, not 0, so the alert resolves and no label lingers."""
        earlier = self._refused_series.pop(product, None)
        if earlier is not None:
            self.model_refused.remove(product, *earlier)

    def observe_statistics(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``: set consumer lag per assigned partition, drop partitions no longer ours.

        After a rebalance a revoked partition is exported by its new owner; keeping our old series
        would make ``sum`` count its lag twice, so partitions without a known lag are removed.
        """
        try:
            stats = json.loads(stats_json)
        except ValueError:
            log.warning("unparseable librdkafka statistics")
            return
        owned: set[tuple[str, str]] = set()
        for topic, tstats in (stats.get("topics") or {}).items():
            for part, pstats in (tstats.get("partitions") or {}).items():
                lag = pstats.get("consumer_lag")
                # -1 is librdkafka's internal UA partition; "desired" false: no longer assigned (revoked);
                # lag -1: unknown (not fetching yet or not ours).
                if part == "-1" or pstats.get("desired") is False or lag is None or lag < 0:
                    continue
                self.consumer_lag.labels(topic=topic, partition=part).set(lag)
                owned.add((topic, part))
        for topic, part in self._lag_series - owned:
            self.consumer_lag.remove(topic, part)
        self._lag_series = owned
