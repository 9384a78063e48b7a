"""Shared builders for the alerts tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from detector.events import FrameResult, Latency

WEBHOOK_SECRET = "test-webhook-secret"
API_TOKEN = "test-api-token-123"

T0 = 1_700_000_000_000_000_000
FRAME_NS = 100_000_000  # 10 frames per second


def frame(camera: str, sequence: int, score: float, *, line: str = "line-1", heatmap: str | None = None,
          capture_ns: int | None = None) -> FrameResult:
    """A detector result; anomalous when the normalised score reaches 0.5."""
    return FrameResult(
        camera_id=camera, line_id=line, sequence=sequence,
        capture_ns=capture_ns if capture_ns is not None else T0 + sequence * FRAME_NS,
        image_score=score * 2, normalised_score=score, anomalous=score >= 0.5, threshold=1.0,
        model_version="test", heatmap_key=heatmap,
        latency=Latency(queue_ms=1, decode_ms=1, inference_ms=1, end_to_end_ms=3),
    )


def scores_stream(camera: str, scores: list[float], *, line: str = "line-1", first: int = 0) -> list[FrameResult]:
    """Consecutive frames of one camera with the given normalised scores."""
    return [frame(camera, first + i, s, line=line) for i, s in enumerate(scores)]


@dataclass
class Webhook:
    """A tiny real HTTP receiver that checks signatures and records what it got."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    fail_next: int = 0
    status_when_failing: int = 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        """Parsed bodies of the requests that were accepted."""
        with self.lock:
            return [r["body"] for r in self.received if r["accepted"]]
