"""The streaming detector service: Kafka frames -> micro-batched STFPM -> results, breaches, heatmaps.

Entry point for other code: :func:`run_detector` (blocking) with :class:`DetectorSettings`.
"""

from __future__ import annotations

from linewatch.detector.service.service import DetectorService, run_detector
from linewatch.detector.service.settings import DetectorSettings

__all__ = ["DetectorService", "DetectorSettings", "run_detector"]
