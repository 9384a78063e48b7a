"""One part's verdict as the plant sees it, and how a detector result becomes one.

A verdict is decided when it is published: ``latency_ms`` runs from the camera's capture time to
that moment (both wall clocks, so camera and service hosts must be time-synchronised), and a
verdict past its camera's deadline is ``late`` and gets the fail-safe verdict of the late policy,
because a part that has passed the reject gate cannot be pulled back.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from linewatch.detector.events import EVENT_SCHEMA_VERSION, FrameResult
from linewatch.errors import DataError
from linewatch.plant.settings import LatePolicy

VERDICT_SCHEMA_VERSION = 1
VerdictName = Literal["pass", "reject"]
PASS: VerdictName = "pass"
REJECT: VerdictName = "reject"


class ResultError(DataError, ValueError):
    """A record of the results topic that is not a result this build understands."""


class Verdict(BaseModel):
    """What goes to MQTT and OPC UA for one frame (JSON on MQTT)."""

    schema_version: int = VERDICT_SCHEMA_VERSION
    camera_id: str
    line_id: str
    product: str | None = Field(description="Product/recipe from the result when present, else null.")
    sequence: int = Field(description="The camera's frame sequence number (monotonic per camera).")
    part_id: str | None = Field(description="Part id from the result when present, else null.")
    verdict: VerdictName
    scored_verdict: VerdictName = Field(description="The model's verdict before the late policy.")
    late: bool
    deadline_ms: float
    score: float = Field(description="Normalised score in [0, 1]; 0.5 is the threshold.")
    raw_score: float
    threshold: float
    model_version: str
    capture_ns: int
    published_ns: int
    latency_ms: float = Field(description="Capture to publish, milliseconds.")
    detector_latency_ms: float = Field(description="Capture to the detector's result, milliseconds.")


def parse_result(raw: bytes) -> tuple[FrameResult, dict[str, Any]]:
    """The result in a record and its raw JSON object (for fields newer than this build's schema)."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict):
            raise ResultError("a result must be a JSON object")
        result = FrameResult.model_validate(body)
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ResultError(str(exc).splitlines()[0]) from exc
    if result.schema_version != EVENT_SCHEMA_VERSION:
        raise ResultError(f"unknown schema_version {result.schema_version}")
    return result, body


def _optional_text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    return None if value is None else str(value)


def decide(result: FrameResult, body: dict[str, Any], *, now_ns: int, deadline_ms: float,
           late_policy: LatePolicy) -> Verdict:
    """The verdict of ``result`` if it is published at ``now_ns``."""
    scored: VerdictName = REJECT if result.anomalous else PASS
    latency_ms = (now_ns - result.capture_ns) / 1e6
    late = latency_ms > deadline_ms
    verdict: VerdictName = scored
    if late and late_policy != "as_scored":
        verdict = REJECT if late_policy == "reject" else PASS
    return Verdict(
        camera_id=result.camera_id, line_id=result.line_id, product=_optional_text(body, "product"),
        sequence=result.sequence, part_id=_optional_text(body, "part_id"), verdict=verdict,
        scored_verdict=scored, late=late, deadline_ms=deadline_ms, score=result.normalised_score,
        raw_score=result.image_score, threshold=result.threshold, model_version=result.model_version,
        capture_ns=result.capture_ns, published_ns=now_ns, latency_ms=round(latency_ms, 3),
        detector_latency_ms=result.latency.end_to_end_ms)


class OrderGuard:
    """Keeps each camera's verdicts in sequence order: a sequence at or below the last one published
    (a redelivery after a rebalance or retry) is not published again."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def is_new(self, camera_id: str, sequence: int) -> bool:
        """Whether this frame comes after everything published for its camera."""
        return sequence > self.last.get(camera_id, -1)

    def mark(self, camera_id: str, sequence: int) -> None:
        """Record a published frame."""
        self.last[camera_id] = max(sequence, self.last.get(camera_id, -1))

    def forget(self) -> None:
        """Drop everything (partitions moved: their new owner decides)."""
        self.last.clear()
