"""Synthetic production line source: rendered parts with defects drawn at a set probability."""

from __future__ import annotations

import time

from linewatch.ingest.sources.base import CapturedFrame, Source
from linewatch.ingest.synthetic import render_sample


class SyntheticSource(Source):
    """Renders part ``i`` from seed ``seed * 1_000_003 + i``, so runs are reproducible.

    ``count`` ends the stream after that many parts (None: endless).
    """

    def __init__(self, *, defect_probability: float = 0.2, size: int = 256, seed: int = 0,
                 count: int | None = None) -> None:
        if not 0.0 <= defect_probability <= 1.0:
            raise ValueError(f"defect_probability must be in [0, 1], got {defect_probability}")
        if not 16 <= size <= 4096:
            raise ValueError(f"size must be in [16, 4096], got {size}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self.defect_probability = defect_probability
        self.size = size
        self.seed = seed
        self.count = count
        self._index = 0

    @property
    def description(self) -> str:
        return f"synthetic line (size {self.size}, defect probability {self.defect_probability})"

    def sample_seed(self, index: int) -> int:
        """The render seed of part ``index``."""
        return self.seed * 1_000_003 + index

    def open(self) -> None:
        self._index = 0

    def read(self) -> CapturedFrame | None:
        if self.count is not None and self._index >= self.count:
            return None
        index = self._index
        self._index += 1
        sample = render_sample(self.sample_seed(index), self.size, self.defect_probability)
        return CapturedFrame(image=sample.image, capture_ns=time.time_ns(), label=sample.label,
                             defect_type=sample.defect_type, source_id=f"synthetic-{index}")
